"""Synthetic fractal datasets: determinism, the official acceptance rule, attractors only,
1p-frac bounds, FractalDB instances, renderer vs reference."""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.fractals import FERN, FERN_PROBABILITIES, SIERPINSKI, official_categories, slow_rotations
from synthvit.commands.bench import official
from synthvit.commands.bench import synthetic as bench
from synthvit.commands.bench.reference import chaos_game_reference, render_reference
from synthvit.config import SyntheticConfig, parse_params
from synthvit.errors import ConfigError, UserError
from synthvit.synthetic import draws, ifs
from synthvit.synthetic.generate import generate_dataset
from synthvit.synthetic.png import encode_png
from synthvit.synthetic.render import chaos_game_points, render_batch, render_ifs
from synthvit.synthetic.search import Rule

SMALL = {
    "num_classes": 4,
    "instances_per_class": 3,
    "image_size": 32,
    "num_points": 3000,
    "max_attempts": 200,
    "store": "images",
}
OFFICIAL_MAP_COUNTS = (231, 294, 218, 146, 77, 34)


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
    generate_dataset(cfg, 7, tmp_path / "one", progress=False, workers=1)
    generate_dataset(cfg, 7, tmp_path / "two", progress=False, workers=2)
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
        assert entry["instances"][0] == {
            "file": "0000.png",
            "coefficient": None,
            "weight": 1.0,
            "flip": "none",
            "pattern": 0,
            "render_seed": entry["render_seed"],
            "converged": True,
        }
        # Enumerated as FractalDB does, flips fastest: identity row with flips 1..2.
        assert [(i["coefficient"], i["flip"]) for i in entry["instances"][1:]] == [
            (None, "vertical"),
            (None, "horizontal"),
        ]
        image = Image.open(root / "images" / entry["name"] / "0001.png")
        assert image.mode == "L" and image.size == (32, 32)
        # The manifest is enough to re-render an image exactly.
        again = render_ifs(
            np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"], patch=cfg.patch
        )
        np.testing.assert_array_equal(again, np.asarray(Image.open(root / "images" / entry["name"] / "0000.png")))
    assert Image.open(root / "preview.png").mode == "L"
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_full_patches_draw_solid_shapes_the_manifest_re_renders(tmp_path):
    cfg = SyntheticConfig(kind="fractaldb", patch="full", fill_rate=0.1, **SMALL)
    manifest = generate_dataset(cfg, 3, tmp_path / "out", progress=False)
    assert manifest["params"]["patch"] == "full" and "solid" in manifest["renderer"]["patch"]
    for entry in manifest["classes"]:
        image = np.asarray(Image.open(tmp_path / "out" / "images" / entry["name"] / "0000.png"))
        again = render_ifs(
            np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"], patch="full"
        )
        np.testing.assert_array_equal(again, image)
        speckled = render_ifs(np.array(entry["maps"]), np.array(entry["probabilities"]), 32, 3000, entry["render_seed"])
        # Solid patches light every covered pixel; random masks light about half of them.
        assert np.count_nonzero(image) > 1.5 * np.count_nonzero(speckled)
        assert np.count_nonzero(image) / image.size >= 0.1


@pytest.mark.parametrize("kind", ["fractaldb", "onepfrac"])
def test_every_accepted_category_passes_the_official_rule_and_every_earlier_draw_failed(tmp_path, kind):
    cfg = SyntheticConfig(kind=kind, num_classes=3, instances_per_class=1, image_size=32, num_points=2000)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False)
    rule = Rule(0.2) if kind == "fractaldb" else Rule(0.05, patched=True, strict=True)
    draw = (
        functools.partial(draws.search_draw, 0, 2, 7, None)
        if kind == "fractaldb"
        else functools.partial(draws.perturbation_draw, 0, manifest["base"]["maps"], cfg.delta)
    )
    for category, entry in enumerate(manifest["classes"]):
        tried = [draw(category, attempt) for attempt in range(entry["attempts"])]
        rates, converged = rule.score([(c.maps, c.probabilities) for c in tried], [c.render_seed for c in tried])
        kept = [rule.keeps(r, ok) for r, ok in zip(rates, converged)]
        assert kept[-1] and not any(kept[:-1])
        assert rates[-1] == pytest.approx(entry["fill_rate"], abs=1e-12)
    if kind == "fractaldb":
        assert sum(c["attempts"] for c in manifest["classes"]) > 3  # the search did reject draws


def test_official_fractaldb_categories_pass_the_rule(tmp_path):
    # Their fills cluster just above 0.2 (they were kept on one random stream): 913 of all
    # 1,000 pass on synthvit's (README); the official code on another stream: 94-96%.
    categories = official_categories()
    assert len(categories) == 100 and list(categories)[:2] == ["00000", "00001"]
    scored = official.rescore(categories)
    assert scored["converged"] == 100
    assert scored["kept"] >= 80  # measured 86
    official.write_grid(categories, tmp_path / "grid.png", count=1)
    assert Image.open(tmp_path / "grid.png").size == (
        4 * (official.TILE + official.GAP) + official.GAP,
        official.TILE + 2 * official.GAP,
    )


def test_searched_map_counts_follow_the_official_mix(tmp_path):
    # Official FractalDB-1k: 2-3 maps 52%, 6-7 maps 11%. The old 64-px patched rule gave 20% and 45%.
    cfg = SyntheticConfig(kind="ofdb", num_classes=120, image_size=16, num_points=500)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False, workers=2)
    counts = np.bincount([len(c["maps"]) for c in manifest["classes"]], minlength=8)[2:] / cfg.num_classes
    official = np.array(OFFICIAL_MAP_COUNTS) / 1000
    assert counts[:2].sum() == pytest.approx(official[:2].sum(), abs=0.12)
    assert counts[4:].sum() == pytest.approx(official[4:].sum(), abs=0.08)


def test_a_slowly_contracting_system_draws_its_attractor_as_one_long_walk_does():
    maps, probabilities, n = slow_rotations(), np.array([0.5, 0.5]), 50_000
    long_walk = np.array(chaos_game_reference(maps, probabilities, n, random.Random(1), burn_in=3000))
    other_long_walk = np.array(chaos_game_reference(maps, probabilities, n, random.Random(2), burn_in=3000))
    rng = random.Random(3)  # many short walks after a 32-step burn-in: what the renderer used to draw
    short_walks = np.concatenate(
        [chaos_game_reference(maps, probabilities, 32, rng, burn_in=32) for _ in range(n // 32)]
    )
    fast, converged = chaos_game_points(maps, probabilities, n, seed=1)
    low, high = long_walk.min(0), long_walk.max(0)

    def histogram(points):
        return np.histogram2d(points[:, 0], points[:, 1], bins=16, range=[[low[0], high[0]], [low[1], high[1]]])[
            0
        ] / len(points)

    def distance(points):  # total variation from the long walk, over its bounding box
        return 0.5 * np.abs(histogram(points) - histogram(long_walk)).sum()

    assert converged
    assert distance(fast) < max(0.05, 1.5 * distance(other_long_walk))  # measured 0.020 (two long walks: 0.033)
    assert distance(short_walks) > 0.3  # measured 0.50: the test tells blobs from attractors


def test_divergent_and_barely_contracting_systems_are_rejected():
    exploding = np.array([[3.0, 0.5, -0.2, 2.5, 1.0, 1.0], [-2.0, 1.0, 0.3, 2.0, 0.0, 1.0]])
    barely = np.array([[0.999, 0, 0, 0.999, 1, 0], [0.999, 0, 0, 0.999, 0, 1]])  # would need ~9,000 steps
    images, converged = render_batch(
        [(exploding, [0.5, 0.5]), (barely, [0.5, 0.5]), (SIERPINSKI, [1 / 3] * 3)],
        32,
        2000,
        [0, 1, 2],
        with_convergence=True,
    )
    assert converged.tolist() == [False, False, True]
    assert images.shape == (3, 32, 32) and images.dtype == np.uint8
    rates, converged = Rule(0.0).score([(exploding, [0.5, 0.5])], [0])
    assert not Rule(0.0).keeps(rates[0], converged[0])
    assert render_reference(exploding, [0.5, 0.5], 32, 2000, seed=0).shape == (32, 32)


def test_onepfrac_categories_all_converge(tmp_path):
    cfg = SyntheticConfig(kind="onepfrac", num_classes=40, image_size=16, num_points=500)
    manifest = generate_dataset(cfg, 0, tmp_path / "out", progress=False, workers=2)
    systems = [(np.array(c["maps"]), np.array(c["probabilities"])) for c in manifest["classes"]]
    _, converged = render_batch(
        systems, 16, 500, [c["render_seed"] for c in manifest["classes"]], with_convergence=True
    )
    assert converged.all()
    assert all(c["fill_rate"] > 0.05 for c in manifest["classes"])


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
    assert abs(manifest["base"]["sigma_factor"] - cfg.sigma) <= 0.1  # jittered as 1p-frac does
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


def test_onepfrac_impossible_threshold_names_its_key(tmp_path):
    cfg = SyntheticConfig(
        kind="onepfrac", num_classes=2, image_size=32, num_points=2000, onepfrac_fill_rate=0.9, max_attempts=5
    )
    with pytest.raises(UserError, match="synthetic.onepfrac_fill_rate=0.9.*synthetic.sigma=3.5"):
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
    (tmp_path / "x.png").write_bytes(encode_png(image))
    decoded = Image.open(tmp_path / "x.png")
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), image)
    (tmp_path / "rgb.png").write_bytes(encode_png(image, rgb=True))
    decoded = Image.open(tmp_path / "rgb.png")
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(image[:, :, None], 3, axis=2))


def test_training_resolution_renders_the_same_categories_as_the_faithful_preset(tmp_path):
    faithful = SyntheticConfig(
        kind="ofdb",
        num_classes=3,
        image_size=362,
        num_points=200_000,
        pad=6,
        gray_value=127,
        patch="random",
        color="rgb",
        store="images",
    )
    small = SyntheticConfig(kind="ofdb", num_classes=3, image_size=32, num_points=2000)
    big = generate_dataset(faithful, 0, tmp_path / "faithful", progress=False)
    little = generate_dataset(small, 0, tmp_path / "small", progress=False)
    assert [c["maps"] for c in big["classes"]] == [c["maps"] for c in little["classes"]]
    image = Image.open(tmp_path / "faithful" / "images" / "00000" / "0000.png")
    assert image.mode == "RGB" and image.size == (362, 362)
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 127} and not pixels[:6].any() and not pixels[:, :6].any()  # pad kept clear
    entry = big["classes"][0]
    assert entry["rendered_maps"] == (np.array(entry["maps"]) * draws.OFDB_FIRST_ROW).tolist()  # a x 0.2
    again = render_ifs(
        np.array(entry["rendered_maps"]),
        np.array(entry["probabilities"]),
        362,
        200_000,
        entry["render_seed"],
        pad=6,
        value=127,
    )
    np.testing.assert_array_equal(again, pixels[:, :, 0])


def test_faithful_render_matches_the_official_algorithms_image_statistics():
    # reference.py is FractalDB's per-point algorithm (one walk, random 3x3 masks pasted in turn).
    for rows in list(official_categories().values())[:2]:
        maps, probabilities = rows[:, :6], rows[:, 6] / rows[:, 6].sum()
        fast = render_ifs(maps, probabilities, 362, 200_000, seed=1, pad=6, value=127)
        official = render_reference(maps, probabilities, 362, 200_000, seed=1, pad=6, value=127, burn_in=1000)
        assert np.count_nonzero(fast) / fast.size == pytest.approx(np.count_nonzero(official) / official.size, rel=0.05)
        assert fast.mean() == pytest.approx(official.mean(), rel=0.05)


def test_fractaldb_weight_sets_and_enumeration_are_the_official_ones():
    # weights_0.4.csv: each of a..f times 0.2, 0.6, 1.4 or 1.8, plus the identity (25 rows).
    rows = draws.weight_rows(0.4)
    assert len(rows) == 25 and rows[0] == (None, 1.0)
    assert sorted({w for _, w in rows[1:]}) == [0.2, 0.6, 1.4, 1.8]
    assert sorted({w for _, w in draws.weight_rows(0.1)[1:]}) == [0.8, 0.9, 1.1, 1.2]
    variations = [draws.instance_variation(0, 0, i, 0.4) for i in range(1000)]
    assert len({(v["coefficient"], v["weight"], v["flip"], v["pattern"]) for v in variations}) == 1000  # 25 x 10 x 4
    assert len({(v["coefficient"], v["weight"], v["flip"]) for v in variations[:100]}) == 100  # all rows and flips


def test_progress_is_plain_lines_off_a_terminal_and_silent_when_off(tmp_path, capsys):
    cfg = SyntheticConfig(kind="ofdb", **SMALL)
    generate_dataset(cfg, 0, tmp_path / "a", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    # 4 categories found, then their 4 PNGs written
    assert lines and lines[-1].startswith("synthetic ofdb: 8/8 categories found, then images written")
    generate_dataset(cfg, 0, tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    generate_dataset(SyntheticConfig(kind="ofdb", **SMALL), 0, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "synthetic ofdb:   0%|" in err and "it/s, categories found, then images written]" in err  # a tqdm bar


def test_bench_prints_both_rates_and_the_ratio(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--image-size",
            "32",
            "--points",
            "2000",
            "--fast-images",
            "8",
            "--reference-images",
            "1",
            "--repeats",
            "1",
            "--workers",
            "1",
        ]
    )
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "reference, per-point Python loop:" in out and out.count("speed-up") == 3
    assert "compiled loops (numba)" in out and re.search(
        r"numpy only: +[0-9.]+ img/s .*compiled loops [0-9.]+x numpy", out
    )
    assert "torch port, 1 process, 1 thread:" in out and "x the fast renderer in 1 process" in out
    assert "torch port on cpu gives numpy's bytes and converged flags (8 images): yes" in out
