"""Labelled image sets, and the real datasets they are read from.

An `ImageSet` is what training and scoring read: labels, class names, and `batches`,
the uint8 N x 3 x S x S batches of given indices on the training device. Each way of
storing the pixels is one class, so the training loop has no branch on storage:
- `TensorImages`: decoded once into one uint8 tensor (every dataset by default; batches
  are gathers from it, on the device);
- `FileImages`: an image folder too large for memory (data.loader=stream): only the file
  paths are kept, and DataLoader workers decode each batch;
- `fractals.RenderedFractals`: the fractal set rendered from its formulas batch by batch.

Sources: torchvision's CIFAR-10/100 and MNIST archives, and image folders
(`root/train/<class>/`, `root/test/<class>/`, any size or mode). Every image is decoded
the same way (`fit_image`: the largest centred square, resized to S x S), with bounded
memory whatever its shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision import datasets

from synthvit.config import DATASETS, DataConfig
from synthvit.errors import UserError, rebuild_hint
from synthvit.files import user_path
from synthvit.models import unreachable
from synthvit.runtime import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Decoding is refused above this many pixels: a photo has tens of millions at most, and a
# decompression bomb (a tiny file that decodes to gigabytes) is refused before it is decoded.
MAX_PIXELS = 128_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow raises DecompressionBombError above twice this; we check first


class ImageSet:
    """Labelled images: `labels` (int64, N), `classes` (names by label), `digest` (what the pixels and
    labels depend on, for the resume fingerprint) and `batches(order, starts, size, device, num_workers,
    epoch)`: (uint8 images on `device`, their indices) for each batch `order[start:start + size]`, in order."""

    labels: torch.Tensor
    classes: list[str]
    digest: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def on(self, device: torch.device) -> ImageSet:
        """The set ready to give batches on `device` (an in-memory set moves its tensor there once)."""
        return self


@dataclasses.dataclass
class TensorImages(ImageSet):
    """Images decoded into one uint8 N x 3 x S x S tensor."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str] | None = None  # the files they came from, when they came from files

    def on(self, device: torch.device) -> TensorImages:
        return dataclasses.replace(self, images=self.images.to(device))

    def batches(self, order, starts, size, device, num_workers, epoch=1):
        for start in starts:  # one gather per batch, on the device
            idx = order[start : start + size]
            yield self.images[idx], idx

    @property
    def digest(self) -> str:
        return tensor_digest(self.images, self.labels)

    def subset(self, mask: torch.Tensor) -> TensorImages:
        paths = [p for p, keep in zip(self.paths, mask.tolist()) if keep] if self.paths else None
        return TensorImages(self.images[mask], self.labels[mask], self.classes, paths)

    def in_memory(self, num_workers: int = 2) -> TensorImages:
        return self


@dataclasses.dataclass
class FileImages(ImageSet):
    """Image files decoded batch by batch by DataLoader workers (an image folder too large for memory)."""

    paths: list[str]
    labels: torch.Tensor
    classes: list[str]
    img_size: int

    def batches(self, order, starts, size, device, num_workers, epoch=1):
        on_host = order.tolist()  # the sampler needs host indices: one copy per epoch
        loader = worker_batches([on_host[start : start + size] for start in starts], self.decode, device, num_workers)
        for images, start in zip(loader, starts):
            yield images.to(device, non_blocking=True), order[start : start + size]

    def decode(self, positions: list[int]) -> torch.Tensor:
        """uint8 N x 3 x S x S of these files (in a DataLoader worker)."""
        images = [decode_image(Path(self.paths[i]), self.img_size) for i in positions]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    @property
    def digest(self) -> str:
        """The labels, and each file's path, size and modification time (reading every file would cost an epoch)."""
        sha = hashlib.sha256(tensor_digest(self.labels).encode())
        for path in self.paths:
            stat = os.stat(path)
            sha.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())  # any file name
        return sha.hexdigest()

    def subset(self, mask: torch.Tensor) -> FileImages:
        paths = [p for p, keep in zip(self.paths, mask.tolist()) if keep]
        return FileImages(paths, self.labels[mask], self.classes, self.img_size)

    def in_memory(self, num_workers: int = 2, desc: str = "decode validation") -> TensorImages:
        """Every file decoded into one tensor by a thread pool."""
        images = np.empty((len(self), self.img_size, self.img_size, 3), dtype=np.uint8)

        def decode_into(i: int) -> None:
            images[i] = decode_image(Path(self.paths[i]), self.img_size)

        # PIL releases the GIL while decoding, so threads give real parallelism here.
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for _ in progress_bar(pool.map(decode_into, range(len(self))), total=len(self), desc=desc):
                pass
        decoded = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return TensorImages(decoded, self.labels, self.classes, self.paths)


def worker_batches(batches: list[list[int]], make, device: torch.device, num_workers: int) -> DataLoader:
    """A DataLoader whose `num_workers` workers each call `make(positions)` for a batch of positions, in order."""
    # Its own generator: a DataLoader seeds its workers from the global one otherwise, which
    # would shift the augmentation draws (decoding and drawing fractals take none from it).
    return DataLoader(
        batches,  # an item is a batch: `make` builds it, no collation
        batch_size=None,
        num_workers=num_workers,
        collate_fn=make,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def tensor_digest(*tensors: torch.Tensor) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def load_split(cfg: DataConfig, split: str, img_size: int) -> TensorImages | FileImages:
    """The train or test split of the dataset that params.yaml names."""
    per_class = cfg.train_per_class if split == "train" else cfg.test_per_class
    if cfg.name in ARCHIVE_FOLDERS:
        return load_archive(cfg.name, user_path(cfg.root), split, img_size, cfg.download, per_class)
    if cfg.name == "imagefolder":
        root = user_path(cfg.root)
        folders = matched_class_folders(root, cfg.ignore_class_case)
        # test/ may spell a class differently (ignore_class_case): the train spelling names it
        files = image_files(root / split, folders[split], img_size, per_class, classes=folders["train"])
        if split == "train" and cfg.loader == "stream":
            return files
        return files.in_memory(cfg.num_workers, desc=f"decode {split}")
    raise UserError(f"params.yaml: data.name={cfg.name!r} is invalid: one of {', '.join(DATASETS)}")


def split_validation(
    data: TensorImages | FileImages, fraction: float, seed: int, num_workers: int = 2
) -> tuple[ImageSet, TensorImages]:
    """(train, validation): a seeded `fraction` of each class held out for model selection;
    the validation images are decoded into memory (they are scored every epoch)."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in range(data.num_classes):
        members = torch.nonzero(data.labels == label).flatten()
        count = round(len(members) * fraction)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[torch.cat(held)] = True
    if is_val.all() or not is_val.any():
        raise UserError(
            f"params.yaml: data.val_fraction={fraction} is invalid: it leaves no training or no validation images"
        )
    return data.subset(~is_val), data.subset(is_val).in_memory(num_workers)


# ---- image folders ------------------------------------------------------------------


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def matched_class_folders(root: Path, ignore_case: bool = False) -> dict[str, list[str]]:
    """{"train": folders, "test": folders}, the same classes in the same order in both splits.

    Fails early, with the fix, on a root that is not `root/{train,test}/<class>/`. With
    ignore_case, `Forest/` in train matches `forest/` in test; the train spelling names the class.
    """
    for split in ("", "train", "test"):
        if not (root / split).is_dir():
            raise UserError(
                f"params.yaml: data.root={str(root)!r} is invalid: "
                + (f"it has no {split}/ folder" if split else "no such folder")
                + "; point it at a folder holding train/<class>/ and test/<class>/"
            )
    train, test = class_folders(root / "train"), class_folders(root / "test")
    if len(train) < 2:
        raise UserError(
            f"params.yaml: data.root={str(root)!r} is invalid: train/ holds {len(train)} class folder(s) "
            f"({', '.join(train) or 'none'}); a classifier needs at least 2"
        )
    key = str.casefold if ignore_case else str  # folder names differ: clashes only when case is ignored
    for split, names in (("train", train), ("test", test)):
        clashes = sorted(n for n in names if [key(m) for m in names].count(key(n)) > 1)
        if clashes:
            raise UserError(
                f"params.yaml: data.ignore_class_case=true is invalid for {root / split}: "
                f"folders {clashes} differ only in case; merge or rename them"
            )
    test_by_key = {key(name): name for name in test}
    if sorted(map(key, train)) != sorted(test_by_key):
        only_train = sorted(n for n in train if key(n) not in test_by_key)
        only_test = sorted(n for n in test if key(n) not in set(map(key, train)))
        case_only = sorted(map(str.casefold, train)) == sorted(map(str.casefold, test))
        hint = " or set data.ignore_class_case=true: they differ only in case" if case_only and not ignore_case else ""
        raise UserError(
            f"params.yaml: data.root={str(root)!r} is invalid: train and test class folders differ "
            f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'}); "
            f"give both splits the same class folders{hint}"
        )
    return {"train": train, "test": [test_by_key[key(name)] for name in train]}


def image_files(
    folder: Path, folders: list[str], img_size: int, per_class: int = 0, classes: list[str] | None = None
) -> FileImages:
    """The images in `folder`/<each of `folders`>/ (the first `per_class` of each, 0: all), labelled in
    the order of `folders` and named by `classes` (default: the folders)."""
    paths, labels = [], []
    for label, name in enumerate(folders):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(
                f"{folder / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder"
            )
        if per_class:
            files = files[:per_class]
        paths += map(str, files)
        labels += [label] * len(files)
    return FileImages(paths, torch.tensor(labels, dtype=torch.int64), list(classes or folders), img_size)


def decode_image(path: Path, img_size: int) -> np.ndarray:
    """RGB uint8 S x S x 3 of an image file (`fit_image`); a file that is not an image, or too large, is a UserError."""
    try:
        with Image.open(path) as image:
            return fit_image(image, img_size, source=path)
    except Image.DecompressionBombError:
        raise UserError(
            f"cannot read image {path}: it decodes to more than {2 * MAX_PIXELS:,} pixels "
            "(a decompression bomb?); remove it, or downscale it below the limit"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; {rebuild_hint(path)}") from None


def fit_image(image: Image.Image, img_size: int, mode: str = "RGB", source=None) -> np.ndarray:
    """uint8 S x S x 3 (mode "L": S x S): the largest centred square of the image, resized to S x S.

    Pillow resamples only that square (`box`), so memory stays the size of the input
    whatever its shape: a 1 x 1,000,000 strip is never scaled up to 32 x 32,000,000.
    """
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UserError(
            f"cannot read image {source or 'upload'}: {width} x {height} is {width * height:,} pixels, "
            f"more than the {MAX_PIXELS:,} allowed; downscale it"
        )
    image = image.convert(mode)
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    if (width, height) != (img_size, img_size):
        image = image.resize((img_size, img_size), Image.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def load_image_folder(
    folder: Path, img_size: int, per_class: int = 0, num_workers: int = 2, classes: list[str] | None = None
) -> TensorImages:
    files = image_files(folder, classes if classes is not None else class_folders(folder), img_size, per_class)
    return files.in_memory(num_workers, desc=f"decode {folder.name}")


# ---- CIFAR-10, CIFAR-100, MNIST (torchvision's archives) ------------------------------

# Folder each torchvision archive unpacks into, under data.root.
ARCHIVE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw"}
ARCHIVES = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "mnist": datasets.MNIST}


def archive_present(name: str, root: Path) -> bool:
    return (root / ARCHIVE_FOLDERS[name]).is_dir()


def load_archive(name: str, root: Path, split: str, img_size: int, download: bool, per_class: int) -> TensorImages:
    """CIFAR-10, CIFAR-100 or MNIST in torchvision's layout under root, downloaded first if allowed."""
    if not archive_present(name, root):
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".download.lock"), timeout=3600):  # queued experiments share the root
            if not archive_present(name, root):
                download_archive(name, root, download)
    try:  # torchvision's dataset class checks the files (MD5 for CIFAR)
        dataset = ARCHIVES[name](str(root), train=split == "train", download=False)
    except RuntimeError as exc:
        raise UserError(
            f"the {name} copy in {root / ARCHIVE_FOLDERS[name]} is incomplete or damaged ({exc}); "
            "delete it to download again"
        ) from None
    images, labels = torch.as_tensor(dataset.data), torch.as_tensor(dataset.targets, dtype=torch.int64)
    if name == "mnist":  # grey digits repeat into three channels
        images, classes = images.unsqueeze(1).repeat(1, 3, 1, 1), [str(d) for d in range(10)]
    else:
        images, classes = images.permute(0, 3, 1, 2), list(dataset.classes)
    if per_class:
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(len(classes))]).sort().values
        images, labels = images[keep], labels[keep]
    if img_size != images.shape[-1]:
        images = resize_uint8(images, img_size)
    return TensorImages(images.contiguous(), labels, classes)


def offline_hint(name: str) -> str:
    return (
        "Offline? Use a local copy: `-S data.name=imagefolder -S data.root=PATH` with PATH/train/<class>/ and "
        f"PATH/test/<class>/ (e.g. ../shared/datasets/cifar10), or put {ARCHIVE_FOLDERS[name]}/ in data.root"
    )


def check_available(cfg: DataConfig) -> None:
    """Fail in seconds, with the fix, when the dataset is neither here nor downloadable: before the
    pipeline spends minutes on fractals and pre-training it would fine-tune on nothing."""
    root = user_path(cfg.root)
    if cfg.name == "imagefolder":
        matched_class_folders(root, cfg.ignore_class_case)
        return
    if archive_present(cfg.name, root):
        return
    if not cfg.download:
        download_archive(cfg.name, root, download=False)  # the one-line error for a missing copy
    dataset = ARCHIVES[cfg.name]
    problems = [unreachable(url) for url in getattr(dataset, "mirrors", None) or [dataset.url]]
    if all(problems):
        raise UserError(
            f"{cfg.name} is not in {root} and its download server cannot be reached ({problems[0]}). "
            + offline_hint(cfg.name)
        )


def download_archive(name: str, root: Path, download: bool) -> None:
    """torchvision downloads, checks the MD5 and unpacks; offline this fails with the way out."""
    if not download:
        raise UserError(
            f"{name} not found: params.yaml data.root={str(root)!r} holds no {ARCHIVE_FOLDERS[name]}/; "
            "set data.download=true, or use data.name=imagefolder with data.root at a local copy"
        )
    try:
        ARCHIVES[name](str(root), download=True)  # the whole archive, both splits
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed
        raise UserError(
            f"could not download {name} into {root} ({type(exc).__name__}: {exc}). " + offline_hint(name)
        ) from None


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk].float()
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[start : start + chunk] = batch.round().clamp(0, 255).to(torch.uint8)
    return out
