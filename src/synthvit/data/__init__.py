"""Image sets as training and scoring read them: real datasets, the fractal set, augmentation."""
