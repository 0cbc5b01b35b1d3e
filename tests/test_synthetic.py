"""Synthetic fractal datasets: determinism, fill rates, 1p-frac bounds, renderer vs reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthvit.config import SyntheticConfig, parse_params
from synthvit.errors import ConfigError, UserError
from synthvit.synthetic import bench, generate_dataset, ifs
from synthvit.synthetic.generate import write_dataset
from synthvit.synthetic.png import encode_gray_png
from synthvit.synthetic.reference import render_reference
from synthvit.synthetic.render import render_batch, render_ifs

SMALL = dict(num_classes=4, instances_per_class=3, image_size=32, num_points=3000, max_attempts=200)
SIERPINSKI = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])
FERN = np.array([
    [0.0, 0.0, 0.0, 0.16, 0.0, 0.0],
    [0.85, 0.04, -0.04, 0.85, 0.0, 1.6],
    [0.2, -0.26, 0.23, 0.22, 0.0, 1.6],
    [-0.15, 0.28, 0.26, 0.24, 0.0, 0.44],
])
FERN_PROBABILITIES = np.array([0.01, 0.85, 0.07, 0.07])


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def lit_fraction(path: Path) -> float:
    return float(np.count_nonzero(np.asarray(Image.open(path)))) / Image.open(path).size[0] ** 2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("kind", ["fractaldb", "ofdb", "onepfrac"])
def test_same_params_and_seed_give_identical_bytes_on_any_thread_count(tmp_path, kind):
    cfg = SyntheticConfig(kind=kind, **SMALL)
    write_dataset(cfg, 7, tmp_path / "one", progress=False, workers=1)
    write_dataset(cfg, 7, tmp_path / "two", progress=False, workers=2)
    one, two = all_bytes(tmp_path / "one"), all_bytes(tmp_path / "two")
    per_class = SMALL["instances_per_class"] if kind == "fractaldb" else 1
    assert len(one) == SMALL["num_classes"] * per_class + 2  # images + manifest + preview
    assert one == two


def test_another_seed_gives_other_categories(tmp_path):
    cfg = SyntheticConfig(kind="ofdb", **SMALL)
    first = generate_dataset(cfg, 0, tmp_path / "a", progress=False)
    second = generate_dataset(cfg, 1, tmp_path / "b", progress=False)
    for a, b in zip(first["classes"], second["classes"]):
        assert a["maps"] != b["maps"]


def test_layout_and_manifest(tmp_path):
    cfg = SyntheticConfig(kind="fractaldb", **SMALL)
    manifest = generate_dataset(cfg, 3, tmp_path / "out", progress=False)
    root = tmp_path / "out"
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["kind"] == "fractaldb" and manifest["seed"] == 3
    assert manifest["params"]["fill_rate"] == cfg.fill_rate
    assert [c["name"] for c in manifest["classes"]] == ["00000", "00001", "00002", "00003"]
    for entry in manifest["classes"]:
        files = sorted(p.name for p in (root / "images" / entry["name"]).iterdir())
        assert files == ["0000.png", "0001.png", "0002.png"]
        assert len(entry["instances"]) == 3
        assert entry["instances"][0] == {"file": "0000.png", "coefficient": None, "weight": 1.0, "flip": "none",
                                         "render_seed": entry["render_seed"], "fill_rate": entry["fill_rate"]}
        for instance in entry["instances"][1:]:
            assert instance["flip"] in ("none", "vertical", "horizontal", "both")
            assert instance["weight"] in (0.8, 0.9, 1.0, 1.1, 1.2)
        image = Image.open(root / "images" / entry["name"] / "0001.png")
        assert image.mode == "L" and image.size == (32, 32)
        # The manifest is enough to re-render an image exactly.
        again = render_ifs(np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"])
        np.testing.assert_array_equal(again, np.asarray(Image.open(root / "images" / entry["name"] / "0000.png")))
    assert Image.open(root / "preview.png").mode == "L"
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_full_patches_draw_solid_shapes_the_manifest_re_renders(tmp_path):
    cfg = SyntheticConfig(kind="fractaldb", patch="full", fill_rate=0.1, **SMALL)
    manifest = generate_dataset(cfg, 3, tmp_path / "out", progress=False)
    assert manifest["params"]["patch"] == "full" and "solid" in manifest["renderer"]["patch"]
    for entry in manifest["classes"]:
        image = np.asarray(Image.open(tmp_path / "out" / "images" / entry["name"] / "0000.png"))
        again = render_ifs(np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"], patch="full")
        np.testing.assert_array_equal(again, image)
        speckled = render_ifs(np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"])
        # Solid patches light every covered pixel; random masks light about half of them.
        assert np.count_nonzero(image) > 1.5 * np.count_nonzero(speckled)
        assert np.count_nonzero(image) / image.size >= 0.1


@pytest.mark.parametrize("kind", ["fractaldb", "ofdb", "onepfrac"])
def test_every_accepted_category_reaches_the_fill_rate(tmp_path, kind):
    cfg = SyntheticConfig(kind=kind, num_classes=6, instances_per_class=2, image_size=48, num_points=4000, fill_rate=0.25)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    for entry in manifest["classes"]:
        measured = lit_fraction(tmp_path / "out" / "images" / entry["name"] / "0000.png")  # the searched image
        assert measured >= 0.25
        assert measured == pytest.approx(entry["fill_rate"], abs=1e-12)
    assert sum(c["attempts"] for c in manifest["classes"]) > 6  # the search did reject draws


def test_map_probabilities_sum_to_one_and_follow_det(tmp_path):
    cfg = SyntheticConfig(kind="fractaldb", **SMALL)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    for entry in manifest["classes"]:
        maps, probabilities = np.array(entry["maps"]), np.array(entry["probabilities"])
        assert cfg.min_maps <= len(maps) <= cfg.max_maps
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
        dets = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
        np.testing.assert_allclose(probabilities, dets / dets.sum())
    assert ifs.map_probabilities(np.zeros((3, 6))).tolist() == [1 / 3] * 3  # all singular: uniform


def test_onepfrac_perturbations_stay_within_delta(tmp_path):
    cfg = SyntheticConfig(kind="onepfrac", **SMALL, delta=0.1)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    base = np.array(manifest["base"]["maps"])
    assert base.shape == (cfg.onepfrac_maps, 6)
    assert manifest["base"]["sigma_factor"] == pytest.approx(cfg.sigma)
    for entry in manifest["classes"]:
        multipliers = np.array(entry["multipliers"])
        assert np.all((multipliers >= 0.9) & (multipliers <= 1.1))
        np.testing.assert_allclose(np.array(entry["maps"]), base * multipliers)
        assert sum(entry["probabilities"]) == pytest.approx(1.0)
    assert len({json.dumps(c["maps"]) for c in manifest["classes"]}) == cfg.num_classes


def test_sigma_factor_sampler_meets_its_constraints():
    rng = np.random.default_rng(0)
    for num_maps, sigma in [(2, 3.5), (3, 4.0), (5, 1.2), (7, 20.0)]:
        values = ifs.sigma_factor_singular_values(rng, num_maps, sigma)
        assert np.all(values >= 0) and np.all(values <= 1) and np.all(values[:, 0] >= values[:, 1])
        assert (values[:, 0] + 2 * values[:, 1]).sum() == pytest.approx(sigma)
        assert ifs.sigma_factor(ifs.sigma_factor_ifs(rng, num_maps, sigma)) == pytest.approx(sigma)


@pytest.mark.parametrize("maps,probabilities", [(SIERPINSKI, [1 / 3] * 3), (FERN, FERN_PROBABILITIES)])
def test_fast_renderer_covers_what_the_per_point_reference_covers(maps, probabilities):
    fast = render_ifs(maps, probabilities, 64, 20000, seed=1, patch="full")
    reference = render_reference(maps, probabilities, 64, 20000, seed=1, patch="full")
    assert iou(fast, reference) >= 0.9
    # Random 3x3 masks: about half of the covered pixels stay lit, in both renderers.
    fast_fill = np.count_nonzero(render_ifs(maps, probabilities, 64, 20000, seed=2)) / 64**2
    reference_fill = np.count_nonzero(render_reference(maps, probabilities, 64, 20000, seed=2)) / 64**2
    assert fast_fill == pytest.approx(reference_fill, abs=0.03)
    assert 0.4 < fast_fill / (np.count_nonzero(fast) / 64**2) < 0.6


def test_an_image_does_not_depend_on_its_batch():
    systems = [(SIERPINSKI, [1 / 3] * 3), (FERN, FERN_PROBABILITIES), (FERN * 0.9, FERN_PROBABILITIES)]
    batch = render_batch(systems, 40, 5000, [11, 12, 13])
    alone = render_ifs(FERN, FERN_PROBABILITIES, 40, 5000, seed=12)
    np.testing.assert_array_equal(batch[1], alone)
    assert not np.array_equal(batch[1], render_ifs(FERN, FERN_PROBABILITIES, 40, 5000, seed=99))


def test_divergent_system_renders_without_error():
    exploding = np.array([[3.0, 0.5, -0.2, 2.5, 1.0, 1.0], [-2.0, 1.0, 0.3, 2.0, 0.0, 1.0]])
    image = render_ifs(exploding, [0.5, 0.5], 32, 2000, seed=0)
    assert image.shape == (32, 32) and image.dtype == np.uint8
    reference = render_reference(exploding, [0.5, 0.5], 32, 2000, seed=0)
    assert reference.shape == (32, 32)


def test_impossible_fill_rate_stops_with_a_clear_error(tmp_path):
    cfg = SyntheticConfig(kind="ofdb", num_classes=3, image_size=32, num_points=2000, fill_rate=0.99, max_attempts=30)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("previous dataset")
    with pytest.raises(UserError) as raised:
        generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    message = str(raised.value)
    assert "synthetic.fill_rate=0.99" in message and "synthetic.max_attempts=30" in message
    assert "\n" not in message
    assert (tmp_path / "out" / "old.txt").read_text() == "previous dataset"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_onepfrac_impossible_base_names_sigma(tmp_path):
    cfg = SyntheticConfig(kind="onepfrac", num_classes=2, image_size=32, num_points=2000, fill_rate=0.9, max_attempts=5)
    with pytest.raises(UserError, match="synthetic.sigma=3.5"):
        generate_dataset(cfg, 0, tmp_path / "out", progress=False)


def test_existing_output_is_replaced(tmp_path):
    (tmp_path / "out" / "images" / "stale").mkdir(parents=True)
    generate_dataset(SyntheticConfig(kind="ofdb", **SMALL), 0, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["00000", "00001", "00002", "00003"]


def test_onepfrac_config_validation():
    with pytest.raises(ConfigError, match="synthetic.sigma"):
        parse_params({"synthetic": {"kind": "onepfrac", "sigma": 6.5, "onepfrac_maps": 2}})
    with pytest.raises(ConfigError, match="synthetic.onepfrac_maps"):
        parse_params({"synthetic": {"onepfrac_maps": 0}})
    parse_params({"synthetic": {"kind": "onepfrac", "sigma": 6.0, "onepfrac_maps": 2}})


def test_png_writer_round_trips(tmp_path):
    image = (np.random.default_rng(0).random((17, 23)) > 0.5).astype(np.uint8) * 255
    (tmp_path / "x.png").write_bytes(encode_gray_png(image))
    decoded = Image.open(tmp_path / "x.png")
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), image)


def test_search_with_previews_at_larger_sizes(tmp_path):
    # >= 128 px: a quarter-size preview screens draws before the full render.
    cfg = SyntheticConfig(kind="ofdb", num_classes=3, image_size=128, num_points=16000, fill_rate=0.2)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    for entry in manifest["classes"]:
        assert lit_fraction(tmp_path / "out" / "images" / entry["name"] / "0000.png") >= 0.2
    with pytest.raises(UserError, match="category 0"):
        generate_dataset(SyntheticConfig(kind="ofdb", num_classes=3, image_size=128, num_points=16000,
                                         fill_rate=0.9, max_attempts=40), 0, tmp_path / "bad", progress=False)


def test_progress_is_plain_lines_off_a_terminal_and_silent_when_off(tmp_path, capsys):
    cfg = SyntheticConfig(kind="ofdb", **SMALL)
    generate_dataset(cfg, 0, tmp_path / "a", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("synthetic ofdb: 4/4 images")
    generate_dataset(cfg, 0, tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    generate_dataset(SyntheticConfig(kind="ofdb", **SMALL), 0, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "synthetic ofdb:   0%|" in err and "img/s" in err  # a tqdm bar, not log lines


def test_bench_prints_both_rates_and_the_ratio(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--image-size", "32", "--points", "2000", "--fast-images", "8",
                              "--reference-images", "1", "--repeats", "1", "--workers", "1"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "reference, per-point Python loop:" in out and out.count("speed-up") == 2
