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
import functools
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch

from synthvit.commands.bench import official
from synthvit.commands.bench.reference import render_reference
from synthvit.config import SyntheticConfig
from synthvit.data import torch_render
from synthvit.synthetic import ifs, kernels
from synthvit.synthetic.generate import generate_dataset
from synthvit.synthetic.parallel import InProcess, default_workers, worker_pool
from synthvit.synthetic.render import RenderSettings, batch_size_for, fill_rates

PAD, GRAY = 6, 127  # FractalDB's pad and gray value (the sizes are the arguments' defaults)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=362, help="image side in pixels (FractalDB: 362)")
    parser.add_argument("--points", type=int, default=200_000, help="chaos-game points per image (FractalDB: 200k)")
    parser.add_argument(
        "--patch",
        choices=("random", "full"),
        default="random",
        help="3x3 patches: FractalDB's random masks or solid (the demo's)",
    )
    parser.add_argument("--fast-images", type=int, default=256, help="images per timed fast run")
    parser.add_argument(
        "--reference-images", type=int, default=3, help="images the per-point reference renders (~1 s each)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed fast runs (the median counts)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes; 0 = all usable cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ofdb", action="store_true", help="also time an OFDB dataset end to end (search included)")
    parser.add_argument("--ofdb-classes", type=int, default=1000, help="categories for --ofdb")
    parser.add_argument(
        "--official", type=Path, help="FractalDB's category CSVs (folder or fixture file): re-score them"
    )
    parser.add_argument("--grid", type=Path, help="with --official: write an official-vs-synthvit image grid here")


def _systems(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contractive IFS with 2-7 maps and a sigma-factor in Anderson & Farrell's well-filled
    range ((5+n)/2 .. (6+n)/2): every point stays finite, so both renderers do full work
    (a divergent search draw would let the reference skip its non-finite points)."""
    rng = np.random.default_rng(seed)
    systems = []
    for _ in range(count):
        num_maps = int(rng.integers(2, 8))
        maps = ifs.sigma_factor_ifs(rng, num_maps, rng.uniform((5 + num_maps) / 2, (6 + num_maps) / 2))
        systems.append((maps, ifs.map_probabilities(maps)))
    return systems


def _render_chunk(systems, *, settings: RenderSettings) -> list[float]:
    images = settings.render(systems, list(range(len(systems))))[0]
    return fill_rates(images).tolist()  # send back a few numbers, not the images


def _time_fast(pool, systems, settings: RenderSettings) -> float:
    """Seconds to render all systems in numpy batches on the pool's workers."""
    batch = batch_size_for(settings.num_points)
    chunks = [systems[k : k + batch] for k in range(0, len(systems), batch)]
    return timeit.timeit(lambda: list(pool.map(functools.partial(_render_chunk, settings=settings), chunks)), number=1)


def _time_torch(systems, settings: RenderSettings, device: torch.device) -> tuple[float, float]:
    """(seconds for the torch port to draw and render all systems on `device`, of which the host draws)."""
    started = time.perf_counter()
    draws = torch_render.draw(systems, list(range(len(systems))), settings)
    drawn = time.perf_counter()
    images, _ = torch_render.render(draws, settings, device)
    images.count_nonzero(dim=(1, 2)).cpu()  # waits for the device
    return time.perf_counter() - started, drawn - started


def _same_bytes(systems, settings: RenderSettings, device: torch.device) -> str:
    """Whether the torch port on `device` gives numpy's bytes and converged flags for `systems`."""
    seeds = list(range(len(systems)))
    expected, converged = settings.render(systems, seeds)
    images, flags = torch_render.render(torch_render.draw(systems, seeds, settings), settings, device)
    same = np.array_equal(images.cpu().numpy(), expected) and np.array_equal(flags, converged)
    verdict = "yes" if same else "NO"
    return f"torch port on {device.type} gives numpy's bytes and converged flags ({len(systems)} images): {verdict}"


def _time_reference(system, settings: RenderSettings, seed: int) -> float:
    started = time.perf_counter()
    render_reference(*system, settings.image_size, settings.num_points, seed, patch=settings.patch, pad=PAD, value=GRAY)
    return time.perf_counter() - started


def _time_ofdb(args, workers: int) -> None:
    cfg = SyntheticConfig(
        kind="ofdb",
        num_classes=args.ofdb_classes,
        image_size=args.image_size,
        num_points=args.points,
        pad=PAD,
        gray_value=GRAY,
    )
    with tempfile.TemporaryDirectory(prefix="synthvit-bench-") as tmp:
        started = time.perf_counter()
        manifest = generate_dataset(cfg, args.seed, Path(tmp) / "ofdb", progress=True, workers=workers)
        seconds = time.perf_counter() - started
    draws = sum(c["attempts"] for c in manifest["classes"])
    print(
        f"ofdb end to end: {cfg.num_classes} categories at {cfg.image_size}px, {cfg.num_points} points, "
        f"fill_rate {cfg.fill_rate}: {seconds:.1f} s ({draws} IFS draws searched, "
        f"{cfg.num_classes / draws:.1%} accepted; {workers} workers)"
    )
    mix = np.bincount([len(c["maps"]) for c in manifest["classes"]], minlength=8)[2:]
    print(f"ofdb categories by map count (2..7 maps): {'/'.join(map(str, mix))}")


def _official(args) -> None:
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


def run(args) -> int:
    if args.official:
        _official(args)
        return 0
    workers = args.workers or default_workers()
    settings = RenderSettings(args.image_size, args.points, args.patch, PAD, GRAY)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    systems = _systems(args.seed, args.fast_images)
    print(
        f"synthetic render benchmark: {settings.image_size}x{settings.image_size}, {settings.num_points} points, "
        f"{PAD}-px pad, 3x3 {args.patch} patches; fast renderer on {workers} worker processes, "
        f"{'compiled loops (numba)' if kernels.ENABLED else 'numpy only (no numba)'}"
    )
    fast_seconds, reference_seconds = [], []
    with worker_pool(workers) as pool:
        _time_fast(pool, systems[: batch_size_for(settings.num_points) * workers], settings)  # start, warm the workers
        for repeat in range(max(args.repeats, args.reference_images)):  # alternate: same machine load
            if repeat < args.repeats:
                fast_seconds.append(_time_fast(pool, systems, settings))
            if repeat < args.reference_images:
                reference_seconds.append(_time_reference(systems[repeat], settings, args.seed))
    one_seconds, numpy_seconds, torch_seconds = [], [], []
    _time_torch(systems[:2], settings, device)  # warm-up (CUDA context, kernels)
    threads, compiled = torch.get_num_threads(), kernels.ENABLED
    for _ in range(args.repeats):  # alternate: same machine load
        one_seconds.append(_time_fast(InProcess(), systems, settings))
        kernels.ENABLED = False
        numpy_seconds.append(_time_fast(InProcess(), systems, settings))
        kernels.ENABLED = compiled
        # On a CPU one thread, as numpy's one process: torch's small ops slowed ~8x on 2 threads of a busy
        # 2-core machine.
        torch.set_num_threads(1 if device.type == "cpu" else threads)
        torch_seconds.append(_time_torch(systems, settings, device))
        torch.set_num_threads(threads)

    reference_rate = len(reference_seconds) / sum(reference_seconds)
    fast_rate = len(systems) / statistics.median(fast_seconds)
    one_rate = len(systems) / statistics.median(one_seconds)
    numpy_rate = len(systems) / statistics.median(numpy_seconds)
    torch_rate = len(systems) / statistics.median(seconds for seconds, _ in torch_seconds)
    draw_rate = len(systems) / statistics.median(drawing for _, drawing in torch_seconds)
    rows = [
        ("reference, per-point Python loop", reference_rate, f"({len(reference_seconds)} images)"),
        (
            f"fast, {workers} worker processes",
            fast_rate,
            f"speed-up {fast_rate / reference_rate:.0f}x  "
            f"(median of {len(fast_seconds)} runs of {len(systems)} images)",
        ),
        ("fast, 1 process", one_rate, f"speed-up {one_rate / reference_rate:.0f}x"),
        (
            "fast, 1 process, numpy only",
            numpy_rate,
            f"speed-up {numpy_rate / reference_rate:.0f}x; compiled loops {one_rate / numpy_rate:.2f}x numpy",
        ),
        (
            f"torch port, 1 process, {'1 thread' if device.type == 'cpu' else device.type}",
            torch_rate,
            f"{torch_rate / one_rate:.2f}x the fast renderer in 1 process "
            f"(its host draws alone: {draw_rate:.0f} img/s)",
        ),
    ]
    for label, rate, note in rows:
        print(f"{label + ':':<34} {rate:8.2f} img/s  {note}")
    print(_same_bytes(systems, settings, device))
    if args.ofdb:
        _time_ofdb(args, workers)
    return 0
