"""ImageFolder trees as a dataset: layouts, lazy decoding cached per resolution, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluators.data import DatasetNotFoundError, Split, check_dataset, load_splits, split
from evaluators.data.source import SOURCES

COLOURS = {"apple": (255, 0, 0), "leaf": (0, 255, 0), "sky": (0, 0, 255)}
SIZES = [(10, 14), (20, 8), (16, 16), (7, 30), (40, 25)]


def _write_class_folders(root: Path, per_class: int = 5, classes: dict = COLOURS) -> None:
    from PIL import Image

    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", SIZES[i % len(SIZES)], colour).save(root / name / f"{i}.png")


def _dominant_channel(x: torch.Tensor, split: Split) -> torch.Tensor:
    mean = torch.tensor(split.mean).view(1, 3, 1, 1)
    std = torch.tensor(split.std).view(1, 3, 1, 1)
    return (x * std + mean).mean(dim=(2, 3)).argmax(dim=1)



def test_imagefolder_stats_match_timm():
    timm_data = pytest.importorskip("timm.data")
    mean, std = SOURCES["imagefolder"].mean, SOURCES["imagefolder"].std
    assert mean == tuple(timm_data.IMAGENET_DEFAULT_MEAN) and std == tuple(timm_data.IMAGENET_DEFAULT_STD)


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_flat_layout(tmp_path):
    _write_class_folders(tmp_path, per_class=5)
    info, splits = load_splits("imagefolder", data_dir=str(tmp_path), val_fraction=0.2)
    assert info.num_classes == 3 and info.sizes == {"train": 12, "val": 3, "test": 0}
    assert info.mean == SOURCES["imagefolder"].mean
    assert {k: len(v) for k, v in splits.items()} == info.sizes
    assert torch.bincount(splits["val"].labels).tolist() == [1, 1, 1]
    assert set(splits["train"].paths).isdisjoint(splits["val"].paths)
    assert splits["train"].images is None
    for train in (True, False):
        batches = list(splits["train"].batches(5, 24, train=train, seed=0))
        x = torch.cat([b for b, _ in batches])
        y = torch.cat([t for _, t in batches])
        assert x.shape == (10 if train else 12, 3, 24, 24) and x.dtype == torch.float32
        # class folders are sorted: apple (red) = 0, leaf (green) = 1, sky (blue) = 2
        assert torch.equal(_dominant_channel(x, splits["train"]), y)
    assert list(splits["test"].batches(4, 24, train=False, seed=0)) == []


def test_imagefolder_train_val_test_layout(tmp_path):
    _write_class_folders(tmp_path / "train", per_class=4)
    _write_class_folders(tmp_path / "val", per_class=2)
    _write_class_folders(tmp_path / "test", per_class=3, classes={"apple": (255, 0, 0), "sky": (0, 0, 255)})
    info, splits = load_splits("imagefolder", data_dir=str(tmp_path))
    assert info.num_classes == 3 and info.sizes == {"train": 12, "val": 6, "test": 6}
    assert sorted(splits["test"].labels.tolist()) == [0, 0, 0, 2, 2, 2]  # labels follow train's classes
    assert all("/test/" in p for p in splits["test"].paths)
    x, y = next(splits["test"].batches(6, 16, train=False, seed=0))
    assert x.shape == (6, 3, 16, 16) and torch.equal(_dominant_channel(x, splits["test"]), y)
    a = [x for x, _ in splits["train"].batches(4, 16, train=True, seed=3)]
    b = [x for x, _ in splits["train"].batches(4, 16, train=True, seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # decode cache keeps batches identical


def test_imagefolder_decodes_each_file_once_per_resolution(tmp_path, monkeypatch):
    _write_class_folders(tmp_path, per_class=3)
    _, splits = load_splits("imagefolder", data_dir=str(tmp_path), val_fraction=0.34)
    calls = []
    decode = split.decode_image
    monkeypatch.setattr(split, "decode_image", lambda path, resolution: calls.append(path) or decode(path, resolution))
    for seed in range(3):
        list(splits["train"].batches(2, 12, train=True, seed=seed))
    assert len(calls) == len(set(calls)) == len(splits["train"])


def test_imagefolder_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        check_dataset("imagefolder", data_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs data_dir"):
        check_dataset("imagefolder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="class folder") as err:
        check_dataset("imagefolder", data_dir=str(empty))
    assert not isinstance(err.value, FileNotFoundError)


def test_imagefolder_single_class_and_empty_class(tmp_path):
    _write_class_folders(tmp_path / "one", classes={"apple": (255, 0, 0)})
    with pytest.raises(ValueError, match="1 class folder"):
        check_dataset("imagefolder", data_dir=str(tmp_path / "one"))
    _write_class_folders(tmp_path / "two", classes={"apple": (255, 0, 0)})
    (tmp_path / "two" / "nothing").mkdir()
    with pytest.raises(ValueError, match="no valid file"):
        load_splits("imagefolder", data_dir=str(tmp_path / "two"))


def test_imagefolder_inconsistent_layouts(tmp_path):
    _write_class_folders(tmp_path / "a" / "train", per_class=2)
    _write_class_folders(tmp_path / "a" / "val", per_class=1, classes={"moon": (9, 9, 9)})
    with pytest.raises(ValueError, match="classes not in .*moon"):
        check_dataset("imagefolder", data_dir=str(tmp_path / "a"))
    _write_class_folders(tmp_path / "b" / "val", per_class=1)
    with pytest.raises(ValueError, match="no train/"):
        check_dataset("imagefolder", data_dir=str(tmp_path / "b"))


def test_imagefolder_broken_image(tmp_path):
    _write_class_folders(tmp_path, per_class=2)
    (tmp_path / "sky" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        _, splits = load_splits("imagefolder", data_dir=str(tmp_path))
        for split in splits.values():
            list(split.batches(8, 8, train=False, seed=0))
