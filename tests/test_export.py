import ast
import json
import runpy

import pandas as pd
import pytest
import timm
import torch

import space.timm_models  # noqa: F401  (registers scsa_* entry points)
from results.export import export_best, mmpretrain_config, mmpretrain_limits, write_best_config
from results.frame import trials_frame
from space import ArchConfig, SearchSpace, StageConfig, build_model


def _mm_namespace(text: str, tmp_path) -> dict:
    path = tmp_path / "cfg_mmpretrain.py"
    path.write_text(text)
    ast.parse(text)
    return runpy.run_path(str(path))  # our own generated file, as mmengine's Config.fromfile would read it


def test_best_config_json_rebuilds_the_model(tmp_path):
    arch = SearchSpace("resnet18").sample(4)
    path = write_best_config(tmp_path, arch)
    back = ArchConfig.from_dict(json.loads(path.read_text()))
    assert back == arch
    a, b = build_model(arch, num_classes=10), build_model(back, num_classes=10)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_timm_entry_point_builds_the_exported_architecture(tmp_path):
    arch = ArchConfig("resnet18", (StageConfig.scsa(window=4), StageConfig(), StageConfig("eca", "end", "last"),
                                   StageConfig.scsa(position="end", groups=2, kernels=(3, 5))))
    path = write_best_config(tmp_path, arch)
    model = timm.create_model("scsa_resnet18", arch=str(path), num_classes=10)
    ref = build_model(arch, num_classes=10)
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert "scsa_resnet50" in timm.list_models("scsa_*")
    with pytest.raises(ValueError, match="use scsa_resnet18"):
        timm.create_model("scsa_resnet50", arch=arch.to_dict())
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("scsa_resnet18", pretrained=True)


def test_mmpretrain_exact_for_paper_default(tmp_path):
    arch = ArchConfig.paper_default("resnet50")
    assert mmpretrain_limits(arch) == []
    ns = _mm_namespace(mmpretrain_config(arch, num_classes=10), tmp_path)
    bb = ns["model"]["backbone"]
    assert bb["type"] == "ResNetSCSA" and bb["depth"] == 50
    assert bb["scsa_cfg"] == {"head_num": 1, "window_size": 7, "group_kernel_sizes": [3, 5, 7, 9],
                              "down_sample_mode": "avg_pool", "gate_layer": "sigmoid", "attn_drop_ratio": 0.0}
    assert "stage_scsa_cfgs" not in bb
    assert ns["model"]["head"]["num_classes"] == 10


def test_mmpretrain_per_stage_says_what_cannot_be_expressed(tmp_path):
    arch = ArchConfig("resnet50", (StageConfig(), StageConfig.scsa(position="end"), StageConfig.scsa(window=4),
                                   StageConfig.scsa(groups=2, kernels=(3, 5), blocks="last")))
    text = mmpretrain_config(arch)
    for words in ("stage 1 has attention 'none'", "stage 2 puts SCSA at the 'end' slot",
                  "stage 4 uses 2 SMSA groups", "stage 4 puts SCSA in 'last' blocks", "stages differ"):
        assert words in text
    ns = _mm_namespace(text, tmp_path)
    cfgs = ns["model"]["backbone"]["stage_scsa_cfgs"]
    assert cfgs[0] is None and cfgs[2]["window_size"] == 4 and cfgs[3]["group_kernel_sizes"] == [3, 5]


def test_mmpretrain_plain_and_mobilenet(tmp_path):
    ns = _mm_namespace(mmpretrain_config(ArchConfig.baseline("resnet18")), tmp_path)
    assert ns["model"]["backbone"]["type"] == "ResNet" and "scsa_cfg" not in ns["model"]["backbone"]
    ns = _mm_namespace(mmpretrain_config(ArchConfig.paper_default("mobilenetv2_100")), tmp_path)
    assert ns["model"]["backbone"]["type"] == "MobileNetV2SCSA" and ns["model"]["backbone"]["widen_factor"] == 1.0
    assert "regnetx_002" in " ".join(mmpretrain_limits(ArchConfig.paper_default("regnetx_002")))


def test_export_best_writes_all_files(tmp_path):
    archs = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"), SearchSpace("resnet18").sample(1)]
    recs = [dict(trial_id=f"t{i}", number=i, status="completed", reference=r, accuracy=acc, gflops=g, params=p,
                 config=a.to_dict())
            for i, (a, r, acc, g, p) in enumerate(zip(archs, ["baseline", "paper_default", ""], [0.8, 0.82, 0.85],
                                                      [1.82, 1.83, 1.825], [11_689_512, 11_720_232, 11_700_000]))]
    df = trials_frame(recs)
    best = df.iloc[2]
    files = export_best(tmp_path, best, df, ["accuracy", "gflops"], "max-accuracy", num_classes=10)
    assert all(p.exists() for p in files.values())
    md = (tmp_path / "best_config.md").read_text()
    assert "+5.00 accuracy points" in md and "paper default" in md and "timm.create_model" in md
    assert ArchConfig.from_dict(json.loads((tmp_path / "best_config.json").read_text())) == archs[2]
    assert isinstance(df, pd.DataFrame)
