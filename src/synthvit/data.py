"""Datasets as in-memory uint8 tensors.

Every dataset is decoded once into an `ImageSet` (N x 3 x S x S uint8, S = model.img_size)
so training augments whole batches on the device instead of running per-sample Python.
An image folder too large for memory can instead be streamed (data.loader=stream): the
training split keeps only file paths, and a DataLoader's worker processes decode each
batch; the batches then take the same device augmentation path.
Sources: torchvision's CIFAR-10 archive, an ImageFolder tree (`root/train/<class>/`,
`root/test/<class>/`, any size or mode), and the synthetic fractal set (synthetic_set.py: rendered from its manifest, or stored).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from synthvit.config import DATASETS, DataConfig
from synthvit.damage import rebuild_hint
from synthvit.errors import UserError
from synthvit.files import user_path
from synthvit.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ImageSet:
    images: torch.Tensor | None  # uint8, N x 3 x S x S; None when streamed from `paths`
    labels: torch.Tensor  # int64, N
    classes: list[str]
    paths: list[str] | None = None  # source files, when the set came from files
    img_size: int = 0  # decode size of a streamed set
    # A streamed set rendered from formulas (synthetic_set.RenderedImages): a Dataset with
    # for_epoch(epoch) and a digest, batches read through its __getitems__.
    source: object | None = None

    @property
    def streamed(self) -> bool:
        return self.images is None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_split(cfg: DataConfig, split: str, img_size: int) -> ImageSet:
    """The train or test split of the dataset that params.yaml names."""
    per_class = cfg.train_per_class if split == "train" else cfg.test_per_class
    if cfg.name in ARCHIVE_FOLDERS:
        return load_archive(cfg.name, user_path(cfg.root), split, img_size, cfg.download, per_class)
    if cfg.name == "imagefolder":
        root = user_path(cfg.root)
        folders = matched_class_folders(root, cfg.ignore_class_case)
        if split == "train" and cfg.loader == "stream":
            paths, labels = list_images(root / split, folders[split], per_class)
            return ImageSet(None, torch.tensor(labels, dtype=torch.int64), folders["train"], [str(p) for p in paths], img_size)
        data = load_image_folder(root / split, img_size, per_class, cfg.num_workers, classes=folders[split])
        data.classes = folders["train"]  # test/ may spell a class differently (ignore_class_case)
        return data
    raise UserError(f"params.yaml: data.name={cfg.name!r} is invalid: one of {', '.join(DATASETS)}")


def split_validation(data: ImageSet, fraction: float, seed: int, num_workers: int = 2) -> tuple[ImageSet, ImageSet]:
    """(train, validation): a seeded `fraction` of each class held out for model selection."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in range(data.num_classes):
        members = torch.nonzero(data.labels == label).flatten()
        count = round(len(members) * fraction)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[torch.cat(held)] = True
    if is_val.all() or not is_val.any():
        raise UserError(f"params.yaml: data.val_fraction={fraction} is invalid: it leaves no training or no validation images")

    def subset(mask):
        paths = [p for p, keep in zip(data.paths, mask.tolist()) if keep] if data.paths else None
        images = data.images[mask] if data.images is not None else None
        return ImageSet(images, data.labels[mask], data.classes, paths, data.img_size)

    train, val = subset(~is_val), subset(is_val)
    if val.streamed:  # scored every epoch: decoded once, like any evaluation set
        val.images = decode_files(val.paths, val.img_size, num_workers, desc="decode validation")
    return train, val


# ---- ImageFolder -------------------------------------------------------------------


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def matched_class_folders(root: Path, ignore_case: bool = False) -> dict[str, list[str]]:
    """{"train": folders, "test": folders}, the same classes in the same order in both splits.

    Fails early, with the fix, on a root that is not `root/{train,test}/<class>/`. With
    ignore_case, `Forest/` in train matches `forest/` in test; the train spelling names the class.
    """
    if not root.is_dir():
        raise UserError(
            f"params.yaml: data.root={str(root)!r} is invalid: no such folder; "
            "point it at a folder holding train/<class>/ and test/<class>/"
        )
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(
                f"params.yaml: data.root={str(root)!r} is invalid: it has no {split}/ folder; "
                "expected root/train/<class>/ and root/test/<class>/"
            )
    train, test = class_folders(root / "train"), class_folders(root / "test")
    if not train:
        raise UserError(f"params.yaml: data.root={str(root)!r} is invalid: train/ holds no class folders")
    key = str.casefold if ignore_case else str
    if ignore_case:
        for split, names in (("train", train), ("test", test)):
            clashes = sorted(n for n in names if [key(m) for m in names].count(key(n)) > 1)
            if clashes:
                raise UserError(f"params.yaml: data.ignore_class_case=true is invalid for {root / split}: "
                                f"folders {clashes} differ only in case; merge or rename them")
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


def list_images(folder: Path, classes: list[str], per_class: int) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{folder / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder")
        if per_class:
            files = files[:per_class]
        paths += files
        labels += [label] * len(files)
    return paths, labels


def decode_image(path: Path, img_size: int) -> np.ndarray:
    """RGB uint8 HxWx3 at img_size: resize the short side, centre-crop the long one."""
    try:
        with Image.open(path) as image:
            return fit_image(image, img_size)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; {rebuild_hint(path)}") from None


def fit_image(image: Image.Image, img_size: int, mode: str = "RGB") -> np.ndarray:
    """uint8 HxWx3 (mode "L": HxW) at img_size: resize the short side, centre-crop the long one."""
    image = image.convert(mode)
    scale = img_size / min(image.size)
    width, height = max(img_size, round(image.width * scale)), max(img_size, round(image.height * scale))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - img_size) // 2, (height - img_size) // 2
    image = image.crop((left, top, left + img_size, top + img_size))
    return np.asarray(image, dtype=np.uint8)


def decode_files(paths: list, img_size: int, num_workers: int = 2, desc: str = "decode") -> torch.Tensor:
    """uint8 N x 3 x S x S from image files, decoded by a thread pool."""
    images = np.empty((len(paths), img_size, img_size, 3), dtype=np.uint8)

    def decode_into(i: int) -> None:
        images[i] = decode_image(Path(paths[i]), img_size)

    # PIL releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for _ in progress_bar(pool.map(decode_into, range(len(paths))), total=len(paths), desc=desc):
            pass
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    folder: Path, img_size: int, per_class: int = 0, num_workers: int = 2, classes: list[str] | None = None
) -> ImageSet:
    classes = classes if classes is not None else class_folders(folder)
    paths, labels = list_images(folder, classes, per_class)
    return ImageSet(
        images=decode_files(paths, img_size, num_workers, desc=f"decode {folder.name}"),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=list(classes),
        paths=[str(p) for p in paths],
        img_size=img_size,
    )


class StreamedImages(torch.utils.data.Dataset):
    """A streamed ImageSet for a DataLoader: item i is (uint8 3 x S x S, label), decoded on demand."""

    def __init__(self, data: ImageSet):
        self.paths, self.labels, self.img_size = data.paths, data.labels, data.img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = decode_image(Path(self.paths[i]), self.img_size)
        return torch.from_numpy(image).permute(2, 0, 1), self.labels[i]


# ---- CIFAR-10, CIFAR-100, MNIST (torchvision's archives) ------------------------------


# Folder each torchvision archive unpacks into, under data.root.
ARCHIVE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw"}


def load_archive(name: str, root: Path, split: str, img_size: int, download: bool, per_class: int) -> ImageSet:
    """CIFAR-10, CIFAR-100 or MNIST in torchvision's layout under root, downloaded first if allowed."""
    if not (root / ARCHIVE_FOLDERS[name]).is_dir():
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".download.lock"), timeout=3600):  # queued experiments share the root
            if not (root / ARCHIVE_FOLDERS[name]).is_dir():
                download_archive(name, root, download)
    images, labels, classes = read_archive(name, root, split)
    if per_class:
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(len(classes))]).sort().values
        images, labels = images[keep], labels[keep]
    if img_size != images.shape[-1]:
        images = resize_uint8(images, img_size)
    return ImageSet(images=images, labels=labels, classes=classes)


def archive_dataset(name: str):
    from torchvision import datasets

    return {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "mnist": datasets.MNIST}[name]


def read_archive(name: str, root: Path, split: str):
    """uint8 N x 3 x H x W images, int64 labels and class names from torchvision's dataset class,
    which also checks the files (MD5 for CIFAR). MNIST's grey digits repeat into three channels."""
    try:
        dataset = archive_dataset(name)(str(root), train=split == "train", download=False)
    except RuntimeError as exc:
        raise UserError(f"the {name} copy in {root / ARCHIVE_FOLDERS[name]} is incomplete or damaged ({exc}); "
                        "delete it to download again") from None
    images = torch.as_tensor(dataset.data)
    if name == "mnist":
        return images.unsqueeze(1).repeat(1, 3, 1, 1).contiguous(), dataset.targets.to(torch.int64), [str(d) for d in range(10)]
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images.permute(0, 3, 1, 2).contiguous(), labels, list(dataset.classes)


def download_archive(name: str, root: Path, download: bool) -> None:
    """torchvision downloads, checks the MD5 and unpacks; offline this fails with the way out."""
    folder = ARCHIVE_FOLDERS[name]
    if not download:
        raise UserError(
            f"{name} not found: params.yaml data.root={str(root)!r} holds no {folder}/; "
            "set data.download=true, or use data.name=imagefolder with data.root at a local copy"
        )
    try:
        for train in (True, False):
            archive_dataset(name)(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise UserError(
            f"could not download {name} into {root} ({type(exc).__name__}: {exc}). Offline? Use a local copy: "
            "`-S data.name=imagefolder -S data.root=PATH` with PATH/train/<class>/ and PATH/test/<class>/ "
            f"(e.g. ../shared/datasets/cifar10), or put {folder}/ in data.root"
        ) from None


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk].float()
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[start : start + chunk] = batch.round().clamp(0, 255).to(torch.uint8)
    return out
