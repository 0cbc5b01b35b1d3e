"""The dataset as its formulas: any image of a manifest, rendered when asked for.

An image is addressed by its flat index, category * images_per_class + instance, as
the stored layouts order them. Instance 0 of a category is its searched image (the
manifest's render_seed, and OFDB's rendered_maps); FractalDB's
instances 1.. are draws.instance_variation of the category's maps, a pure function
of (seed, category, instance), so the manifest need not list them. With fresh
instances, epoch e (from 1) reads instance numbers (e - 1) * images_per_class + i:
epoch 1 is the stored set, later epochs new patch masks and walks over the same
enumeration of weight rows and flips (FractalDB), or new masks and walks of the
category image (OFDB, 1p-frac). Instance numbers from HELDOUT_FIRST on are the held-out
split, which no epoch reaches: pre-training scores them to tell a learned task from a
memorised one (FractalDB's are drawn off its weight grid, draws.heldout_variation).

Rendering is the vectorised numpy renderer (render.py), so an image is byte-identical
whichever batch, process or epoch asks for it; the generator writes its files (PNG
folder or shards) through `render` too. Pre-training on CUDA renders the same `systems`
with the torch port (torch_render.py, through data/fractals.py's RenderedImages.device_batches).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from synthvit.config import SyntheticConfig
from synthvit.synthetic import draws
from synthvit.synthetic.render import RenderSettings, batch_size_for

HELDOUT_FIRST = 2**40  # far above any epoch's instance numbers ((epoch - 1) * images_per_class + i)


class ManifestImages:
    """Every image a manifest describes (numpy; picklable, small: categories only)."""

    def __init__(self, manifest: dict):
        self.cfg = SyntheticConfig.model_validate(manifest["params"])
        self.kind, self.seed = manifest["kind"], manifest["seed"]
        self.per_class = manifest["images_per_class"]
        self.settings = RenderSettings.of(self.cfg)
        # Per category: maps (what FractalDB's instances vary), the maps its image draws (OFDB's first
        # weight row, else the same), probabilities, render seed.
        self.categories = [
            (
                np.asarray(c["maps"]),
                np.asarray(c.get("rendered_maps", c["maps"])),
                np.asarray(c["probabilities"]),
                c["render_seed"],
            )
            for c in manifest["classes"]
        ]
        self.names = [c["name"] for c in manifest["classes"]]
        self.digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.categories) * self.per_class

    def system(self, category: int, instance: int) -> tuple[np.ndarray, np.ndarray, int, str]:
        """(maps, probabilities, render seed, flip) of image `instance` of `category` (any instance number)."""
        maps, image_maps, probabilities, render_seed = self.categories[category]
        if instance == 0:
            return image_maps, probabilities, render_seed, "none"
        if self.kind != "fractaldb":  # fresh draws (or held out) of a one-image category: new masks and walk
            return image_maps, probabilities, draws.instance_render_seed(self.seed, category, instance), "none"
        vary = draws.heldout_variation if instance >= HELDOUT_FIRST else draws.instance_variation
        variation = vary(self.seed, category, instance, self.cfg.instance_weights)
        return draws.instance_maps(maps, variation), probabilities, variation["render_seed"], variation["flip"]

    def systems(self, indices, epoch: int = 1, fresh: bool = False) -> list[tuple[np.ndarray, np.ndarray, int, str]]:
        """ManifestImages.system of each flat index, in epoch `epoch` (fresh: its own instance numbers)."""
        shift = (epoch - 1) * self.per_class if fresh else 0
        return [self.system(i // self.per_class, i % self.per_class + shift) for i in indices]

    def heldout_systems(self, per_class: int) -> list[tuple[np.ndarray, np.ndarray, int, str]]:
        """The held-out split: `per_class` instances of each category, category-major (labels: index // per_class)."""
        categories = range(len(self.categories))
        return [self.system(category, HELDOUT_FIRST + k) for category in categories for k in range(per_class)]

    def render(self, indices, epoch: int = 1, fresh: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, S, S) uint8 at synthetic.image_size, gray and flipped as stored; converged (N,))."""
        return self.render_systems(self.systems(indices, epoch, fresh))

    def render_systems(self, systems: list) -> tuple[np.ndarray, np.ndarray]:
        size = self.settings.image_size
        images, converged = np.empty((len(systems), size, size), np.uint8), np.empty(len(systems), bool)
        batch = batch_size_for(self.settings.num_points)
        for start in range(0, len(systems), batch):
            chunk = systems[start : start + batch]
            drawn, ok = self.settings.render([(m, p) for m, p, _, _ in chunk], [s for _, _, s, _ in chunk])
            for k, (image, (_, _, _, how)) in enumerate(zip(drawn, chunk)):
                images[start + k] = draws.flip(image, how)
            converged[start : start + len(chunk)] = ok
        return images, converged


TASK_BATCHES = 16  # numpy render batches per worker call


def worker_tasks(indices: list[int], images: ManifestImages) -> list[list[int]]:
    """Work for one worker call: several numpy batches, so the manifest is pickled rarely."""
    size = batch_size_for(images.settings.num_points) * TASK_BATCHES
    return [indices[k : k + size] for k in range(0, len(indices), size)]
