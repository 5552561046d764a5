import ast
import json
import runpy

import pandas as pd
import pytest
import timm
import torch

import space.timm_models  # noqa: F401  (registers scsa_* entry points)
from results.choice import better_than_plain, choose
from results.config_stats import config_means
from results.export import export_best, mmpretrain_config, mmpretrain_limits, write_best_config
from results.frame import trials_frame
from results.model import search_results
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


def _replicated(accs: dict[int, list[float]]) -> pd.DataFrame:
    """Three resnet18 configs (plain, paper default, a sample), each trained with the seeds of ``accs``."""
    archs = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"), SearchSpace("resnet18").sample(1)]
    refs, gflops = ["baseline", "paper_default", ""], [1.82, 1.83, 1.825]
    params = [11_689_512, 11_720_232, 11_700_000]
    recs, number = [], 3
    for i, arch in enumerate(archs):
        for k, acc in enumerate(accs[i]):
            rec = dict(trial_id=f"t{i}" + (f"r{k}" if k else ""), number=i if k == 0 else number, seed=1000 * k,
                       status="completed", reference=refs[i], accuracy=acc, gflops=gflops[i], params=params[i],
                       config=arch.to_dict())
            if k:
                rec["replicate_of"], number = f"t{i}", number + 1
            recs.append(rec)
    return trials_frame(recs)


def test_export_best_writes_all_files_with_gains_as_paired_intervals(tmp_path):
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.84, 0.81, 0.86], 2: [0.85, 0.86, 0.84]})
    results = search_results(df, ["accuracy", "gflops"], "max-accuracy")
    files = export_best(tmp_path, results, num_classes=10)
    assert all(p.exists() for p in files.values())
    md = (tmp_path / "best_config.md").read_text()
    # seed by seed the sample beats the plain backbone by exactly 5 points: interval 0, "better"
    assert "Against the plain backbone: +5.00 ± 0.00 accuracy points (paired over 3 seed(s)" in md
    assert "**better**" in md and "85.00 ± 2.48 % (3 seeds)" in md
    assert "Against the paper default (SCSA everywhere): +1.33 ± " in md
    assert "**not distinguishable at this fidelity**" in md
    assert "Seed noise: the pooled within-config standard deviation of accuracy is 1.67 points (6 degrees" in md
    assert "timm.create_model" in md and "chosen instead" not in md
    assert ArchConfig.from_dict(json.loads((tmp_path / "best_config.json").read_text())) == SearchSpace(
        "resnet18").sample(1)


def test_a_pick_not_distinguishable_from_the_plain_backbone_yields_to_it(tmp_path):
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.80, 0.80, 0.80], 2: [0.83, 0.79, 0.80]})
    choice = choose(df, ["accuracy", "gflops"], "max-accuracy")
    assert choice.best["reference"] == "baseline"
    assert "picked t2, but it is not distinguishable from the plain backbone (+0.67 ± " in choice.note
    # without replicates nothing is distinguishable: the plain backbone again, and the note says why
    single = _replicated({0: [0.80], 1: [0.80], 2: [0.85]})
    choice = choose(single, ["accuracy", "gflops"], "max-accuracy")
    assert choice.best["reference"] == "baseline" and "no replicates to measure the noise" in choice.note
    # a rule the plain backbone does not meet is not overridden
    assert choose(single, ["accuracy", "gflops"], "min-gflops-over:0.84").best["trial_id"] == "t2"


def _latency_search(tmp_path, accs: dict[int, list[float]], latency: dict[str, float], rule: str):
    """:func:`_replicated` with a latency per config (``{"t0": ms, ...}``), chosen by ``rule`` under (accuracy,
    latency) and exported to ``tmp_path``: the choice and ``best_config.md``."""
    df = _replicated(accs)
    df["latency_ms"] = df["trial_id"].str[:2].map(latency)
    objectives = ["accuracy", "latency_ms"]
    results = search_results(df, objectives, rule)
    export_best(tmp_path, results, num_classes=10)
    return results.choice, (tmp_path / "best_config.md").read_text()


def test_a_latency_search_reports_the_latency_beside_the_flops(tmp_path):
    _, md = _latency_search(tmp_path, {0: [0.80, 0.81, 0.79], 1: [0.85, 0.86, 0.84], 2: [0.83, 0.84, 0.82]},
                            {"t0": 10.0, "t1": 12.0, "t2": 11.0}, "max-accuracy")
    assert "| params (M) | latency (ms) | latency over plain |" in md
    assert "| 12.0 | +20.0 % |" in md and "| 10.0 | +0.0 % |" in md


def test_in_a_latency_search_a_knee_tie_goes_to_the_lower_latency_and_the_table_shows_it(tmp_path):
    # t2 beats the plain backbone at lower latency; t1 is faster still but worse: the front is {t1, t2}, ordered by
    # GFLOPs t2 comes first, by latency t1 does
    choice, md = _latency_search(tmp_path, {0: [0.80, 0.81, 0.79], 1: [0.79, 0.80, 0.78], 2: [0.85, 0.86, 0.84]},
                                 {"t0": 10.0, "t1": 8.0, "t2": 9.0}, "knee")
    assert choice.best["trial_id"] == "t0"
    assert "which goes to the cheaper in latency_ms, t1. The knee rule picked t1, but it is worse than the plain" \
        in choice.note
    assert "| FLOPs over plain | latency over plain | accuracy minus plain (paired) |" in md
    assert "| t2 | 85.00 ± 2.48 % (3 seeds) | +0.27 % | -10.0 % | +5.00 ± 0.00 accuracy points | better | yes |" in md
    assert "t2: +5.00 ± 0.00 accuracy points at +0.27 % FLOPs; the rule did not choose any of them." in md


def test_with_replicates_the_rule_picks_among_the_replicated_configs():
    # the sample's one draw is the best of all, but one draw cannot be told from the noise: the rule picks among the
    # replicated configs, where the paper default beats the plain backbone by 5 points on every seed
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.85, 0.86, 0.84], 2: [0.90]})
    choice = choose(df, ["accuracy", "gflops"], "max-accuracy")
    assert choice.best["reference"] == "paper_default" and choice.gains["baseline"][1] == "better"
    assert "picks among the 2 configs trained with replicates" in choice.note
    assert "it would have picked t2, which has a single draw" in choice.note
    # once the sample is replicated too it competes again
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.85, 0.86, 0.84], 2: [0.90, 0.89, 0.91]})
    choice = choose(df, ["accuracy", "gflops"], "max-accuracy")
    assert choice.best["trial_id"] == "t2" and choice.note == ""


def test_a_knee_tie_is_said_and_every_replicated_config_is_compared_with_the_plain_backbone(tmp_path):
    # the sample is worse than the plain backbone and costs more, so the front is {plain, paper default}: its knee
    # is a tie between the two ends, taken by the cheaper; the paper default, better on every seed, is named anyway
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.83, 0.84, 0.82], 2: [0.79, 0.80, 0.78]})
    objectives = ["accuracy", "gflops"]
    means = config_means(df, objectives)
    choice = choose(df, objectives, "knee", means)
    assert choice.best["trial_id"] == "t0"
    assert "two points, t0 and t1; its knee is a tie between them, which goes to the cheaper in GFLOPs" \
        in choice.note
    assert [(f.row["trial_id"], f.verdict, f.on_front) for f in choice.finalists] == [
        ("t0", "same config", True), ("t2", "worse", False), ("t1", "better", True)]
    assert better_than_plain(choice, "accuracy") == (
        "Distinguishably better than the plain backbone (paired, 95 % interval): the paper default (SCSA "
        "everywhere), t1: +3.00 ± 0.00 accuracy points at +0.55 % FLOPs; the rule did not choose any of them.")
    export_best(tmp_path, search_results(df, objectives, "knee"), num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    assert "## The replicated configs against the plain backbone" in md
    assert "| plain backbone, t0 **chosen** | 80.00 ± 2.48 % (3 seeds) | +0.00 % | — | same config | yes |" in md
    assert "| t2 | 79.00 ± 2.48 % (3 seeds) | +0.27 % | -1.00 ± 0.00 accuracy points | worse |  |" in md
    # a third point on the front takes the tie away; no replicates, no comparison
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.83, 0.84, 0.82], 2: [0.82, 0.83, 0.81]})
    assert "tie" not in choose(df, objectives, "knee").note
    single = choose(_replicated({0: [0.80], 1: [0.83], 2: [0.79]}), objectives, "knee")
    assert single.finalists == [] and better_than_plain(single, "accuracy") == ""
    same = choose(_replicated({0: [0.80, 0.81, 0.79], 1: [0.80, 0.82, 0.79], 2: [0.79, 0.80, 0.78]}), objectives)
    assert better_than_plain(same, "accuracy") == \
        "None of the 2 other replicated configs is distinguishably better than the plain backbone in accuracy."


@pytest.mark.parametrize("backbone,mm_type,mm_arch,in_channels", [
    ("repvgg_a0", "RepVGG", "A0", 1280),
    ("swin_tiny_patch4_window7_224", "SwinTransformer", "tiny", 768),
    ("convnext_atto", "ConvNeXt", "atto", 320),
])  # fmt: skip
def test_mmpretrain_own_backbones_of_the_new_families(backbone, mm_type, mm_arch, in_channels, tmp_path):
    from mmengine.config import Config

    from results.export import write_mmpretrain

    # the plain backbone: mmpretrain's own backbone expresses it exactly
    assert mmpretrain_limits(ArchConfig.baseline(backbone)) == []
    cfg = Config.fromfile(str(write_mmpretrain(tmp_path, ArchConfig.baseline(backbone), num_classes=10)))
    bb = cfg.model.backbone
    assert (bb.type, bb.arch) == (mm_type, mm_arch) and "scsa_cfg" not in bb and "stage_scsa_cfgs" not in bb
    assert cfg.model.head.in_channels == in_channels and cfg.model.head.num_classes == 10
    # with attention: every stage that holds some is listed, and the backbone dict fails loudly in mmpretrain
    arch = ArchConfig(backbone, (StageConfig(), StageConfig("se", "end", "last"), StageConfig.scsa(),
                                 StageConfig.scsa(position="end", blocks="alternate")))
    assert mmpretrain_limits(arch) == [
        f"backbone {backbone}: mmpretrain's {mm_type} takes no attention, and the authors ship SCSA in ResNetSCSA "
        "(resnet18..152) and MobileNetV2SCSA only",
        f"stage 2 has 'se' at the 'end' slot of 'last' blocks; {mm_type} cannot hold it",
        f"stage 3 has 'scsa' at the 'mid' slot of 'all' blocks; {mm_type} cannot hold it",
        f"stage 4 has 'scsa' at the 'end' slot of 'alternate' blocks; {mm_type} cannot hold it",
    ]
    text = mmpretrain_config(arch)
    assert "NOT EXPRESSIBLE" in text and f"{mm_type} cannot hold it" in text
    cfg = Config.fromfile(str(write_mmpretrain(tmp_path, arch)))
    assert cfg.model.backbone.type == mm_type and cfg.model.backbone.stage_scsa_cfgs[0] is None
    assert ArchConfig.from_dict(cfg.arch_config) == arch


def test_mmpretrain_variants_without_an_mmpretrain_arch():
    assert mmpretrain_limits(ArchConfig.baseline("convnext_atto_ols")) == [
        "backbone convnext_atto_ols: mmpretrain's ConvNeXt has no arch for this timm variant"]
    assert "'use_grn': True" in mmpretrain_config(ArchConfig.baseline("convnextv2_atto"))
    assert "'arch': 'B1g4'" in mmpretrain_config(ArchConfig.baseline("repvgg_b1g4"))


def test_timm_entry_points_of_the_new_families():
    assert {"scsa_repvgg_a0", "scsa_swin_tiny_patch4_window7_224", "scsa_convnext_atto"} <= set(
        timm.list_models("scsa_*"))
    swin = timm.create_model("scsa_swin_tiny_patch4_window7_224", num_classes=10, img_size=64).eval()
    with torch.no_grad():
        assert swin(torch.randn(1, 3, 64, 64)).shape == (1, 10)
