"""The synthetic set rendered from its manifest: equal to the stored images, bit-identical on
reruns, fresh instances per epoch, exact resume, and no per-image files in DVC at FractalDB-1k size."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.repo import REPO, pipeline_env, update_params
from synthvit.config import ModelConfig, RuntimeConfig, SyntheticConfig, TrainConfig
from synthvit.data.fractals import RenderedFractals, load_heldout, load_synthetic, shuffle_labels, synthetic_samples
from synthvit.data.images import TensorImages
from synthvit.models import create_model
from synthvit.runtime import seed_everything
from synthvit.synthetic.generate import generate_dataset
from synthvit.synthetic.render import point_fill_rates
from synthvit.synthetic.source import ManifestImages
from synthvit.training.engine import train

SMALL = {
    "kind": "fractaldb",
    "num_classes": 3,
    "instances_per_class": 4,
    "image_size": 32,
    "num_points": 2000,
    "max_attempts": 300,
}
TINY = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same params and seed written three ways: {store: folder}."""
    root = tmp_path_factory.mktemp("synthetic")
    for store in ("manifest", "shards", "images"):
        generate_dataset(SyntheticConfig(store=store, **SMALL), 5, root / store, progress=False)
    return {store: root / store for store in ("manifest", "shards", "images")}


def rendered_tensor(folder, img_size=16, epoch=1):
    data = load_synthetic(folder, img_size, preload_bytes=0)  # a set too large to keep in memory
    assert isinstance(data, RenderedFractals)  # nothing decoded up front
    return data.source.for_epoch(epoch).tensor(batch=5)  # odd batches: an image does not depend on its batch


def test_only_the_manifest_and_preview_are_written_and_they_name_the_same_categories(stores):
    assert sorted(p.name for p in stores["manifest"].iterdir()) == ["manifest.json", "preview.png"]
    assert sorted(p.name for p in (stores["shards"] / "shards").iterdir()) == ["00000-00002.npy"]
    manifests = {store: json.loads((folder / "manifest.json").read_text()) for store, folder in stores.items()}
    assert len({json.dumps(m["classes"][0]["maps"]) for m in manifests.values()}) == 1
    assert "instances" not in manifests["manifest"]["classes"][0]  # derived from draws.instance_variation, not listed
    assert (stores["manifest"] / "preview.png").read_bytes() == (stores["images"] / "preview.png").read_bytes()


def test_rendered_batches_equal_the_stored_images(stores):
    files = load_synthetic(stores["images"], 16)  # PNGs decoded
    shards = load_synthetic(stores["shards"], 16)
    rendered = load_synthetic(stores["manifest"], 16, preload_bytes=0)
    preloaded = load_synthetic(stores["manifest"], 16, num_workers=2)  # small: rendered once, up front
    assert torch.equal(shards.images, files.images) and torch.equal(shards.labels, files.labels)
    assert isinstance(preloaded, TensorImages) and torch.equal(preloaded.images, files.images)
    assert torch.equal(rendered_tensor(stores["manifest"]), files.images)
    assert torch.equal(rendered.labels, files.labels) and rendered.classes == files.classes
    # Through the training loop's path (on a CPU: rendered in this process), shuffled batches.
    order = torch.randperm(len(rendered), generator=torch.Generator().manual_seed(3))
    batches = list(rendered.batches(order, [0, 5], 5, torch.device("cpu"), num_workers=2))
    for images, idx in batches:
        assert torch.equal(images, files.images[idx])
    # Batches rendered by DataLoader worker processes.
    source = rendered.source.for_epoch(1)
    loader = DataLoader([[7, 1, 3], [0, 11]], batch_size=None, collate_fn=source.render, num_workers=2)
    for images, idx in zip(loader, [[7, 1, 3], [0, 11]]):
        assert torch.equal(images, files.images[idx]) and torch.equal(source.labels[idx], files.labels[idx])


def test_two_runs_are_bit_identical(stores, tmp_path):
    again = tmp_path / "again"
    generate_dataset(SyntheticConfig(store="manifest", **SMALL), 5, again, progress=False)
    for name in ("manifest.json", "preview.png"):
        assert (again / name).read_bytes() == (stores["manifest"] / name).read_bytes()
    assert torch.equal(rendered_tensor(again), rendered_tensor(stores["manifest"]))


@pytest.mark.parametrize("kind", ["fractaldb", "ofdb"])
def test_fresh_instances_differ_between_epochs_but_not_between_reruns(tmp_path, kind):
    cfg = SyntheticConfig(**{**SMALL, "kind": kind}, store="manifest", fresh_instances=True)
    generate_dataset(cfg, 5, tmp_path / "fresh", progress=False)
    generate_dataset(cfg.model_copy(update={"fresh_instances": False}), 5, tmp_path / "fixed", progress=False)
    first, second = rendered_tensor(tmp_path / "fresh", epoch=1), rendered_tensor(tmp_path / "fresh", epoch=2)
    assert torch.equal(first, rendered_tensor(tmp_path / "fixed", epoch=1))  # epoch 1 is the stored set
    assert torch.equal(rendered_tensor(tmp_path / "fixed", epoch=2), first)  # without fresh draws every epoch is
    differs = (first != second).flatten(1).any(1)
    assert differs.all(), f"{int((~differs).sum())} images unchanged in epoch 2"
    assert torch.equal(second, rendered_tensor(tmp_path / "fresh", epoch=2))  # a rerun draws the same
    assert load_synthetic(tmp_path / "fresh", 16).digest != load_synthetic(tmp_path / "fixed", 16).digest


@pytest.mark.parametrize("kind", ["fractaldb", "onepfrac"])
def test_the_heldout_split_is_never_drawn_by_training(tmp_path, kind):
    """Pre-training's held-out instances: their own images, labelled by category, none of them a training one."""
    cfg = SyntheticConfig(**{**SMALL, "kind": kind}, store="manifest", fresh_instances=True)
    generate_dataset(cfg, 5, tmp_path / kind, progress=False)
    heldout = load_heldout(tmp_path / kind, 16, per_class=3)
    assert heldout.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and heldout.images.shape == (9, 3, 16, 16)
    assert torch.equal(heldout.images, load_heldout(tmp_path / kind, 16, per_class=3).images)  # seeded
    images = ManifestImages(json.loads((tmp_path / kind / "manifest.json").read_text()))
    held = images.heldout_systems(3)
    # Training's draws: instance numbers (epoch - 1) * 4 + i; FractalDB's repeat its 100 variations.
    trained = images.systems(range(len(images)), epoch=1, fresh=True) + [
        system for epoch in range(2, 26) for system in images.systems(range(len(images)), epoch, fresh=True)
    ]
    seeds = {seed for _, _, seed, _ in trained}
    assert not seeds & {seed for _, _, seed, _ in held}  # new walks and patch masks
    if kind == "fractaldb":  # and shapes off the weight grid: no held-out formula is a training one
        trained_maps = [maps for maps, _, _, _ in trained]
        assert not any(any(np.array_equal(maps, other) for other in trained_maps) for maps, _, _, _ in held)
    rendered = [rendered_tensor(tmp_path / kind, epoch=e) for e in range(1, 4)]
    for image in heldout.images:
        assert not any(torch.equal(image, seen) for epoch in rendered for seen in epoch)


class Stop(Exception):
    pass


def test_training_on_fresh_rendered_batches_resumes_exactly(stores, tmp_path):
    folder = tmp_path / "fresh"
    generate_dataset(SyntheticConfig(store="manifest", fresh_instances=True, **SMALL), 5, folder, progress=False)
    data = load_synthetic(folder, 16)
    cfg = TrainConfig(
        epochs=3, batch_size=4, lr=1e-3, warmup_epochs=0, checkpoint_every=1, mixup_alpha=0, cutmix_alpha=0
    )
    runtime = RuntimeConfig(device="cpu", deterministic=True)
    seed_everything(0)
    straight = create_model(TINY, 3)
    expected = train(straight, data, cfg, runtime, seed=0, num_workers=0)

    def stop_after_one(metrics):
        if metrics["epoch"] == 1:
            raise Stop

    seed_everything(0)
    with pytest.raises(Stop):
        train(
            create_model(TINY, 3),
            data,
            cfg,
            runtime,
            seed=0,
            resume_file=tmp_path / "r.pt",
            on_epoch=stop_after_one,
            num_workers=0,
        )
    seed_everything(0)
    resumed = create_model(TINY, 3)
    history = train(resumed, data, cfg, runtime, seed=0, resume_file=tmp_path / "r.pt", num_workers=0)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in expected]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_synthetic_samples_are_the_category_images(stores):
    images, names = synthetic_samples(stores["manifest"], 2)
    assert names == ["00000", "00001"] and images.shape == (2, 32, 32, 3)
    stored = np.load(stores["shards"] / "shards" / "00000-00002.npy")
    np.testing.assert_array_equal(images[:, :, :, 0], stored[[0, 4]])


def test_point_fill_rates_without_a_pad():
    maps = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])
    systems = [(maps, np.full(3, 1 / 3))]
    rates, converged = point_fill_rates(systems, [0], 64, 20_000, pad=0)  # raised IndexError at the far edge
    padded, _ = point_fill_rates(systems, [0], 64, 20_000, pad=1)
    assert converged[0] and 0.2 < rates[0] < 0.5  # the Sierpinski triangle covers a quarter..half of its box
    assert rates[0] > padded[0]  # a wider drawing area lights more pixels


def test_fractaldb_1k_stage_outputs_hold_no_per_image_files(repo_copy, small_imagefolder):
    """generate_synthetic through DVC at 1,000 categories x 1,000 instances: the output and the
    cache hold the manifest, the preview and the timing file, not a million images. (fill_rate 0 keeps the
    search short; what is stored does not depend on it.)"""
    update_params(
        repo_copy,
        {
            "synthetic": {"num_classes": 1000, "instances_per_class": 1000, "fill_rate": 0.0},
            "data": {"name": "imagefolder", "root": str(small_imagefolder)},
        },
    )
    env = pipeline_env(repo_copy)
    started = time.perf_counter()
    result = subprocess.run(
        ["dvc", "repro", "generate_synthetic"], cwd=repo_copy, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seconds = time.perf_counter() - started
    outputs = sorted(str(p.relative_to(repo_copy)) for p in (repo_copy / "data/synthetic").rglob("*") if p.is_file())
    assert outputs == ["data/synthetic/manifest.json", "data/synthetic/preview.png"]
    cached = [p for p in (repo_copy / ".dvc/cache/files").rglob("*") if p.is_file()]
    # The two files, the directory listing and the stage's timing file (the run cache aside).
    assert len(cached) == 4, cached
    manifest = json.loads((repo_copy / "data/synthetic/manifest.json").read_text())
    assert len(manifest["classes"]) * manifest["images_per_class"] == 1_000_000
    assert (repo_copy / "data/synthetic/manifest.json").stat().st_size < 2_000_000
    status = subprocess.run(
        ["dvc", "status", "generate_synthetic"], cwd=repo_copy, env=env, capture_output=True, text=True, timeout=120
    )
    assert "up to date" in status.stdout, status.stdout + status.stderr
    print(f"generate_synthetic at 1000 x 1000 through dvc repro: {seconds:.1f} s")


def test_bench_pretrain_prints_both_rates_and_the_cost(stores, capsys):
    from synthvit.commands.bench import pretrain as bench_source
    from synthvit.commands.cli import build_parser

    args = build_parser().parse_args(
        [
            "bench",
            "pretrain",
            "--synthetic",
            str(stores["manifest"]),
            "--params",
            str(REPO / "params.yaml"),
            "--images",
            "8",
            "--repeats",
            "1",
            "-S",
            "model.img_size=16",
            "-S",
            "model.depth=1",
            "-S",
            "model.embed_dim=32",
            "-S",
            "model.num_heads=2",
            "-S",
            "pretrain.batch_size=4",
            "-S",
            "data.num_workers=0",
            "-S",
            "runtime.device=cpu",
        ]
    )
    assert bench_source.run(args) == 0
    out = capsys.readouterr().out
    assert "on 8 of the 12 images" in out and "rendered on the fly (in the training process)" in out
    assert "drawing the GPU renderer's random numbers alone, one process:" in out
    assert "preloaded uint8 tensor" in out and "cost of rendering on the fly" in out


def test_shuffled_labels_keep_the_images_and_each_category_size_but_not_the_categories(stores):
    data = load_synthetic(stores["manifest"], 16)
    shuffled = shuffle_labels(data, seed=3)
    assert torch.equal(shuffled.images, data.images)
    assert torch.equal(shuffled.labels.bincount(), data.labels.bincount())
    assert (shuffled.labels != data.labels).float().mean() > 0.5  # most images moved to another category
    assert torch.equal(shuffle_labels(data, seed=3).labels, shuffled.labels)  # fixed per image, by the seed
    rendered = load_synthetic(stores["manifest"], 16, preload_bytes=0)
    assert torch.equal(shuffle_labels(rendered, seed=3).labels, shuffled.labels)  # either storage, same draw
