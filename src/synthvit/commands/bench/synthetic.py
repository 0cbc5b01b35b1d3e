"""`synthvit bench synthetic`: the fast renderer against the per-point reference, one run.

Both render the same IFS (contractive, 2-7 maps) at the same size, points and 3x3
patches (random masks, or --patch full); their timed runs alternate so that both see the
same machine load, and the ratio of their images/s is the speed-up. The fast renderer is
timed on the worker processes the generators use and in one process, alternating with
its numpy-only path (what runs without numba: kernels.py) and its torch port (data/torch_render.py: what
pre-training on CUDA renders with) on this
machine's device (CUDA if visible, else the CPU), whose images are then compared with
numpy's byte for byte. --ofdb also times a whole OFDB dataset
(category search, rendering, PNG writing) end to end.
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from synthvit.commands.bench import official, timed
from synthvit.commands.bench.reference import render_reference
from synthvit.config import SyntheticConfig
from synthvit.data import torch_render
from synthvit.synthetic import ifs, kernels
from synthvit.synthetic.generate import generate_dataset
from synthvit.synthetic.parallel import InProcess, default_workers, worker_pool
from synthvit.synthetic.render import RenderSettings, batch_size_for, fill_rates

PAD, GRAY = 6, 127  # FractalDB's pad and gray value (the sizes are the arguments' defaults)
OFDB_CLASSES = 1000  # --ofdb's categories, as many as FractalDB-1k


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=362, help="image side in pixels (FractalDB: 362)")
    parser.add_argument("--points", type=int, default=200_000, help="chaos-game points per image (FractalDB: 200k)")
    patch = "3x3 patches: FractalDB's random masks or solid (the demo's)"
    parser.add_argument("--patch", choices=("random", "full"), default="random", help=patch)
    parser.add_argument("--fast-images", type=int, default=256, help="images per timed fast run")
    parser.add_argument("--reference-images", type=int, default=3, help="images the reference renders (~1 s each)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fast runs (the median counts)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes; 0 = all usable cores")
    parser.add_argument("--ofdb", action="store_true", help="also time an OFDB-1k dataset end to end (search included)")
    parser.add_argument("--official", type=Path, help="FractalDB's category CSVs (folder or file): re-score them")
    parser.add_argument("--grid", type=Path, help="with --official: write an official-vs-synthvit image grid here")


def _systems(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contractive IFS with 2-7 maps and a sigma-factor in Anderson & Farrell's well-filled
    range ((5+n)/2 .. (6+n)/2): every point stays finite, so both renderers do full work
    (a divergent search draw would let the reference skip its non-finite points)."""
    rng = np.random.default_rng(0)
    systems = []
    for _ in range(count):
        num_maps = int(rng.integers(2, 8))
        maps = ifs.sigma_factor_ifs(rng, num_maps, rng.uniform((5 + num_maps) / 2, (6 + num_maps) / 2))
        systems.append((maps, ifs.map_probabilities(maps)))
    return systems


def _render_chunk(systems, *, settings: RenderSettings) -> list[float]:
    images = settings.render(systems, list(range(len(systems))))[0]
    return fill_rates(images).tolist()  # send back a few numbers, not the images


def _render_fast(pool, systems, settings: RenderSettings, numba: bool = True) -> None:
    """All systems in numpy batches on the pool's workers; numba=False: numpy only (in this process's pool)."""
    batch = batch_size_for(settings.num_points)
    chunks = [systems[k : k + batch] for k in range(0, len(systems), batch)]
    compiled, kernels.ENABLED = kernels.ENABLED, kernels.ENABLED and numba
    list(pool.map(functools.partial(_render_chunk, settings=settings), chunks))
    kernels.ENABLED = compiled


def _render_torch(systems, settings: RenderSettings, device: torch.device):
    """(images on `device`, converged flags, seconds the host took to draw) of the torch port."""
    draws, drawing = timed(torch_render.draw, systems, list(range(len(systems))), settings)
    images, converged = torch_render.render(draws, settings, device)
    images.count_nonzero(dim=(1, 2)).cpu()  # waits for the device
    return images, converged, drawing


def _time_ofdb(args, workers: int) -> None:
    look = {"image_size": args.image_size, "num_points": args.points, "pad": PAD, "gray_value": GRAY}
    cfg = SyntheticConfig(kind="ofdb", num_classes=OFDB_CLASSES, **look)
    with tempfile.TemporaryDirectory(prefix="synthvit-bench-") as tmp:
        manifest, seconds = timed(generate_dataset, cfg, 0, Path(tmp) / "ofdb", progress=True, workers=workers)
    draws = sum(c["attempts"] for c in manifest["classes"])
    print(
        f"ofdb end to end: {cfg.num_classes} categories at {cfg.image_size}px, {cfg.num_points} points, "
        f"fill_rate {cfg.fill_rate}: {seconds:.1f} s ({draws} IFS draws searched, "
        f"{cfg.num_classes / draws:.1%} accepted; {workers} workers)"
    )
    mix = np.bincount([len(c["maps"]) for c in manifest["classes"]], minlength=8)[2:]
    print(f"ofdb categories by map count (2..7 maps): {'/'.join(map(str, mix))}")


def _official(args) -> int:
    categories = official.load_official(args.official)
    scored = official.rescore(categories)
    print(
        f"official categories ({args.official}): {scored['kept']}/{scored['categories']} kept by synthvit's rule, "
        f"{scored['converged']} converge, median fill {scored['median_fill']:.3f}; "
        f"by map count (2..7 maps): {'/'.join(map(str, scored['map_counts']))}"
    )
    if args.grid:
        official.write_grid(categories, args.grid)
        print(
            f"grid written: {args.grid} (columns: FractalDB's algorithm, synthvit faithful, "
            "synthvit 64 px random and solid patches)"
        )
    return 0


def run(args) -> int:
    if args.official:
        return _official(args)
    workers = args.workers or default_workers()
    settings = RenderSettings(args.image_size, args.points, args.patch, PAD, GRAY)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    systems = _systems(args.fast_images)
    print(
        f"synthetic render benchmark: {settings.image_size}x{settings.image_size}, {settings.num_points} points, "
        f"{PAD}-px pad, 3x3 {args.patch} patches; fast renderer on {workers} worker processes, "
        f"{'compiled loops (numba)' if kernels.ENABLED else 'numpy only (no numba)'}"
    )
    seconds = collections.defaultdict(list)
    # On a CPU the torch port gets one thread, as numpy's one process: torch's small ops slowed ~8x on 2 threads of
    # a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cpu" else threads)
    with worker_pool(workers) as pool:
        _render_fast(pool, systems[: batch_size_for(settings.num_points) * workers], settings)  # warm the workers
        _render_torch(systems[:2], settings, device)  # warm-up (CUDA context, kernels)
        for repeat in range(max(args.repeats, args.reference_images)):  # alternate: same machine load
            if repeat < args.reference_images:
                look = {"patch": args.patch, "pad": PAD, "value": GRAY}
                _, took = timed(render_reference, *systems[repeat], args.image_size, args.points, seed=0, **look)
                seconds["reference"].append(took)
            if repeat < args.repeats:
                seconds["fast"].append(timed(_render_fast, pool, systems, settings)[1])
                seconds["one"].append(timed(_render_fast, InProcess(), systems, settings)[1])
                seconds["numpy"].append(timed(_render_fast, InProcess(), systems, settings, numba=False)[1])
                (images, converged, drawing), took = timed(_render_torch, systems, settings, device)
                seconds["torch"].append(took)
                seconds["draw"].append(drawing)
    torch.set_num_threads(threads)
    rate = {name: len(systems) / statistics.median(values) for name, values in seconds.items()}
    rate["reference"] = 1 / statistics.fmean(seconds["reference"])
    speed_up = {name: f"speed-up {rate[name] / rate['reference']:.0f}x" for name in rate}
    labels = {
        "reference": "reference, per-point Python loop",
        "fast": f"fast, {workers} worker processes",
        "one": "fast, 1 process",
        "numpy": "fast, 1 process, numpy only",
        "torch": f"torch port, 1 process, {'1 thread' if device.type == 'cpu' else device.type}",
    }
    notes = {
        "reference": f"({args.reference_images} images)",
        "fast": f"{speed_up['fast']}  (median of {args.repeats} runs of {len(systems)} images)",
        "one": speed_up["one"],
        "numpy": f"{speed_up['numpy']}; compiled loops {rate['one'] / rate['numpy']:.2f}x numpy",
        "torch": f"{rate['torch'] / rate['one']:.2f}x the fast renderer in 1 process "
        f"(its host draws alone: {rate['draw']:.0f} img/s)",
    }
    for name, label in labels.items():
        print(f"{label + ':':<34} {rate[name]:8.2f} img/s  {notes[name]}")
    expected, expected_converged = settings.render(systems, list(range(len(systems))))
    same = np.array_equal(images.cpu().numpy(), expected) and np.array_equal(converged, expected_converged)
    verdict = "yes" if same else "NO"
    print(f"torch port on {device.type} gives numpy's bytes and converged flags ({len(systems)} images): {verdict}")
    if args.ofdb:
        _time_ofdb(args, workers)
    return 0
