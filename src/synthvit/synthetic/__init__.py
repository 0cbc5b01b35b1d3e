"""Formula-driven synthetic pre-training data: FractalDB, OFDB and 1p-frac.

    generate_dataset(cfg, seed, out_dir) -> manifest dict

writes out_dir/manifest.json and out_dir/preview.png, and the images as shards or PNG files
when synthetic.store asks (generate.py: the layout; source.py: any image from the manifest;
render.py: how images are drawn).
"""

from __future__ import annotations

from pathlib import Path

from synthvit.config import SyntheticConfig
from synthvit.synthetic.generate import write_dataset


def generate_dataset(cfg: SyntheticConfig, seed: int, out_dir: Path, progress: bool = True) -> dict:
    """Render the dataset that cfg describes into out_dir (replaced atomically); return its manifest.

    Same cfg and seed give byte-identical files on any machine and core count. Raises
    synthvit.errors.UserError when a category cannot reach cfg.fill_rate in
    cfg.max_attempts draws.
    """
    return write_dataset(cfg, seed, Path(out_dir), progress=progress)


__all__ = ["generate_dataset"]
