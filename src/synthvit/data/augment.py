"""Batch augmentation on the training device: no per-sample Python in the hot loop.

`Augmentation` is a recipe's whole chain, applied to each uint8 batch in this order:
random colours (pre-training on gray fractals only), auto-augment (torchvision's RandAugment
or TrivialAugment, one draw per group of 8 images), conversion to normalised float, a random
resized crop with zero padding and a horizontal flip (one affine warp per image,
`affine_grid` + `grid_sample`, drawn for the whole batch at once), Mixup/CutMix and random
erasing (timm's, on whole batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

from synthvit.config import PretrainConfig, TrainConfig
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD


def random_colors(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gray uint8 N x 3 x H x W images recoloured: each image gets a random foreground colour where it
    is lit and a random background colour where it is dark, its gray level blending the two."""
    n, device = len(images), images.device
    foreground, background = (
        torch.randint(0, 256, (n, 3, 1, 1), generator=generator, device=device).float() for _ in range(2)
    )
    lit = images[:, :1].float() / 255.0
    return (background + (foreground - background) * lit).round().to(torch.uint8)


def to_float(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x 3 x H x W to normalised float."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def random_crop_params(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    padding_frac: float,
    generator: torch.Generator,
    device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: crop width and height (fractions of the image) and crop centre (in [-1, 1] coordinates).

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), as in RandomResizedCrop; the
    centre is uniform over the positions that keep the crop inside the image grown by
    `padding_frac` on each side, which is pad-and-crop when scale is (1, 1). Padding is
    filled with zeros of the normalised image, i.e. the dataset mean colour.
    """
    uniform = lambda: torch.rand(n, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * uniform()
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform()
    aspect = torch.exp(log_r)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # Free room for the centre, in normalised coordinates where the image spans [-1, 1].
    room_x = (1.0 - width) + 2 * padding_frac
    room_y = (1.0 - height) + 2 * padding_frac
    centre_x = (uniform() * 2 - 1) * room_x
    centre_y = (uniform() * 2 - 1) * room_y
    return width, height, centre_x, centre_y


def random_resized_crop_flip(
    images: torch.Tensor,
    scale=(0.25, 1.0),
    ratio=(3 / 4, 4 / 3),
    padding: int = 0,
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop, resize back to the input size, and flip a float batch, all in one warp."""
    n, _, h, w = images.shape
    device = images.device
    if tuple(scale) == (1.0, 1.0) and padding == 0 and hflip == 0:
        return images
    width, height, cx, cy = random_crop_params(n, scale, ratio, padding / w, generator, device)
    # Centres rounded to whole pixels (2/size each, as the image spans [-1, 1]): a pure shift then stays sharp.
    cx, cy = torch.round(cx * w / 2) * 2 / w, torch.round(cy * h / 2) * 2 / h
    flip = torch.rand(n, generator=generator, device=device) < hflip
    sign = 1.0 - 2.0 * flip.float()
    theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, images.shape[1], h, w), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUTO_AUGMENT_GROUP = 8  # images that share one policy draw: per-group, not per-sample, Python


def auto_augment_policy(name: str, magnitude: int = 9):
    """torchvision's RandAugment (2 ops at `magnitude` of 31 bins) or TrivialAugmentWide, or None.

    Geometric ops fill the uncovered corners with mid-gray, like the crop's padding.
    """
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=magnitude, fill=128)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(fill=128)
    return None


def auto_augment(images: torch.Tensor, policy, group: int = AUTO_AUGMENT_GROUP) -> torch.Tensor:
    """Apply a torchvision auto-augment policy to a uint8 N x 3 x H x W batch, one random draw
    (ops and magnitudes) per group of `group` images, on the batch's device.

    torchvision applies one draw to a whole tensor; groups keep the draws varied across the
    batch while the Python work stays per group (batch / 8 calls), not per image. The draws
    come from torch's global generator, which resumable training saves and restores.
    """
    if policy is None:
        return images
    return torch.cat([policy(chunk) for chunk in images.split(group)])


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (one of the two per batch when both are on), with label smoothing folded
    into its soft targets; None when both are off."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )


class Augmentation:
    """A recipe's augmentation chain (the module docstring gives the order), built once per run."""

    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device):
        self.cfg = cfg
        self.colors = isinstance(cfg, PretrainConfig) and cfg.random_colors  # recolour gray fractals
        self.policy = auto_augment_policy(cfg.auto_augment, cfg.auto_augment_magnitude)
        # timm's Mixup/CutMix turn labels into distributions over classes: a soft-target loss is needed.
        self.mixup = build_mixup(cfg, num_classes)
        self.erasing = (
            RandomErasing(cfg.random_erasing, mode="pixel", device=device) if cfg.random_erasing > 0 else None
        )
        self.mean = torch.tensor(DEFAULT_MEAN, device=device)
        self.std = torch.tensor(DEFAULT_STD, device=device)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        """(normalised float images, targets) for a uint8 batch and its labels; crops and flips draw from
        `generator`."""
        cfg = self.cfg
        if self.colors:
            batch = random_colors(batch, generator)
        x = to_float(auto_augment(batch, self.policy), self.mean, self.std)
        x = random_resized_crop_flip(x, cfg.crop_scale, padding=cfg.crop_padding, hflip=cfg.hflip, generator=generator)
        target = labels
        if self.mixup is not None:
            x, target = self.mixup(x, labels)
        if self.erasing is not None:
            x = self.erasing(x)
        return x, target
