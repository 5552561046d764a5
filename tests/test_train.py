import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_search
from space import ArchConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _fashion_subset(directory: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` images of the real Fashion-MNIST files, as IDX files of their own."""
    directory.mkdir()
    for split, n in (("train", train), ("t10k", test)):
        for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
            name = f"{split}-{kind}-ubyte.gz"
            raw = gzip.decompress((FMNIST / name).read_bytes())
            record = 28 * 28 if kind.startswith("images") else 1
            head = bytearray(raw[:header])
            head[4:8] = n.to_bytes(4, "big")
            (directory / name).write_bytes(gzip.compress(bytes(head) + raw[header:header + n * record]))
    return directory


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_the_documented_train_command_starts_at_once_checkpoints_and_continues_after_an_interruption(tmp_path):
    """``run_search.py train --config best_config.json --epochs N`` as documented (on a real subset of
    Fashion-MNIST, so that it takes seconds): training starts within 30 s, every epoch leaves a checkpoint, and a
    training interrupted after its first epoch, run again, ends exactly where an uninterrupted one does."""
    from evaluators.train import CHECKPOINT, train_full

    data_dir = _fashion_subset(tmp_path / "fashion", train=1024, test=256)
    arch = ArchConfig.paper_default("resnet18")
    cfg = tmp_path / "best_config.json"
    cfg.write_text(json.dumps(arch.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same threads in every run

    def command(out: Path) -> list[str]:
        return [sys.executable, str(ROOT / "run_search.py"), "train", "--config", str(cfg), "--epochs", "2",
                "--data-dir", str(data_dir), "--device", "cpu", "--out", str(out)]

    whole = tmp_path / "whole"
    proc = subprocess.Popen(command(whole), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    assert first.startswith("training resnet18"), first + proc.stderr.read()  # training started
    assert "922 images per epoch at 64 px, 2 epoch(s)" in first  # the whole train split, less the held-out val
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert "epoch 2/2" in stdout and "test accuracy" in stdout
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["fidelity"]["augment"] and metrics["fidelity"]["train_images"] is None
    assert len(metrics["history"]) == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    model = build_model(ArchConfig.from_dict(json.loads((whole / "arch.json").read_text())), num_classes=10)
    model.load_state_dict(torch.load(whole / "model.pth", weights_only=True))  # strict
    assert torch.load(whole / CHECKPOINT, weights_only=True)["history"] == metrics["history"]

    cut = tmp_path / "interrupted"

    def stop_after_first_epoch(result) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_full(arch, cut, epochs=2, data_dir=str(data_dir), device="cpu", on_epoch=stop_after_first_epoch)
    assert not (cut / "model.pth").exists() and len(torch.load(cut / CHECKPOINT, weights_only=True)["history"]) == 1
    again = subprocess.run(command(cut), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "continuing after epoch 1" in again.stdout and "epoch 1/2" not in again.stdout
    resumed = json.loads((cut / "metrics.json").read_text())
    drop_time = [{k: v for k, v in h.items() if k != "time_s"} for h in metrics["history"]]
    assert [{k: v for k, v in h.items() if k != "time_s"} for h in resumed["history"]] == drop_time
    assert resumed["test_accuracy"] == metrics["test_accuracy"]
    # a finished training is not trained again; a checkpoint of another config is refused
    assert run_search.main(["train", "--config", str(cfg), "--out", str(whole), "--device", "cpu"]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps(ArchConfig.baseline("resnet18").to_dict()))
    (cut / "model.pth").unlink()
    rc = run_search.main(["train", "--config", str(other), "--epochs", "2", "--data-dir", str(data_dir),
                          "--device", "cpu", "--out", str(cut)])
    assert rc == 2


@pytest.mark.parametrize(
    "content,words",
    [(None, "cannot read --config"), ("{", "not valid JSON"), ('{"backbone": "vit_tiny_patch16_224", "stages": []}',
                                                              "supported families")],
)
def test_train_command_bad_config(tmp_path, content, words):
    cfg = tmp_path / "c.json"
    if content is not None:
        cfg.write_text(content)
    proc = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "train", "--config", str(cfg),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
