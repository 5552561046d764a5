"""Take the chosen architecture away: ``best_config.json``, ``best_config.md``, an mmpretrain-style config, and the
commands that build or train it with timm or with this project's own trainer."""

from __future__ import annotations

import json
import math
import os
import pprint
import re
from pathlib import Path

import pandas as pd

from evaluators.data import DEFAULT_DATASET
from results.choice import REPLICATED, VERIFIED, Choice, better_than_plain, format_gain, placement
from results.io import atomic_write_text
from results.model import SearchResults
from results.noise import paired_words
from results.pareto import OBJECTIVE_LABELS, REFERENCE_LABELS
from results.schema import BEST_JSON, BEST_MD, COMPLETED, CONFIG_JSON, MMPRETRAIN_PY, SEEDS, interval_column
from space import ArchConfig
from space.backbones import family, num_features

#: Classes of an exported model where the search does not say (ImageNet's: the authors' mmpretrain configs).
NUM_CLASSES = 1000

# The authors' mmpretrain backbones and how a timm name maps onto their arguments.
_MM_RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
_MM_MOBILENETV2 = re.compile(r"^mobilenetv2_(\d{3})$")
_MM_HEAD_CHANNELS = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048}
# mmpretrain's own backbones for the families the authors ship no SCSA variant of, and the timm names it has an arch
# for (RepVGG "A0".."B3g4", "D2se"; Swin "tiny".."large" with their window and input size; ConvNeXt "atto".."huge",
# V2 through use_grn).
_MM_OWN_TYPES = {"repvgg": "RepVGG", "swin": "SwinTransformer", "convnext": "ConvNeXt"}
_MM_REPVGG = re.compile(r"^repvgg_([ab]\d(?:g[24])?|d2se)$")
_MM_SWIN = re.compile(r"^swin_(tiny|small|base|large)_patch4_window(\d+)_(\d+)$")
_MM_CONVNEXT = re.compile(r"^convnext(v2)?_(atto|femto|pico|nano|tiny|small|base|large|xlarge|huge)$")


def _mm_own_backbone(backbone: str) -> dict | None:
    """mmpretrain's own backbone dict for a RepVGG, Swin or ConvNeXt timm name; None where it has no such arch."""
    if m := _MM_REPVGG.match(backbone):
        return {"type": "RepVGG", "arch": m.group(1)[0].upper() + m.group(1)[1:], "out_indices": (3,)}
    if m := _MM_SWIN.match(backbone):
        return {"type": "SwinTransformer", "arch": m.group(1), "img_size": int(m.group(3)),
                "window_size": int(m.group(2))}
    if m := _MM_CONVNEXT.match(backbone):
        v2 = {"use_grn": True, "layer_scale_init_value": 0.0} if m.group(1) else {}
        return {"type": "ConvNeXt", "arch": m.group(2), **v2}  # pools before its final norm: no neck
    return None


def write_best_config(out_dir: str | os.PathLike[str], arch: ArchConfig) -> Path:
    """``best_config.json``: exactly ``arch.to_dict()``, so ``ArchConfig.from_dict(json.load(f))`` rebuilds it."""
    path = Path(out_dir) / BEST_JSON
    atomic_write_text(path, json.dumps(arch.to_dict(), indent=2) + "\n")
    return path


def official_scsa_cfg(stage) -> dict:
    """A SCSA stage's settings under the authors' constructor names."""
    return {
        "head_num": stage.heads,
        "window_size": stage.window,
        "group_kernel_sizes": list(stage.kernels),
        "down_sample_mode": f"{stage.pool}_pool",
        "gate_layer": stage.gate,
        "attn_drop_ratio": 0.0,
    }


def mmpretrain_limits(arch: ArchConfig) -> list[str]:
    """What the authors' mmpretrain backbones cannot express of ``arch`` (empty: expressible exactly)."""
    reasons = []
    plain = all(st.attn == "none" for st in arch.stages)  # their plain ResNet / MobileNetV2 express it
    own_type = _MM_OWN_TYPES.get(family(arch.backbone))
    if own_type is not None:  # mmpretrain's own RepVGG / SwinTransformer / ConvNeXt: no attention slots at all
        if _mm_own_backbone(arch.backbone) is None:
            reasons.append(f"backbone {arch.backbone}: mmpretrain's {own_type} has no arch for this timm variant")
        if not plain:
            reasons.append(f"backbone {arch.backbone}: mmpretrain's {own_type} takes no attention, and the authors "
                           "ship SCSA in ResNetSCSA (resnet18..152) and MobileNetV2SCSA only")
        reasons += [f"stage {i} has {st.attn!r} at the {st.position!r} slot of {st.blocks!r} blocks; {own_type} "
                    "cannot hold it" for i, st in enumerate(arch.stages, start=1) if st.attn != "none"]
        return reasons
    if arch.backbone not in _MM_RESNET_DEPTHS and not _MM_MOBILENETV2.match(arch.backbone):
        reasons.append(
            f"backbone {arch.backbone}: the authors ship ResNetSCSA (resnet18..152) and MobileNetV2SCSA only"
        )
    for i, st in enumerate(arch.stages if not plain else (), start=1):
        if st.attn != "scsa":
            reasons.append(f"stage {i} has attention {st.attn!r}; their backbones put SCSA in every block")
            continue
        if st.position != "mid":
            reasons.append(f"stage {i} puts SCSA at the {st.position!r} slot; theirs sits after the 3x3/depthwise conv")
        if st.blocks != "all":
            reasons.append(f"stage {i} puts SCSA in {st.blocks!r} blocks; theirs is in every block")
        if st.groups != 4:
            reasons.append(f"stage {i} uses {st.groups} SMSA groups; their module has exactly 4")
    scsa = [official_scsa_cfg(s) for s in arch.stages if s.attn == "scsa"]
    if any(cfg != scsa[0] for cfg in scsa[1:]):
        reasons.append("stages differ in SCSA settings; their backbones take one scsa_cfg for all stages")
    return reasons


def mmpretrain_config(arch: ArchConfig, num_classes: int = NUM_CLASSES) -> str:
    """An mmpretrain-style config (Python source) for ``arch`` with the authors' keys.

    Where their ``ResNetSCSA`` / ``MobileNetV2SCSA`` can express ``arch`` exactly, the config is a drop-in for their
    repository. Otherwise the header says precisely what cannot be expressed, ``stage_scsa_cfgs`` carries the
    per-stage settings, and the backbone dict passes them under a key their classes do not accept yet, so that
    mmpretrain fails loudly instead of silently training a different network. RepVGG, Swin and ConvNeXt get
    mmpretrain's own ``RepVGG`` / ``SwinTransformer`` / ``ConvNeXt`` (the authors ship no SCSA variant of them):
    exact for the plain backbone; with attention, the header lists every stage they cannot hold.
    """
    limits = mmpretrain_limits(arch)
    stage_cfgs = [
        None if st.attn == "none" else
        {"attn": st.attn, "position": st.position, "blocks": st.blocks,
         **(official_scsa_cfg(st) | {"groups": st.groups} if st.attn == "scsa" else {})}
        for st in arch.stages
    ]
    first_scsa = next((official_scsa_cfg(s) for s in arch.stages if s.attn == "scsa"), None)
    m = _MM_MOBILENETV2.match(arch.backbone)
    plain = first_scsa is None and all(st.attn == "none" for st in arch.stages)
    neck: dict | None = {"type": "GlobalAveragePooling"}
    own_type = _MM_OWN_TYPES.get(family(arch.backbone))
    if own_type is not None:
        backbone = _mm_own_backbone(arch.backbone) or {"type": own_type}
        in_channels = num_features(arch.backbone)
        if own_type == "ConvNeXt":
            neck = None
    elif m:
        backbone = {"type": "MobileNetV2" if plain else "MobileNetV2SCSA", "widen_factor": int(m.group(1)) / 100}
        in_channels = 1280 if int(m.group(1)) <= 100 else int(1280 * int(m.group(1)) / 100)
    else:
        depth = _MM_RESNET_DEPTHS.get(arch.backbone, 50)
        backbone = {"type": "ResNet" if plain else "ResNetSCSA", "depth": depth, "num_stages": 4,
                    "out_indices": (3,), "style": "pytorch"}
        in_channels = _MM_HEAD_CHANNELS[depth]
    if not plain:
        backbone["scsa_cfg"] = first_scsa
    if limits:
        backbone["stage_scsa_cfgs"] = stage_cfgs
    model = {
        "type": "ImageClassifier",
        "backbone": backbone,
        **({"neck": neck} if neck else {}),
        "head": {"type": "LinearClsHead", "num_classes": num_classes, "in_channels": in_channels,
                 "loss": {"type": "CrossEntropyLoss", "loss_weight": 1.0},
                 "topk": (1, 5) if num_classes >= 5 else (1,)},
    }
    lines = [
        f"# mmpretrain config for the searched architecture: {arch.describe()}",
        "# Keys follow the SCSA authors' configs (scsa_cfg: head_num, window_size, group_kernel_sizes,",
        "# down_sample_mode, gate_layer, attn_drop_ratio). Add data, schedule and runtime as in their configs,",
        "# e.g. _base_ = ['../_base_/datasets/imagenet_bs32.py', '../_base_/schedules/imagenet_bs256.py',",
        "#               '../_base_/default_runtime.py']",
    ]
    if limits:
        lines.append("# NOT EXPRESSIBLE in the authors' backbones as released:")
        lines += [f"#   - {r}" for r in limits]
        lines.append("# 'stage_scsa_cfgs' below carries the per-stage settings; their classes reject it until they")
        lines.append("# accept per-stage settings, so this config fails loudly rather than training another network.")
    elif plain:
        lines.append("# The plain backbone: mmpretrain's own backbone, no attention.")
    else:
        lines.append("# Exactly expressible: same SCSA settings in every block at the authors' slot.")
    for name, value in (("arch_config", arch.to_dict()), ("stage_scsa_cfgs", stage_cfgs), ("model", model)):
        lines.append(f"{name} = {pprint.pformat(value, width=110, sort_dicts=False, compact=True)}")
    return "\n".join(lines) + "\n"


def write_mmpretrain(out_dir: str | os.PathLike[str], arch: ArchConfig, num_classes: int = NUM_CLASSES) -> Path:
    path = Path(out_dir) / MMPRETRAIN_PY
    atomic_write_text(path, mmpretrain_config(arch, num_classes))
    return path


def timm_one_liner(arch: ArchConfig, config_path: str = BEST_JSON, num_classes: int = NUM_CLASSES) -> str:
    """A shell one-liner that builds the architecture through ``timm.create_model``."""
    return (
        f"python -c \"import space.timm_models, timm; m = timm.create_model('scsa_{arch.backbone}', "
        f"arch='{config_path}', num_classes={num_classes}); print(sum(p.numel() for p in m.parameters()))\""
    )


def training_command(config_path: str, dataset: str, epochs: int = 100, out: str = "train") -> str:
    """This project's full-training command for an exported config."""
    return f"python run_search.py train --config {config_path} --dataset {dataset} --epochs {epochs} --out {out}"


def _fmt(value: object, spec: str) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(v) else format(v, spec)


def _quality(row: pd.Series, objective: str) -> str:
    """The first objective of a per-config row: mean ± 95 % half-width over its seeds."""
    scale, unit = (100.0, " %") if objective == "accuracy" else (1.0, "")
    digits = ".2f" if objective == "accuracy" else ".4g"
    text = _fmt(scale * row[objective], digits)
    half = row.get(interval_column(objective), math.nan)
    n = int(row.get(SEEDS, 1) or 0)
    if n >= 2 and _fmt(half, "f") != "—":
        text += f" ± {_fmt(scale * half, digits)}"
    return f"{text}{unit} ({n} seed{'s' if n != 1 else ''})"


def best_config_markdown(
    results: SearchResults,
    *,
    resolution: int = 224,
    dataset: str = DEFAULT_DATASET,
    num_classes: int = NUM_CLASSES,
) -> str:
    """``best_config.md``: the answer first (one sentence, :attr:`results.choice.Choice.answer`), then the finalists
    (the proxy's claim beside the verified result), then how the choice was made and how to take it away."""
    choice, means, objectives, rule = results.choice, results.means, results.objectives, results.rule
    if choice is None:
        raise ValueError(f"nothing was chosen: {results.reason}")
    best = choice.best
    quality = objectives[0]
    arch = ArchConfig.from_dict(json.loads(best[CONFIG_JSON]))
    plain = means[(means["reference"] == "baseline") & (means["status"] == COMPLETED)]
    base_gflops = float(plain["gflops"].iloc[0]) if len(plain) else math.nan
    # latency is measured only when it is an objective; then it is a column of its own
    latency = "latency_ms" in objectives
    base_ms = float(plain["latency_ms"].iloc[0]) if latency and len(plain) else math.nan
    replicates, verified = results.replicates, results.verification_runs
    trials = len(results.trials) - replicates - verified
    sd, dof = results.noise_sd, results.noise_dof
    scale = 100.0 if quality == "accuracy" else 1.0
    unit = "points" if quality == "accuracy" else ""
    lines = ["# Recommendation", "", f"**{choice.answer}**", "",
             f"`{arch.describe()}`, chosen by the `{rule}` rule on {_evidence_words(choice, results)}.", ""]
    if choice.note:
        lines += [choice.note, ""]
    lines += _finalists_markdown(choice, results, base_gflops, base_ms)
    lines += [
        "", "## How it was found", "",
        f"{trials} trials ({int((means['status'] == 'completed').sum())} configs completed), "
        f"{replicates} replicate run(s) at the proxy's fidelity and {verified} verification run(s) at "
        f"{results.fidelity}" + (f", ranked by {choice.score}" if verified else "") + f". Objectives: "
        f"{', '.join(objectives)}. `{quality}` is the "
        f"{OBJECTIVE_LABELS.get(quality, quality)} on {dataset}; GFLOPs are counted at {resolution} px (one "
        "multiply-add = one FLOP).",
        "",
        (f"Seed noise at the proxy's fidelity: the pooled within-config standard deviation of {quality} is "
         f"{' '.join(filter(None, (_fmt(scale * sd, '.3g'), unit)))} ({dof} degrees of freedom, from the "
         "replicates)." if dof else
         "Seed noise at the proxy's fidelity: not measured (no replicates): the proxy's single draws below "
         "cannot be told apart from it."),
        "",
        f"| at the proxy's fidelity | {quality} (mean ± 95 % interval) | GFLOPs | FLOPs over plain | params (M) |"
        + (" latency (ms) | latency over plain |" if latency else ""),
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if latency else ""),
    ]
    rows = [("**chosen**", results.chosen_on_proxy)]
    for name, label in REFERENCE_LABELS.items():
        ref = means[means["reference"] == name]
        rows.append((label, ref.iloc[0] if len(ref) else None))
    for label, row in rows:
        if row is None or row["status"] != COMPLETED:
            lines.append(f"| {label} | not completed | | | |" + (" | |" if latency else ""))
            continue
        over = _fmt(100 * (float(row["gflops"]) / base_gflops - 1), "+.2f")
        ms = f" {_fmt(row['latency_ms'], '.1f')} | {_fmt(100 * (row['latency_ms'] / base_ms - 1), '+.1f')} % |"
        lines.append(f"| {label} | {_quality(row, quality)} | {_fmt(row['gflops'], '.4f')} | {over} % | "
                     f"{_fmt(row['params'] / 1e6, '.3f')} |" + (ms if latency else ""))
    for name, (diff, word) in choice.gains.items():
        if word == "same config":
            continue
        ref = means[means["reference"] == name].iloc[0]
        lines += ["", f"The chosen config against the {REFERENCE_LABELS[name]}, {_evidence_words(choice, results)}: "
                      f"{format_gain(diff, choice.score)} ({paired_words(diff)}, 95 % interval): **{word}**; "
                      f"for {_fmt(best['gflops'] - ref['gflops'], '+.4f')} GFLOPs."]
    lines += [
        "",
        "Per stage:",
        "",
        *[f"- stage {i}: {s.describe()}" for i, s in enumerate(arch.stages, start=1)],
        "",
        "Build it with timm:",
        "",
        "```",
        timm_one_liner(arch, BEST_JSON, num_classes),
        "```",
        "",
        "Train it at full schedule with this project's trainer:",
        "",
        "```",
        training_command(BEST_JSON, dataset),
        "```",
        "",
        f"mmpretrain: `{MMPRETRAIN_PY}` "
        + ("(exactly expressible in the authors' backbone)." if not mmpretrain_limits(arch)
           else "(not exactly expressible in the authors' backbone: see its header)."),
    ]
    return "\n".join(lines) + "\n"


def _evidence_words(choice: Choice, results: SearchResults) -> str:
    return {VERIFIED: f"the verification runs at {results.fidelity}",
            REPLICATED: "the replicates at the proxy's fidelity"}.get(choice.evidence, "the proxy's single draws")


def _finalists_markdown(choice: Choice, results: SearchResults, base_gflops: float, base_ms: float) -> list[str]:
    """The configs of the evidence against the plain backbone: a sentence and one table (with verification, the
    proxy's claim beside the verified result); a latency column where the search measured latency."""
    if len(choice.finalists) < 2:
        return []
    quality, claimed = choice.score, choice.proxy_score
    chosen, latency = str(choice.best["trial_id"]), not math.isnan(base_ms)
    verified = choice.evidence == VERIFIED
    if verified:
        intro = (f"Every finalist, by cost. *Proxy claim*: its {claimed} minus the plain backbone's at the proxy's "
                 "fidelity (paired mean ± 95 % interval; one draw's difference, without an interval, where the proxy "
                 f"trained it once). *Verified*: its {quality} minus the plain backbone's at {results.fidelity}, "
                 "paired over the seeds both were verified with. *Held*: the same verdict against the plain "
                 "backbone at both fidelities (a single draw's verdict is its sign). *Tied with best*: not "
                 "distinguishable from the best verified mean.")
        head = ("| config | attention | FLOPs over plain | " + ("latency over plain | " if latency else "")
                + "proxy claim | verified | verdict | held | tied with best |")
        rule = "|---|---|---:|" + ("---:|" if latency else "") + "---:|---:|---|---|---|"
    else:
        intro = (f"Every config trained with {'more than one seed' if choice.evidence == REPLICATED else 'a seed'}, "
                 f"by cost, against the plain backbone: its {quality} minus the plain backbone's, paired over the "
                 "seeds both were trained with (mean ± 95 % interval); *front*: on the front of these configs' means.")
        head = (f"| config | {quality} (mean ± 95 % interval) | FLOPs over plain | "
                + ("latency over plain | " if latency else "") + f"{quality} minus plain (paired) | verdict | front |")
        rule = "|---|---:|---:|" + ("---:|" if latency else "") + "---:|---|---|"
    lines = ["", "## The finalists against the plain backbone", "", intro, "",
             better_than_plain(choice), "", head, rule]
    for f in choice.finalists:
        ref = str(f.row.get("reference", "") or "")
        name = (f"{REFERENCE_LABELS[ref]}, " if ref in REFERENCE_LABELS else "") + str(f.row["trial_id"])
        name += " **chosen**" if str(f.row["trial_id"]) == chosen else ""
        diff = "—" if f.verdict == "same config" else format_gain(f.gain, quality)
        over = _fmt(100 * (float(f.row["gflops"]) / base_gflops - 1), "+.2f")
        ms = f" {_fmt(100 * (float(f.row['latency_ms']) / base_ms - 1), '+.1f')} % |" if latency else ""
        if verified:
            claim = "—" if f.claim is None or f.verdict == "same config" else \
                format_gain(f.claim, claimed) + ("" if f.claim.n > 1 else " (one draw)")
            held = "" if f.held is None else ("yes" if f.held else "**no**")
            lines.append(f"| {name} | {placement(f.row)} | {over} % |{ms} {claim} | {diff} | {f.verdict} | {held} | "
                         f"{'yes' if f.tied_best else ''} |")
        else:
            lines.append(f"| {name} | {_quality(f.row, quality)} | {over} % |{ms} {diff} | {f.verdict} | "
                         f"{'yes' if f.on_front else ''} |")
    return lines


def export_best(
    out_dir: str | os.PathLike[str],
    results: SearchResults,
    *,
    resolution: int = 224,
    dataset: str = DEFAULT_DATASET,
    num_classes: int = NUM_CLASSES,
) -> dict[str, Path]:
    """Write ``best_config.json``, ``best_config.md`` and the mmpretrain config for the chosen config."""
    md = best_config_markdown(results, resolution=resolution, dataset=dataset, num_classes=num_classes)
    arch = ArchConfig.from_dict(json.loads(results.choice.best[CONFIG_JSON]))
    out = Path(out_dir)
    atomic_write_text(out / BEST_MD, md)
    return {
        BEST_JSON: write_best_config(out, arch),
        BEST_MD: out / BEST_MD,
        "mmpretrain": write_mmpretrain(out, arch, num_classes),
    }
