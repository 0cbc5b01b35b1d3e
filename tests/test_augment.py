import torch

from synthvit.augment import random_crop_params, random_resized_crop_flip


def test_no_augmentation_is_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(random_resized_crop_flip(x, scale=(1.0, 1.0), padding=0, hflip=0.0), x)


def test_full_crop_with_certain_flip_mirrors_exactly():
    x = torch.randn(3, 3, 16, 16)
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), padding=0, hflip=1.0)
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_padding_translates_by_whole_pixels_within_range():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 1, 16).expand(64, 3, 16, 16).contiguous() + 1  # column index + 1
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), padding=4, hflip=0.0, generator=g)
    shifts = out[:, 0, 8, 8] - x[:, 0, 8, 8]  # the value seen at the centre pixel
    assert torch.allclose(shifts, shifts.round(), atol=1e-4)  # whole pixels: no blur
    assert shifts.abs().max() <= 4 + 1e-4
    assert len(shifts.round().unique()) >= 7  # translations really happen, over the range


def test_crop_parameters_cover_the_requested_ranges():
    g = torch.Generator().manual_seed(0)
    width, height, cx, cy = random_crop_params(20000, (0.25, 1.0), (3 / 4, 4 / 3), 0.0, g, "cpu")
    area = width * height
    assert area.min() >= 0.25 - 1e-4 and area.max() <= 1.0 + 1e-6
    assert area.min() < 0.27 and area.max() > 0.95  # the whole range is used
    assert (width <= 1).all() and (height <= 1).all()
    # Crops stay inside the image: centre offset at most the free room.
    assert ((cx.abs() <= 1 - width + 1e-6) & (cy.abs() <= 1 - height + 1e-6)).all()


def test_flip_probability():
    g = torch.Generator().manual_seed(1)
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(4000, 1, 1, 8).contiguous()
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, generator=g)
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, 7]).float().mean()
    assert 0.45 < flipped < 0.55
