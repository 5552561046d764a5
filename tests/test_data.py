"""Tests for evaluators.data: real Fashion-MNIST (skipped when the Debian package is absent), synthetic IDX
files, ImageFolder trees built in tmp_path, and the error paths (no network is ever touched)."""

from __future__ import annotations

import gzip
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluators import data
from evaluators.data import (
    DATASETS,
    DataInfo,
    DatasetNotFoundError,
    Split,
    check_dataset,
    fashion_mnist,
    load_splits,
    source,
)
from evaluators.data.holdout import holdout
from evaluators.data.source import SOURCES
from evaluators.data.split import crop_flip

FMNIST = data.FASHION_MNIST_SYSTEM_DIR
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FMNIST} (apt-get install dataset-fashion-mnist)",
)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload, compresslevel=1))
    else:
        path.write_bytes(payload)


def _write_fake_fashion(directory: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> dict:
    """Tiny IDX files: image i is filled with value i % 256, label i % 10."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (np.arange(n) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801)
        arrays[prefix] = (images, labels)
    return arrays


def _read_idx_reference(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any connection attempt; record urlopen calls."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("network disabled in tests")

    def refuse_connect(self, *args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist():
    return load_splits("fashion-mnist")


@needs_fmnist
def test_fashion_mnist_sizes_and_info(fmnist):
    info, splits = fmnist
    assert isinstance(info, DataInfo)
    assert info.name == "fashion-mnist" and info.num_classes == 10 and info.native_resolution == 28
    assert info.mean == (0.2860,) * 3 and info.std == (0.3530,) * 3
    assert info.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert {k: len(v) for k, v in splits.items()} == info.sizes
    assert check_dataset("fashion-mnist") == info
    # stratified: 600 val images per class, and every prefix of train/val is class-balanced
    assert torch.bincount(splits["val"].labels).tolist() == [600] * 10
    assert torch.bincount(splits["train"].labels[:1000]).tolist() == [100] * 10
    assert splits["train"].images.dtype == torch.uint8 and splits["train"].images.shape == (54000, 1, 28, 28)


@needs_fmnist
def test_fashion_mnist_cached_in_process(fmnist):
    info, splits = load_splits("fashion-mnist")
    assert splits is fmnist[1]
    misses = source.read_arrays.cache_info().misses
    _, other = load_splits("fashion-mnist", val_fraction=0.2)
    assert (len(other["train"]), len(other["val"]), len(other["test"])) == (48000, 12000, 10000)
    assert source.read_arrays.cache_info().misses == misses  # another hold-out, but the gz files are not re-read


@needs_fmnist
def test_fashion_mnist_val_disjoint_from_train_and_test_untouched(fmnist):
    _, splits = fmnist
    raw_train = _read_idx_reference(FMNIST / "train-images-idx3-ubyte.gz").reshape(60000, -1)
    raw_test = _read_idx_reference(FMNIST / "t10k-images-idx3-ubyte.gz")
    raw_test_labels = _read_idx_reference(FMNIST / "t10k-labels-idx1-ubyte.gz")

    raw_labels = torch.from_numpy(_read_idx_reference(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64))
    train_idx, val_idx = holdout(raw_labels, 0.1)
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(60000))
    # train + val is exactly the official training set, as a multiset of images
    held = torch.cat([splits["train"].images, splits["val"].images]).reshape(60000, -1).numpy()

    def rows(a: np.ndarray) -> np.ndarray:
        return np.sort(np.ascontiguousarray(a).view(f"V{a.shape[1]}").ravel())

    assert np.array_equal(rows(held), rows(raw_train))
    # the official test split: same images, same labels, same order
    assert np.array_equal(splits["test"].images[:, 0].numpy(), raw_test)
    assert np.array_equal(splits["test"].labels.numpy(), raw_test_labels.astype(np.int64))


@needs_fmnist
def test_fashion_mnist_split_does_not_depend_on_trial_seed(fmnist):
    labels = fmnist[1]["train"].labels
    torch.manual_seed(12345)  # global RNG state must not matter
    a = holdout(torch.arange(100) % 10, 0.1)
    torch.manual_seed(999)
    b = holdout(torch.arange(100) % 10, 0.1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(load_splits("fashion-mnist")[1]["train"].labels, labels)


@needs_fmnist
@pytest.mark.parametrize("resolution", [32, 28, 20])
def test_fashion_mnist_batches_shape_and_normalisation(fmnist, resolution):
    _, splits = fmnist
    for train in (True, False):
        x, y = next(splits["train"].batches(64, resolution, train=train, seed=0))
        assert x.shape == (64, 3, resolution, resolution) and x.dtype == torch.float32
        assert y.shape == (64,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey repeated to 3 channels
        assert x.is_contiguous()
        assert float(x.min()) >= -0.2860 / 0.3530 - 1e-4 and float(x.max()) <= (1 - 0.2860) / 0.3530 + 1e-4
    # over the whole test set the normalised pixels are roughly standardised
    x = torch.cat([b for b, _ in splits["test"].batches(2000, 28, train=False, seed=0)])
    assert x.shape[0] == 10000
    assert abs(float(x.mean())) < 0.02 and 0.95 < float(x.std()) < 1.05


@needs_fmnist
def test_fashion_mnist_batches_deterministic_per_seed(fmnist):
    train = fmnist[1]["train"]

    def epoch(seed):
        return list(train.batches(100, 32, train=True, seed=seed, limit=500))

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert len(a) == 5
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    # limit: the same class-balanced subset for every seed, in a different order
    labels_a, labels_c = torch.cat([y for _, y in a]), torch.cat([y for _, y in c])
    assert not torch.equal(labels_a, labels_c)
    assert torch.equal(labels_a.sort().values, train.labels[:500].sort().values)
    assert torch.bincount(labels_a).tolist() == [50] * 10


@needs_fmnist
def test_fashion_mnist_eval_order_and_drop_last(fmnist):
    val = fmnist[1]["val"]
    a = list(val.batches(128, 32, train=False, seed=0, limit=1000))
    b = list(val.batches(128, 32, train=False, seed=123, limit=1000))
    assert [len(y) for _, y in a] == [128] * 7 + [104]  # evaluation keeps the last partial batch
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))  # seed is irrelevant
    assert torch.equal(torch.cat([y for _, y in a]), val.labels[:1000])  # stored order
    # evaluation does no augmentation: pixels are the stored ones, normalised
    expected = (val.images[:128].float() / 255 - 0.2860) / 0.3530
    x_native, _ = next(val.batches(128, 28, train=False, seed=0))  # native size: no resize either
    assert torch.allclose(x_native[:, :1], expected, atol=1e-5)
    # training drops the last partial batch
    assert [len(y) for _, y in val.batches(128, 32, train=True, seed=0, limit=1000)] == [128] * 7
    assert sum(len(y) for _, y in val.batches(128, 32, train=True, seed=0, limit=1000, drop_last=False)) == 1000


# ---------------------------------------------------------------------------------------------------------------
# augmentation on tensors


def _window(x: torch.Tensor, dy: int, dx: int, h: int, w: int, flip: bool) -> torch.Tensor:
    crop = x[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


def test_crop_flip_is_a_padded_shifted_maybe_flipped_copy():
    b, c, h, w, pad = 16, 2, 8, 8, 2
    x = (torch.arange(b * c * h * w) % 250 + 1).to(torch.uint8).view(b, c, h, w)
    out = crop_flip(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (pad, pad, pad, pad))
    seen_flip = seen_shift = False
    for i in range(b):
        candidates = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(out[i], _window(padded[i], dy, dx, h, w, flip))
        ]
        assert candidates, f"sample {i} is not a crop of its padded input"
        seen_flip |= any(f for _, _, f in candidates)
        seen_shift |= any((dy, dx) != (pad, pad) for dy, dx, _ in candidates)
    assert seen_flip and seen_shift
    assert torch.equal(out, crop_flip(x, pad, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------------------------------------------------------
# synthetic IDX files: layouts and corruption


def test_fashion_from_data_dir_gz(tmp_path):
    arrays = _write_fake_fashion(tmp_path, n_train=40, n_test=20)
    info, splits = load_splits("fashion-mnist", data_dir=str(tmp_path), val_fraction=0.25)
    assert info.sizes == {"train": 30, "val": 10, "test": 20}
    assert torch.bincount(splits["val"].labels).tolist() == [1] * 10
    assert np.array_equal(splits["test"].images[:, 0].numpy(), arrays["t10k"][0])


def test_fashion_from_torchvision_layout_uncompressed(tmp_path):
    _write_fake_fashion(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10, gz=False)
    info, splits = load_splits("fashion-mnist", data_dir=str(tmp_path))
    assert info.sizes == {"train": 27, "val": 3, "test": 10}
    x, y = next(splits["test"].batches(10, 16, train=False, seed=0))
    assert x.shape == (10, 3, 16, 16) and y.tolist() == list(range(10))


def test_fashion_bad_magic_is_a_clear_error(tmp_path):
    _write_fake_fashion(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(40, np.uint8), 0x802)
    with pytest.raises(ValueError, match=r"corrupt IDX file .*train-labels-idx1-ubyte\.gz.*magic"):
        check_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_fashion_truncated_file_is_a_clear_error(tmp_path):
    _write_fake_fashion(tmp_path, n_train=50)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"corrupt IDX file .*train-images-idx3-ubyte\.gz"):
        load_splits("fashion-mnist", data_dir=str(tmp_path))


def test_fashion_missing_data_dir(tmp_path, no_network):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset("fashion-mnist", data_dir=str(missing))
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(missing) in message and str(missing / "FashionMNIST" / "raw") in message
    assert data.FASHION_MNIST_INSTALL in message and "--data-dir" in message and "--download" in message
    assert data.FASHION_MNIST_INSTALL == "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
    assert "\n" not in message
    assert str(data.FASHION_MNIST_SYSTEM_DIR) not in message  # an explicit data_dir is not second-guessed
    with pytest.raises(DatasetNotFoundError):
        load_splits("fashion-mnist", data_dir=str(missing))
    assert no_network == []


def test_fashion_missing_default_locations(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("SCSA_SEARCH_DATA", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist") as err:
        check_dataset("fashion-mnist")
    assert str(tmp_path / "system") in str(err.value) and str(tmp_path / "cache") in str(err.value)
    assert no_network == []


def test_fashion_download_failure_is_dataset_not_found(tmp_path, no_network, caplog):
    with caplog.at_level("WARNING", logger="evaluators.data"):
        with pytest.raises(DatasetNotFoundError, match="download") as err:
            check_dataset("fashion-mnist", data_dir=str(tmp_path), download=True)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert any("downloading Fashion-MNIST" in r.getMessage() for r in caplog.records)
    assert no_network  # it did try (and the test network refused)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR and names


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_without_download_never_touches_network(tmp_path, no_network, name):
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset(name, data_dir=str(tmp_path))
    message = str(err.value)
    assert name in message and str(tmp_path) in message and "download" in message and "\n" not in message
    with pytest.raises(DatasetNotFoundError):
        load_splits(name, data_dir=str(tmp_path))
    assert no_network == []
    assert not any(tmp_path.iterdir())  # nothing written


def test_cifar_download_failure_is_dataset_not_found(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError, match="cifar10 download .* failed"):
        check_dataset("cifar10", data_dir=str(tmp_path), download=True)
    assert no_network


def test_cifar_loads_from_torchvision_layout(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    info = check_dataset("cifar10", data_dir=str(tmp_path))  # cheap: file presence only
    assert info.sizes == {"train": 45000, "val": 5000, "test": 10000} and info.native_resolution == 32
    # torchvision's md5 check rejects these fakes: a clear DatasetNotFoundError, not a RuntimeError
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        load_splits("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        check_dataset("mnist")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_splits("imagenet")
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "imagefolder")


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        check_dataset("fashion-mnist", val_fraction=1.0)


def test_split_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="labels"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3), mean=(0,) * 3, std=(1,) * 3)
    split = Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="batch_size"):
        next(split.batches(0, 4, train=False, seed=0))


def test_a_dataset_is_one_registered_source(monkeypatch):
    """Adding a dataset means adding a source: the entry points find it by name, nothing else changes."""
    from evaluators.data.source import ArraySource, register

    monkeypatch.setattr(source, "SOURCES", dict(SOURCES))  # registered for this test only
    monkeypatch.setattr(data, "SOURCES", source.SOURCES)

    @register
    class Stripes(ArraySource):
        name = "stripes"

        def check(self, data_dir, download, val_fraction):
            return DataInfo(self.name, 2, self.mean, self.std, 4, {"train": 18, "val": 2, "test": 4})

        def location(self, data_dir):
            return Path("/nowhere")

        def read(self, location):
            images = torch.arange(2, dtype=torch.uint8).repeat_interleave(12).view(24, 1, 1, 1).expand(24, 1, 4, 4)
            labels = torch.arange(2).repeat_interleave(12)
            return {"train": (images[:20].contiguous(), labels[:20]), "test": (images[20:].contiguous(), labels[20:])}

    info, splits = load_splits("stripes")
    assert info.num_classes == 2 and {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 2, "test": 4}
    assert torch.bincount(splits["val"].labels).tolist() == [1, 1]  # the shared, stratified hold-out
