import ast
import json
import runpy

import pandas as pd
import pytest
import timm
import torch

import space.timm_models  # noqa: F401  (registers scsa_* entry points)
from results.choice import better_than_plain, choose
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


_ARCHS = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"), SearchSpace("resnet18").sample(1),
          SearchSpace("resnet18").sample(2)]
_GFLOPS = [1.82, 1.83, 1.825, 1.821]


def _replicated(accs: dict[int, list[float]], verify: dict[int, list[float]] | None = None,
                score: str = "accuracy", verify_score: str | None = None) -> pd.DataFrame:
    """resnet18 configs (0 plain, 1 paper default, 2 and 3 samples), each trained with the proxy seeds of ``accs``
    (the first a search trial, the others replicates) in ``score`` and verified with the paired seeds of
    ``verify`` in ``verify_score`` (default: ``score``)."""
    refs = ["baseline", "paper_default", "", ""]
    recs, number = [], len(_ARCHS)
    for phase, table in (("replicate", accs), ("verify", verify or {})):
        for i, values in table.items():
            for k, value in enumerate(values):
                first = phase == "replicate" and k == 0
                tag = "r" if phase == "replicate" else "v"
                rec = dict(trial_id=f"t{i}" if first else f"t{i}{tag}{k}", number=i if first else number,
                           seed=(100 if phase == "verify" else 0) * 1000 + 1000 * k, status="completed",
                           reference=refs[i], gflops=_GFLOPS[i], params=11_689_512 + i, config=_ARCHS[i].to_dict(),
                           phase="search" if first else phase,
                           **{(verify_score or score) if phase == "verify" else score: value})
                if not first:
                    rec["replicate_of"], number = f"t{i}", number + 1
                recs.append(rec)
    return trials_frame(recs)


def test_export_best_writes_all_files_with_gains_as_paired_intervals(tmp_path):
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.84, 0.81, 0.86], 2: [0.85, 0.86, 0.84]})
    results = search_results(df, ["accuracy", "gflops"], "best")
    files = export_best(tmp_path, results, num_classes=10)
    assert all(p.exists() for p in files.values())
    md = (tmp_path / "best_config.md").read_text()
    # seed by seed the sample beats the plain backbone by exactly 5 points; the seed noise is that of all three
    # configs under the same seeds (the paper default's is not additive): ± 4.60, still "better"
    assert md.startswith("# Recommendation\n\n**Use ")
    assert "against the plain backbone, the replicates at the proxy's fidelity: +5.00 ± 4.60 accuracy points " \
        "(3 paired seeds, seed noise pooled over 3 configs, 95 % interval): **better**" in md
    assert "85.00 ± 2.48 % (3 seeds)" in md
    assert "against the paper default (SCSA everywhere), the replicates at the proxy's fidelity: +1.33 ± " in md
    assert "**not distinguishable**" in md
    assert "the pooled within-config standard deviation of accuracy is 1.67 points (6 degrees" in md
    assert "timm.create_model" in md and "chosen instead" not in md
    assert ArchConfig.from_dict(json.loads((tmp_path / "best_config.json").read_text())) == SearchSpace(
        "resnet18").sample(1)


def test_a_pick_not_distinguishable_from_the_plain_backbone_yields_to_it(tmp_path):
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.80, 0.80, 0.80], 2: [0.83, 0.79, 0.80]})
    choice = choose(df, ["accuracy", "gflops"], "best")
    assert choice.best["reference"] == "baseline"
    assert "picked t2, but it is not distinguishable from the plain backbone (+0.67 ± " in choice.note
    # without replicates nothing is distinguishable: the plain backbone again, and the note says why
    single = _replicated({0: [0.80], 1: [0.80], 2: [0.85]})
    choice = choose(single, ["accuracy", "gflops"], "best")
    assert choice.best["reference"] == "baseline" and "one draw each cannot be told from the seed noise" in choice.note
    # a rule the plain backbone does not meet is not overridden
    assert choose(single, ["accuracy", "gflops"], "cheapest-over:0.84").best["trial_id"] == "t2"
    # the default rule on single draws: nothing can be shown better; the best draw is named, no table of all
    default = choose(single, ["accuracy", "gflops"])
    assert default.best["reference"] == "baseline" and default.finalists == [] and default.evidence == "single draws"
    assert default.answer.startswith("Use the plain backbone: no config beat it at the proxy's fidelity, one seed "
                                     "each; the best candidate was t2 ")
    assert "(one draw each: no interval)" in default.answer


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
                            {"t0": 10.0, "t1": 12.0, "t2": 11.0}, "best")
    assert "| params (M) | latency (ms) | latency over plain |" in md
    assert "| 12.0 | +20.0 % |" in md and "| 10.0 | +0.0 % |" in md


def test_in_a_latency_search_the_cheapest_is_counted_in_latency_and_the_table_shows_it(tmp_path):
    # t1 and t2 both beat the plain backbone by 5 points on every seed (tied with each other); t2 costs more GFLOPs
    # but less latency: the verified rule takes the cheaper in the search's first cost, latency
    choice, md = _latency_search(tmp_path, {0: [0.80, 0.81, 0.79], 1: [0.85, 0.86, 0.84], 2: [0.85, 0.86, 0.84]},
                                 {"t0": 10.0, "t1": 12.0, "t2": 11.0}, "verified")
    assert choice.best["trial_id"] == "t2" and choice.note == ""
    assert "| FLOPs over plain | latency over plain | accuracy minus plain (paired) |" in md
    assert "| t2 **chosen** | 85.00 ± 2.48 % (3 seeds) | +0.27 % | +10.0 % | +5.00 ± 0.00 accuracy points | better " \
        "| yes |" in md
    assert "for +10.00 % latency (11 ms)" in choice.answer


def test_two_verified_better_configs_tied_with_each_other_the_cheaper_is_picked(tmp_path):
    # the proxy's single draws: the sample t2 looks best; verified, t1 (paper default) and t3 both beat the plain
    # backbone on every seed and cannot be told apart: the cheaper, t3, is chosen
    df = _replicated({0: [0.80], 1: [0.82], 2: [0.90], 3: [0.81]},
                     verify={0: [0.80, 0.81, 0.79], 1: [0.84, 0.86, 0.83], 2: [0.80, 0.82, 0.78],
                             3: [0.85, 0.85, 0.83]})
    results = search_results(df, ["accuracy", "gflops"], fidelity="3x the proxy's images")
    choice = results.choice
    assert choice.evidence == "verified" and choice.best["trial_id"] == "t3"
    by = {f.row["trial_id"]: f for f in choice.finalists}
    assert by["t1"].verdict == by["t3"].verdict == "better" and by["t1"].tied_best and by["t3"].tied_best
    assert choice.answer.startswith("Use ") and "(t3): verified at 3x the proxy's images (3 paired seeds, seed noise " \
        "pooled over 4 configs), its accuracy differs from the plain backbone's by +4.33 ± 1.20 " in choice.answer
    assert "for +0.05 % FLOPs (1.821 GFLOPs)" in choice.answer
    export_best(tmp_path, results, num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    assert md.splitlines()[2] == f"**{choice.answer}**"
    assert "| proxy claim | verified | verdict | held | tied with best |" in md
    # the proxy claimed t2 better by one draw; verified it is not distinguishable: the claim did not hold
    assert "| t2 | " in md and "+10.00 ± ? accuracy points (one draw) | -0.00 ± 1.20" in md and "| **no** |" in md


def test_the_best_proxy_config_failing_verification_is_not_picked_and_said_so(tmp_path):
    # t2 is the proxy's best by far (replicated: distinguishably better than plain at the proxy's fidelity), but
    # verified it is worse than the plain backbone; t1 holds up
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.82, 0.83, 0.81], 2: [0.90, 0.91, 0.89]},
                     verify={0: [0.80, 0.81, 0.79], 1: [0.83, 0.84, 0.82], 2: [0.78, 0.79, 0.77]})
    results = search_results(df, ["accuracy", "gflops"], fidelity="5x the proxy's images")
    choice = results.choice
    assert choice.best["trial_id"] == "t1"
    by = {f.row["trial_id"]: f for f in choice.finalists}
    assert by["t2"].claim_verdict == "better" and by["t2"].verdict == "worse" and by["t2"].held is False
    assert by["t1"].held is True
    export_best(tmp_path, results, num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    assert "| t2 | " in md and "+10.00 ± 0.00 accuracy points | -2.00 ± 0.00 accuracy points | worse | **no** |" \
        in md


def test_no_config_verified_better_picks_the_plain_backbone_and_names_the_best_candidate(tmp_path):
    df = _replicated({0: [0.80], 1: [0.85], 2: [0.84]},
                     verify={0: [0.80, 0.81, 0.79], 1: [0.81, 0.80, 0.80], 2: [0.79, 0.82, 0.78]})
    results = search_results(df, ["accuracy", "gflops"], fidelity="3x the proxy's images")
    choice = results.choice
    assert choice.best["reference"] == "baseline"
    assert choice.answer.startswith("Use the plain backbone: no config beat it verified at 3x the proxy's images; "
                                    "the best candidate was t1 (scsa@mid/all g4 k3-5-7-9 w7 h1 sigmoid avg in "
                                    "stages 1, 2, 3, 4) at +0.33 ± ")
    export_best(tmp_path, results, num_classes=10)
    assert "None of the 2 other configs compared is distinguishably better" in (tmp_path / "best_config.md").read_text()


def test_the_verification_is_read_in_its_own_score_beside_the_proxys_claim(tmp_path):
    # the proxy ranks by the training loss; the verification by the validation loss (evaluators.scores)
    df = _replicated({0: [0.50], 1: [0.45], 2: [0.40]}, score="loss", verify_score="val_loss",
                     verify={0: [0.60, 0.62, 0.61], 1: [0.57, 0.59, 0.58], 2: [0.61, 0.63, 0.62]})
    results = search_results(df, ["loss", "gflops"], fidelity="3x the proxy's images", verify_score="val_loss")
    choice = results.choice
    assert choice.best["trial_id"] == "t1" and (choice.score, choice.proxy_score) == ("val_loss", "loss")
    assert "its val_loss differs from the plain backbone's by -0.0300 ± 0.0000 val_loss" in choice.answer
    by = {f.row["trial_id"]: f for f in choice.finalists}
    assert by["t2"].claim_verdict == "better" and by["t2"].verdict == "worse" and by["t2"].held is False
    export_best(tmp_path, results, num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    assert "*Proxy claim*: its loss minus the plain backbone's" in md and "*Verified*: its val_loss minus" in md
    assert "-0.1000 ± ? loss (one draw) | +0.0100 ± 0.0000 val_loss | worse | **no** |" in md
    assert "verification run(s) at 3x the proxy's images, ranked by val_loss" in md


def test_a_knee_tie_in_the_proxy_numbers_no_longer_decides(tmp_path):
    # the front of the proxy's means is {plain, paper default}: a two-point front whose knee is a tie, which the
    # knee rule gives to the cheaper, the plain backbone; the default rule picks what the seeds show
    df = _replicated({0: [0.80, 0.81, 0.79], 1: [0.83, 0.84, 0.82], 2: [0.79, 0.80, 0.78]})
    objectives = ["accuracy", "gflops"]
    assert choose(df, objectives, "knee").best["trial_id"] == "t0"
    choice = choose(df, objectives)
    assert choice.best["trial_id"] == "t1" and choice.note == ""
    assert [(f.row["trial_id"], f.verdict, f.on_front) for f in choice.finalists] == [
        ("t0", "same config", True), ("t2", "worse", False), ("t1", "better", True)]
    assert better_than_plain(choose(df, objectives, "knee")) == (
        "Distinguishably better than the plain backbone (paired, 95 % interval): the paper default (SCSA "
        "everywhere), t1: +3.00 ± 0.00 accuracy points at +0.55 % FLOPs; the rule did not choose any of them.")
    # the same for a loss, where lower is better
    losses = _replicated({0: [0.50, 0.51, 0.49], 1: [0.47, 0.48, 0.46], 2: [0.52, 0.53, 0.51]}, score="loss")
    picked = choose(losses, ["loss", "gflops"])
    assert picked.best["trial_id"] == "t1" and "its loss differs from the plain backbone's by -0.0300 ± 0.0000" \
        in picked.answer
    export_best(tmp_path, search_results(df, objectives, "knee"), num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    assert "## The finalists against the plain backbone" in md
    assert "| plain backbone, t0 **chosen** | 80.00 ± 2.48 % (3 seeds) | +0.00 % | — | same config | yes |" in md
    assert "| t2 | 79.00 ± 2.48 % (3 seeds) | +0.27 % | -1.00 ± 0.00 accuracy points | worse |  |" in md
    same = choose(_replicated({0: [0.80, 0.81, 0.79], 1: [0.80, 0.82, 0.79], 2: [0.79, 0.80, 0.78]}), objectives)
    assert better_than_plain(same) == \
        "None of the 2 other configs compared is distinguishably better than the plain backbone in accuracy."
    assert same.best["reference"] == "baseline"


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
