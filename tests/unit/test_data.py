import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.repo import CIFAR10_CLASSES
from synthvit.config import DataConfig
from synthvit.data.fractals import load_synthetic
from synthvit.data.images import load_archive, load_split, matched_class_folders
from synthvit.errors import UserError


def test_imagefolder_loads_real_cifar_images(small_imagefolder):
    cfg = DataConfig(name="imagefolder", root=str(small_imagefolder))
    train = load_split(cfg, "train", img_size=32)
    test = load_split(cfg, "test", img_size=32)
    assert train.images.shape == (60, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (30, 3, 32, 32)
    assert train.classes == sorted(CIFAR10_CLASSES)
    assert torch.bincount(train.labels).tolist() == [6] * 10
    # Real photos, not blank tensors: pixels spread over the range.
    assert train.images.float().std() > 30
    # The decoded pixels are the JPEG's own (32x32 source, no resize).
    first = np.asarray(Image.open(train.paths[0]).convert("RGB"))
    assert np.array_equal(train.images[0].permute(1, 2, 0).numpy(), first)


def test_imagefolder_per_class_limit_and_resize(small_imagefolder):
    cfg = DataConfig(name="imagefolder", root=str(small_imagefolder), train_per_class=2)
    train = load_split(cfg, "train", img_size=48)
    assert train.images.shape == (20, 3, 48, 48)


def test_imagefolder_any_size_and_mode(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 80), dtype=np.uint8), "L").save(tmp_path / "train/a/gray.png")
    Image.fromarray(rng.integers(0, 255, (120, 40, 4), dtype=np.uint8), "RGBA").save(tmp_path / "train/b/rgba.png")
    Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8) > 128).save(tmp_path / "test/a/bits.bmp")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "test/b/big.jpg")
    train = load_split(DataConfig(name="imagefolder", root=str(tmp_path)), "train", img_size=16)
    test = load_split(DataConfig(name="imagefolder", root=str(tmp_path)), "test", img_size=16)
    assert train.images.shape == (2, 3, 16, 16) and test.images.shape == (2, 3, 16, 16)
    # Grayscale is replicated into three equal channels.
    gray = train.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_imagefolder_errors_name_the_problem(tmp_path, small_imagefolder):
    with pytest.raises(UserError, match=r"data.root=.*no such folder"):
        matched_class_folders(tmp_path / "missing")
    (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no test/ folder"):
        matched_class_folders(tmp_path / "only_train")
    (small_imagefolder / "test" / "cat").rename(small_imagefolder / "test" / "kitten")
    with pytest.raises(
        UserError, match=r"class folders differ \(only in train: \['cat'\]; only in test: \['kitten'\]\)"
    ):
        matched_class_folders(small_imagefolder)


def test_imagefolder_class_case_can_be_ignored(small_imagefolder):
    (small_imagefolder / "test" / "cat").rename(small_imagefolder / "test" / "CAT")
    (small_imagefolder / "train" / "dog").rename(small_imagefolder / "train" / "Dog")
    exact = DataConfig(name="imagefolder", root=str(small_imagefolder))
    with pytest.raises(UserError, match="set data.ignore_class_case=true: they differ only in case"):
        load_split(exact, "test", img_size=32)
    relaxed = DataConfig(name="imagefolder", root=str(small_imagefolder), ignore_class_case=True)
    train, test = load_split(relaxed, "train", img_size=32), load_split(relaxed, "test", img_size=32)
    assert train.classes == test.classes  # the train spelling names each class in both splits
    assert "Dog" in train.classes and "CAT" not in test.classes and "cat" in test.classes
    cat = train.classes.index("cat")
    assert {p.split("/")[-2] for p, label in zip(test.paths, test.labels.tolist()) if label == cat} == {"CAT"}
    assert torch.bincount(test.labels).tolist() == [3] * 10
    (small_imagefolder / "train" / "DOG").mkdir()
    with pytest.raises(UserError, match=r"folders \['DOG', 'Dog'\] differ only in case"):
        load_split(relaxed, "train", img_size=32)


def test_corrupt_image_is_named(small_imagefolder):
    bad = small_imagefolder / "train" / "cat" / "zz_broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match="zz_broken.jpg"):
        load_split(DataConfig(name="imagefolder", root=str(small_imagefolder)), "train", img_size=32)


def write_tiny_cifar10(root, per_batch=4):
    """A CIFAR-10 archive in torchvision's own layout, with known pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [(b + i) % 10 for i in range(per_batch)]
        data = np.stack([np.full(3072, 10 * b + i, dtype=np.uint8) for i in range(per_batch)])
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)


def test_cifar10_archive_that_fails_torchvisions_md5_check_names_the_fix(tmp_path):
    # torchvision reads the archive and checks every file's MD5: a damaged or partial copy (here, files
    # in the right layout but not the real ones) is one line saying what to delete.
    write_tiny_cifar10(tmp_path)
    with pytest.raises(
        UserError, match=r"the cifar10 copy in .*cifar-10-batches-py is incomplete or damaged .*delete it"
    ):
        load_archive("cifar10", tmp_path, "train", 32, download=False, per_class=0)


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(UserError, match="holds no cifar-10-batches-py"):
        load_archive("cifar10", tmp_path, "train", 32, download=False, per_class=0)


def test_synthetic_needs_manifest(tmp_path):
    with pytest.raises(UserError, match="run the generate_synthetic stage"):
        load_synthetic(tmp_path, 32)


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for dim in array.shape:
            f.write(int(dim).to_bytes(4, "big"))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_raw_format_becomes_three_channels(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 5), ("t10k", 2)):
        images = np.stack([np.full((28, 28), 50 * i, dtype=np.uint8) for i in range(count)])
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, 2049)
    train = load_split(DataConfig(name="mnist", root=str(tmp_path), download=False), "train", 32)
    assert train.images.shape == (5, 3, 32, 32) and train.classes == [str(d) for d in range(10)]
    assert train.labels.tolist() == [0, 1, 2, 3, 4]
    assert train.images[2].float().mean().round() == 100  # grey level kept, three equal channels
    assert torch.equal(train.images[2][0], train.images[2][1])
    assert len(load_split(DataConfig(name="mnist", root=str(tmp_path), download=False), "test", 28)) == 2


def test_archive_missing_names_dataset_and_fix(tmp_path):
    with pytest.raises(UserError, match=r"mnist not found: .* holds no MNIST/raw/; set data.download=true"):
        load_split(DataConfig(name="mnist", root=str(tmp_path), download=False), "train", 32)


def test_relative_data_root_is_the_repositorys_in_a_queued_experiment(small_imagefolder, tmp_path, monkeypatch):
    """A queued experiment runs in a temporary copy without data/; DVC_ROOT names the real repository."""
    repo = small_imagefolder.parent
    elsewhere = tmp_path / "queued-copy"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    cfg = DataConfig(name="imagefolder", root=small_imagefolder.name, test_per_class=1)
    assert len(load_split(cfg, "test", img_size=32)) == 10
    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(UserError, match="no such folder"):
        load_split(cfg, "test", img_size=32)
