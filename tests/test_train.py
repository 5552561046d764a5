import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_search
from space import ArchConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_full_training_writes_checkpoint_and_test_accuracy(tmp_path):
    arch = ArchConfig.paper_default("resnet18")
    cfg = tmp_path / "best_config.json"
    cfg.write_text(json.dumps(arch.to_dict()))
    out = tmp_path / "trained"
    from evaluators.train import train_full

    train_full(arch, out, epochs=1, preset="smoke", device="cpu", test_limit=500,
               fidelity_overrides={"train_images": 256, "val_images": 128})
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and len(metrics["history"]) == 1
    state = torch.load(out / "model.pth", weights_only=True)
    model = build_model(ArchConfig.from_dict(json.loads((out / "arch.json").read_text())), num_classes=10)
    model.load_state_dict(state)  # strict
    # a second training into the same --out is refused without touching the checkpoint
    before = (out / "model.pth").stat().st_mtime_ns
    assert run_search.main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu"]) == 2
    assert (out / "model.pth").stat().st_mtime_ns == before


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
