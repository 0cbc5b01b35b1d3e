"""The torch renderer (what pre-training on CUDA renders with) against the numpy reference,
run on the CPU: the same bytes, the same converged flags, the same training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.fractals import FERN, FERN_PROBABILITIES, SEEDS, SYSTEMS, official_categories, search_draws
from synthvit.config import SyntheticConfig
from synthvit.data import torch_render
from synthvit.data.fractals import load_synthetic
from synthvit.data.images import fit_image
from synthvit.data.resize import resize
from synthvit.synthetic.generate import generate_dataset
from synthvit.synthetic.render import RenderSettings, render_batch

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "settings",
    [
        RenderSettings(32, 2000),  # random masks, 64 walkers
        RenderSettings(64, 10_000, "full"),  # the demo's preset
        RenderSettings(48, 20_000, "random", pad=6, value=127),  # FractalDB's pad and gray, 625 walkers
        RenderSettings(40, 50_000, "full", pad=2),  # several starting points per pre-run walker
    ],
)
def test_torch_renderer_gives_numpys_bytes_and_converged_flags(settings):
    s = settings
    expected, converged = render_batch(
        SYSTEMS, s.image_size, s.num_points, SEEDS, s.patch, s.pad, s.value, with_convergence=True
    )
    images, flags = torch_render.render(torch_render.draw(SYSTEMS, SEEDS, s), s, CPU)
    assert converged.tolist() == [True, True, True, False, False, False, True]  # the cases above are what they say
    assert flags.tolist() == converged.tolist()
    assert images.dtype == torch.uint8 and np.array_equal(images.numpy(), expected)
    assert (expected > 0).any(axis=(1, 2)).sum() == len(SYSTEMS) - 1  # only the overflowing walk draws nothing
    other, _ = torch_render.render(torch_render.draw(SYSTEMS, [seed + 1 for seed in SEEDS], s), s, CPU)
    assert not np.array_equal(other.numpy(), expected)  # the seeds matter: the comparison can fail


def test_torch_renderer_matches_on_search_draws_in_uneven_batches(monkeypatch):
    systems, seeds, settings = search_draws(30), list(range(100, 130)), RenderSettings(32, 3000, "random", pad=1)
    expected, converged = render_batch(systems, 32, 3000, seeds, "random", 1, with_convergence=True)
    monkeypatch.setattr(torch_render, "device_batch_size", lambda points, device: 7)
    images, flags = torch_render.render(torch_render.draw(systems, seeds, settings), settings, CPU)
    assert 0 < converged.sum() < len(systems)
    assert np.array_equal(flags, converged) and np.array_equal(images.numpy(), expected)


def test_torch_renderer_matches_on_the_official_fractaldb_categories():
    systems = [(rows[:, :6], rows[:, 6]) for rows in official_categories().values()]  # 100, 2-7 maps
    seeds, settings = list(range(len(systems))), RenderSettings(64, 10_000, "full")  # the demo's preset
    expected, converged = settings.render(systems, seeds)
    images, flags = torch_render.render(torch_render.draw(systems, seeds, settings), settings, CPU)
    assert converged.all() and flags.all()
    assert np.array_equal(images.numpy(), expected)


def test_image_flips_are_draws_flips():
    settings = RenderSettings(24, 2000, "full")
    systems, hows = [(FERN, FERN_PROBABILITIES)] * 4, ["none", "vertical", "horizontal", "both"]
    images, _ = torch_render.render(torch_render.draw(systems, [3] * 4, settings, hows), settings, CPU)
    plain = images[0]
    for image, expected in zip(images, [plain, plain.flip(0), plain.flip(1), plain.flip(0).flip(1)]):
        assert torch.equal(image, expected)
    assert not torch.equal(images[1], plain)


@pytest.mark.parametrize("size,out", [(64, 32), (362, 32), (362, 224), (64, 48), (32, 64), (100, 37)])
def test_resize_is_pillows_bicubic(size, out):
    rng = np.random.default_rng(size + out)
    sparse = (rng.random((6, size, size)) < 0.2) * rng.integers(1, 256, (6, 1, 1))
    images = np.concatenate([sparse, rng.integers(0, 256, (2, size, size))]).astype(np.uint8)
    expected = np.stack([fit_image(Image.fromarray(image), out, mode="L") for image in images])
    assert np.array_equal(resize(torch.from_numpy(images), out).numpy(), expected)
    assert not np.array_equal(resize(torch.from_numpy(images[:, ::-1].copy()), out).numpy(), expected)


SMALL = {
    "num_classes": 3,
    "instances_per_class": 4,
    "image_size": 32,
    "num_points": 2000,
    "max_attempts": 300,
    "store": "manifest",
}


@pytest.mark.parametrize("kind,fresh", [("fractaldb", False), ("fractaldb", True), ("ofdb", True)])
def test_device_batches_equal_the_numpy_batches(tmp_path, monkeypatch, kind, fresh):
    generate_dataset(SyntheticConfig(kind=kind, fresh_instances=fresh, **SMALL), 5, tmp_path, progress=False)
    source = load_synthetic(tmp_path, 16, preload_bytes=0).source
    order = np.random.default_rng(1).permutation(len(source)).tolist()
    third, half = len(order) // 3, len(order) // 2 + 1
    batches = [order[:third], order[third:half], order[half:]]  # shuffled, uneven
    for epoch in (1, 2):
        numpy_side = source.for_epoch(epoch).tensor(batch=5)
        if epoch == 2:  # render calls that group some batches and not others
            monkeypatch.setattr(torch_render, "device_batch_size", lambda points, device: 7)
        rendered = list(source.for_epoch(epoch).device_batches(batches, CPU, num_workers=2 if epoch == 1 else 0))
        for images, positions in zip(rendered, batches):
            assert images.shape == (len(positions), 3, 16, 16) and torch.equal(images, numpy_side[positions])
    epoch_one, epoch_two = (torch.cat(list(source.for_epoch(e).device_batches(batches, CPU, 0))) for e in (1, 2))
    assert torch.equal(epoch_one, epoch_two) != fresh  # fresh instances: other images in epoch 2
