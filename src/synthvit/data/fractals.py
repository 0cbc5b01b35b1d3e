"""The synthetic pre-training set as training reads it: rendered from its manifest, or stored.

`load_synthetic(root, img_size)` reads data/synthetic/manifest.json and returns an ImageSet:
- store=manifest: rendered from the formulas (synthetic/source.py). A set that fits in
  PRELOAD_BYTES at img_size is rendered once, by worker processes, into an in-memory tensor
  (every epoch reads the same pixels); a larger one, or fresh_instances, keeps nothing up
  front: a `RenderedFractals` renders each batch epoch by epoch: on CUDA with torch on the
  GPU (torch_render.py; DataLoader workers draw the random numbers), on a CPU with numpy
  in the training process;
- store=shards: the uint8 shards, resized into one in-memory tensor;
- store=images: the PNG folder, decoded into one in-memory tensor.
All three give the same pixels for the same params and seed: images are resized to
img_size exactly as the PNG files are decoded (data.fit_image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthvit.data import torch_render
from synthvit.data.images import ImageSet, TensorImages, fit_image, load_image_folder, worker_batches
from synthvit.data.resize import resize
from synthvit.errors import UserError, damaged_message
from synthvit.runtime import progress_bar
from synthvit.synthetic.parallel import default_workers, worker_pool
from synthvit.synthetic.source import ManifestImages, worker_tasks

# A set without fresh instances reads the same pixels every epoch: rendering it once beats
# rendering it every epoch (2-15% of CPU pre-training throughput, README "Synthetic data") as
# long as it fits. 4 GiB holds FractalDB-1k (1,000 x 1,000) at 32 px.
PRELOAD_BYTES = 4 << 30


def fit_gray(images: np.ndarray, img_size: int) -> torch.Tensor:
    """uint8 N x 3 x S x S from gray (N, H, W) renders, resized as their PNG files decode."""
    out = np.empty((len(images), img_size, img_size, 3), np.uint8)
    for k, image in enumerate(images):
        # Pillow resizes each band alike: one gray band, copied, equals the RGB file's three
        # (tests compare with decoded PNGs) at a third of the cost.
        out[k] = fit_image(Image.fromarray(image), img_size, mode="L")[..., None]
    return torch.from_numpy(out).permute(0, 3, 1, 2)


@dataclasses.dataclass
class RenderedImages:
    """Images `indices` (flat: category * images_per_class + instance) of a manifest, rendered
    when asked: one numpy render per batch (`render`), or the random numbers for a device render (`draws`)."""

    images: ManifestImages
    img_size: int
    fresh: bool = False  # epoch e reads new instance numbers (source.py)
    indices: np.ndarray | None = None  # None: every image
    epoch: int = 1

    def __post_init__(self):
        if self.indices is None:
            self.indices = np.arange(len(self.images))

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.indices // self.images.per_class).to(torch.int64)

    @property
    def digest(self) -> str:
        """What the pixels depend on: the manifest, the size, fresh draws and which images."""
        sha = hashlib.sha256(f"{self.images.digest}\0{self.img_size}\0{self.fresh}\0".encode())
        sha.update(np.ascontiguousarray(self.indices, np.int64).tobytes())
        return sha.hexdigest()

    def for_epoch(self, epoch: int) -> RenderedImages:
        return dataclasses.replace(self, epoch=epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def render(self, positions: list[int]) -> torch.Tensor:
        """uint8 N x 3 x S x S of these positions, rendered by numpy in this process."""
        rendered, _ = self.images.render(self.indices[positions].tolist(), self.epoch, self.fresh)
        return fit_gray(rendered, self.img_size).contiguous()

    def draws(self, positions: list[int]) -> torch_render.Draws:
        """The host half of rendering these positions on a device: each image's random numbers."""
        systems = self.images.systems(self.indices[positions].tolist(), self.epoch, self.fresh)
        maps, probabilities, seeds, flips = zip(*systems)
        return torch_render.draw(list(zip(maps, probabilities)), list(seeds), self.images.settings, list(flips))

    def device_batches(
        self, batches: list[list[int]], device: torch.device, num_workers: int
    ) -> Iterator[torch.Tensor]:
        """uint8 N x 3 x S x S on `device` for each batch of positions, rendered there.

        `num_workers` DataLoader workers draw each image's random numbers on the host (numpy,
        render.py's functions); this process renders and resizes on the device (torch_render.py,
        resize.py): the same pixels as `render`. Consecutive batches are rendered together
        up to torch_render.device_batch_size images (an image does not depend on its batch):
        a render call costs a few thousand small kernels whatever its size.
        """
        per_call, pending = torch_render.device_batch_size(self.images.settings.num_points, device), []
        for draws in worker_batches(batches, self.draws, device, num_workers):
            pending.append(draws)
            if sum(map(len, pending)) >= per_call:
                yield from self._render_together(pending, device)
                pending = []
        yield from self._render_together(pending, device)

    def _render_together(self, parts: list[torch_render.Draws], device: torch.device) -> Iterator[torch.Tensor]:
        """uint8 N x 3 x S x S on `device` of each part: rendered together, resized there."""
        if parts:
            images, _ = torch_render.render(torch_render.concat(parts), self.images.settings, device)
            images = resize(images, self.img_size)[:, None].expand(-1, 3, -1, -1).contiguous()
            yield from images.split([len(part) for part in parts])

    def tensor(self, batch: int = 1024) -> torch.Tensor:
        """All its images, rendered into one uint8 tensor (epoch `self.epoch`)."""
        starts = range(0, len(self), batch)
        return torch.cat([self.render(list(range(start, min(start + batch, len(self))))) for start in starts])


@dataclasses.dataclass
class RenderedFractals(ImageSet):
    """The fractal set as an ImageSet whose batches are rendered when training asks for them."""

    source: RenderedImages
    classes: list[str]
    labels: torch.Tensor

    def batches(self, order, starts, size, device, num_workers, epoch=1):
        on_host = order.tolist()
        batches = [on_host[start : start + size] for start in starts]
        source = self.source.for_epoch(epoch)
        # On CUDA the GPU renders: CPU workers at ~1 ms an image would starve it. On a CPU the training
        # process renders: workers compete with torch's threads for the cores (rendering in-process cost
        # 2% of pre-training img/s on 2 cores, 1-4 workers 24-34%).
        on_gpu = device.type == "cuda"
        rendered = source.device_batches(batches, device, num_workers) if on_gpu else map(source.render, batches)
        for images, start in zip(rendered, starts):
            yield images, order[start : start + size]

    @property
    def digest(self) -> str:
        return self.source.digest


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run the generate_synthetic stage first (dvc repro)")
    try:
        manifest = json.loads(path.read_text())
        _ = [c["name"] for c in manifest["classes"]]  # the layout check: every class has a name
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the manifest's layout
        raise UserError(damaged_message(path, "synthetic manifest", type(exc).__name__)) from None
    return manifest


def load_shards(root: Path, manifest: dict, img_size: int, num_workers: int = 2) -> torch.Tensor:
    """uint8 N x 3 x S x S from the shards, in flat index order, resized by a thread pool."""
    total = len(manifest["classes"]) * manifest["images_per_class"]
    out = torch.empty((total, 3, img_size, img_size), dtype=torch.uint8)
    done = 0
    for shard in progress_bar(manifest["shards"], desc="load shards", unit="shard"):
        try:
            images = np.load(root / shard["file"], mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(damaged_message(root / shard["file"], "synthetic shard", type(exc).__name__)) from None
        chunks = [images[k : k + 1024] for k in range(0, len(images), 1024)]
        # PIL releases the GIL while resizing, so threads give real parallelism here.
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for fitted in pool.map(lambda chunk: fit_gray(np.asarray(chunk), img_size), chunks):
                out[done : done + len(fitted)] = fitted
                done += len(fitted)
    return out


def render_all(source: RenderedImages, num_workers: int = 2) -> torch.Tensor:
    """Every image of `source` (its epoch) in one uint8 tensor, rendered by `num_workers` processes."""
    chunks = worker_tasks(list(range(len(source))), source.images)
    with worker_pool(min(num_workers, default_workers())) as pool:
        rendered = pool.map(source.render, chunks)
        return torch.cat(list(progress_bar(rendered, total=len(chunks), desc="render synthetic set", unit="chunk")))


def load_synthetic(root: Path, img_size: int, num_workers: int = 2, preload_bytes: int = PRELOAD_BYTES) -> ImageSet:
    """The fractal set written by generate_synthetic (classes in manifest order)."""
    manifest = read_manifest(root)
    names = [c["name"] for c in manifest["classes"]]
    store = manifest.get("store", "images")  # manifests before format 2 always had the PNG folder
    fresh = manifest["params"].get("fresh_instances", False)
    if store == "manifest" or fresh:
        source = RenderedImages(ManifestImages(manifest), img_size, fresh=fresh)
        if not fresh and len(source) * 3 * img_size**2 <= preload_bytes:
            return TensorImages(render_all(source, num_workers), source.labels, names)
        return RenderedFractals(source, names, source.labels)
    if store == "shards":
        labels = torch.arange(len(names) * manifest["images_per_class"]) // manifest["images_per_class"]
        return TensorImages(load_shards(root, manifest, img_size, num_workers), labels, names)
    return load_image_folder(root / "images", img_size, 0, num_workers, classes=names)


def load_heldout(root: Path, img_size: int, per_class: int) -> TensorImages:
    """`per_class` images of every category that no pre-training epoch draws (source.HELDOUT_FIRST),
    rendered once into memory, labelled with their true categories (also when training shuffles them)."""
    manifest = read_manifest(root)
    images = ManifestImages(manifest)
    rendered, _ = images.render_systems(images.heldout_systems(per_class))
    labels = torch.arange(len(images.names)).repeat_interleave(per_class)
    return TensorImages(fit_gray(rendered, img_size), labels, images.names)


def shuffle_labels(data: ImageSet, seed: int) -> ImageSet:
    """The same images, each given another image's category (a seeded permutation: every category keeps its
    size, but no longer means a formula): the control that tells formula-driven categories from any pre-training."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(data, labels=data.labels[order])


def synthetic_samples(root: Path, count: int) -> tuple[np.ndarray, list[str]]:
    """(uint8 N x H x W x 3, class names): image 0 of the first `count` categories, as rendered."""
    manifest = read_manifest(root)
    images = ManifestImages(manifest)
    shown = list(range(min(count, len(images.names))))
    rendered, _ = images.render([c * images.per_class for c in shown])
    return np.repeat(rendered[..., None], 3, axis=-1), [images.names[c] for c in shown]
