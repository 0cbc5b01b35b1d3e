import torch

from synthvit.config import FinetuneConfig, PretrainConfig
from synthvit.data.augment import Augmentation, random_colors, random_crop_params, random_resized_crop_flip


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


def test_auto_augment_varies_within_a_batch_and_keeps_uint8():
    from synthvit.data.augment import auto_augment, auto_augment_policy

    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(64, 3, 16, 16).contiguous()
    for name in ("randaugment", "trivialaugment"):
        out = auto_augment(images, auto_augment_policy(name, magnitude=9), group=8)
        assert out.shape == images.shape and out.dtype == torch.uint8
        groups = out.view(8, 8, 3, 16, 16)
        # Images in a group share a draw; the 8 groups got several different draws.
        assert all(torch.equal(g[0], g[i]) for g in groups for i in range(8))
        assert len({tuple(g[0].flatten().tolist()) for g in groups}) >= 4
    assert auto_augment(images, auto_augment_policy("none")) is images


def test_randaugment_magnitude_sets_the_strength():
    from synthvit.data.augment import auto_augment, auto_augment_policy

    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    strong = auto_augment(images, auto_augment_policy("randaugment", magnitude=30))
    weak = auto_augment(images, auto_augment_policy("randaugment", magnitude=0))
    assert (strong.float() - images.float()).abs().mean() > (weak.float() - images.float()).abs().mean()


def test_mixup_cutmix_targets_are_distributions_over_the_two_mixed_labels():
    import numpy as np

    from synthvit.config import TrainConfig
    from synthvit.data.augment import build_mixup

    np.random.seed(0)  # timm's Mixup draws from numpy
    cfg = TrainConfig(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    mixup = build_mixup(cfg, num_classes=10)
    labels = torch.arange(16) % 10
    saw_partial = False
    for _ in range(20):
        images = torch.randn(16, 3, 8, 8)
        mixed, targets = mixup(images.clone(), labels)
        assert targets.shape == (16, 10)
        assert torch.allclose(targets.sum(1), torch.ones(16), atol=1e-6)
        # Mass sits on the image's own label and its partner's (the batch flipped), plus smoothing.
        partner = labels.flip(0)
        top = targets.gather(1, labels.view(-1, 1)).squeeze(1) + targets.gather(1, partner.view(-1, 1)).squeeze(1)
        assert (top >= 0.9 - 1e-6).all()
        saw_partial |= bool((targets.max(1).values < 0.85).any())
    assert saw_partial  # some batches really mix
    assert build_mixup(TrainConfig(mixup_alpha=0, cutmix_alpha=0), 10) is None


def test_random_colors_paint_each_gray_image_two_colours_of_its_own():
    gray = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    gray[:, :, 2:5, 2:5] = 255  # a lit square on a dark background
    colored = random_colors(gray, torch.Generator().manual_seed(0))
    assert colored.dtype == torch.uint8 and colored.shape == gray.shape
    foreground, background = colored[:, :, 3, 3], colored[:, :, 0, 0]
    assert torch.equal(colored[:, :, 2:5, 2:5], foreground[:, :, None, None].expand(-1, -1, 3, 3))
    assert not torch.equal(foreground, background)
    assert len({tuple(c.tolist()) for c in foreground}) == 6  # each image its own colour
    assert torch.equal(colored, random_colors(gray, torch.Generator().manual_seed(0)))  # drawn from the generator
    half = gray // 2  # gray levels blend the two colours
    mixed = random_colors(half, torch.Generator().manual_seed(0))[:, :, 3, 3].float()
    assert torch.allclose(mixed, (foreground.float() * 127 / 255 + background.float() * 128 / 255), atol=1)


def test_pretraining_augmentation_recolours_only_when_asked():
    plain = {"crop_scale": [1.0, 1.0], "hflip": 0, "mixup_alpha": 0, "cutmix_alpha": 0, "random_erasing": 0}
    gray = torch.full((4, 3, 8, 8), 200, dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.long)
    for cfg, recoloured in (
        (PretrainConfig(random_colors=True, **plain), True),
        (PretrainConfig(**plain), False),
        (FinetuneConfig(auto_augment="none", **plain), False),
    ):
        x, _ = Augmentation(cfg, 2, torch.device("cpu"))(gray, labels, torch.Generator().manual_seed(0))
        assert (x[:, 0] != x[:, 1]).any().item() is recoloured
