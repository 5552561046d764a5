"""Does the proxy rank configs the way longer training does? Spearman and Kendall per variant, score and backbone.

For a fixed, diverse set of configs per backbone (:data:`CONFIGS_FILE`: 20 resnet50 and 20 mobilenetv2_100
configs, the two references, SCSA per stage group and slot, SE/ECA/CBAM and samples of the space; or
``--configs-file``), train
each with a 10x longer schedule (the reference ranking, two seeds each, ranked by their mean) and with every
proxy *variant*: one fidelity knob changed at a time (validation images, training images, epochs, resolution,
batch size, or k seeds at 1/k of the budget each), at about the CPU time of one ``default`` trial. Every run
records every score of :data:`evaluators.scores.SCORES` (final validation accuracy and loss, training loss, TSE
and TSE-EMA) after every epoch, so one run serves every score and every early-stopping rung.

Printed: the long run's own seed-0 vs seed-1 Spearman (the ceiling a proxy is judged against), one table of
Spearman, Kendall and CPU seconds per trial for each variant x score, the claim precision of replicated
comparisons, and how often early stopping (one rung of the multi-objective ASHA) would stop a config that ends
within the noise band of the best.

Rows (one per run, appended as runs finish, so an interrupted benchmark resumes where it stopped) go to ``--out``
(default ``bench/out/proxy_fidelity.csv``; the committed rows are ``docs/bench/proxy_fidelity.csv``)::

    python bench/proxy_fidelity.py [--backbones resnet50 mobilenetv2_100] [--variants ...] [--seeds 2]
        [--workers 2] [--configs-file FILE] [--summary-only]

Runs take hours on 2 cores: start it in the background (``nice``), it resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity_stats import (  # noqa: E402
    ablation,
    bootstrap_spearman,
    claim_precision,
    early_stopping_check,
    long_reference,
    signed,
    spearman,
)

from evaluators.fidelity import scaled  # noqa: E402
from evaluators.proxy import PRESETS, Fidelity, preset  # noqa: E402
from evaluators.scores import SCORES, verification_score  # noqa: E402
from results.config_stats import paired_in  # noqa: E402
from results.noise import blocked_sd, interval, pooled_sd, t_quantile, verdict  # noqa: E402
from space import ArchConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BACKBONES = ("resnet50", "mobilenetv2_100")

# The proxy this benchmark started from (the `default` preset before the ablation), spelled out: every variant
# changes it one knob at a time, whatever the preset is now.
BASE = Fidelity(train_images=768, val_images=500, resolution=48, epochs=2, batch_size=32, optimizer="adamw",
                lr=3e-3, weight_decay=0.05, warmup_epochs=0.25, augment=False, channels_last=True, threads=1)
# The reference: 10x its images, scored on 5,000 validation images so that the reference ranking does not drown
# in the sampling noise of a small val set.
LONG = BASE.replace(train_images=7680, val_images=5000)


@dataclass(frozen=True)
class Variant:
    """One proxy setting of the ablation; ``replicates`` > 1: the score is the mean of that many seeds."""

    knob: str
    overrides: dict
    replicates: int = 1

    def fidelity(self) -> Fidelity:
        return BASE.replace(**self.overrides)


# Settings that joined the presets after the committed rows of the variants built from them were measured: those
# variants leave them out, so that a variant still means what its rows were trained with. rung_sd only steers the
# scheduler; precise_bn (BatchNorm's statistics recomputed before validating) has variants of its own below.
_LATER_SETTINGS = ("rung_sd", "precise_bn")


def _adopted(fid: Fidelity) -> dict:
    """``fid``'s settings that differ from :data:`BASE`, less :data:`_LATER_SETTINGS`."""
    return {k: v for k, v in fid.to_dict().items() if getattr(BASE, k) != v and k not in _LATER_SETTINGS}


_PRECISE_BN = {"precise_bn": PRESETS["default"].precise_bn}
#: Variants that validate with the recomputed statistics; training is step for step that of the same variant
#: without (same seed, same losses), so the two differ only in what validation measures.
WITH_PRECISE_BN = {"default-bn": "default", "default-x3-bn": "default-x3"}

# One knob at a time, each sized to about the CPU time of the default (2 x 768 images at 48 px, 500 validation
# images after each epoch; a validation image costs about a quarter of a training image, measured on resnet50).
VARIANTS: dict[str, Variant] = {
    # the adopted `default` preset, whatever it is now (its rows are labelled `default`): since the ablation, the
    # learning-rate variant (lr 1e-2, ranked by the training loss)
    "default": Variant("lr, adopted", _adopted(preset("default", threads=1))),
    "default-bn": Variant("BN statistics", {**_adopted(preset("default", threads=1)), **_PRECISE_BN}),
    "base": Variant("(before)", {}),
    "val-2000": Variant("val images", {"train_images": 384, "val_images": 2000}),
    "val-250": Variant("val images", {"train_images": 832, "val_images": 250}),
    "epochs-1": Variant("epochs", {"train_images": 1664, "epochs": 1, "warmup_epochs": 0.15}),
    "epochs-4": Variant("epochs", {"train_images": 352, "epochs": 4}),
    "res-40": Variant("resolution", {"train_images": 1088, "resolution": 40}),
    "res-64": Variant("resolution", {"train_images": 416, "resolution": 64}),
    "batch-16": Variant("batch size", {"batch_size": 16, "train_images": 704}),
    "batch-64": Variant("batch size", {"batch_size": 64, "train_images": 832}),
    "rep2-half": Variant("replicates", {"train_images": 384, "val_images": 250}, replicates=2),
    # The knobs that helped one at a time (first draw of each), combined.
    "r40-lr1e-2": Variant("combined", {"train_images": 1088, "resolution": 40, "lr": 1e-2}),
    "v250-lr1e-2": Variant("combined", {"train_images": 832, "val_images": 250, "lr": 1e-2}),
    "r40-v250-lr1e-2": Variant("combined", {"train_images": 1184, "val_images": 250, "resolution": 40, "lr": 1e-2}),
}
# Candidate verification fidelities (``--verify Nx``): the `default` preset with N times its training and
# validation images, every other setting its own; the mean of 2 paired seeds is what a verified finalist gets.
for _n in (3, 5, 10):
    VARIANTS[f"default-x{_n}"] = Variant("verification", _adopted(scaled(preset("default", threads=1), _n)),
                                         replicates=2)
VARIANTS["default-x3-bn"] = Variant("verification", {**VARIANTS["default-x3"].overrides, **_PRECISE_BN},
                                    replicates=2)


#: The set of configs the committed rows were trained on, 20 per backbone: the two references, SCSA per stage group
#: and slot, SE/ECA/CBAM (resnet50 also SCSA's global window, 8 groups at every other block), and samples of the
#: search space (``space<seed>``: ``SearchSpace(backbone).sample(seed)`` when the set grew from 12 and 10 configs to
#: 20; ``sample0``/``sample1`` are two samples of the space as it was when the benchmark started). A config is
#: identified by its name in the rows, so the file, not the space, fixes what a name means.
CONFIGS_FILE = Path(__file__).resolve().parents[1] / "docs" / "bench" / "proxy_fidelity_configs.json"


def load_configs(path: str | None) -> list[tuple[str, ArchConfig]]:
    """``--configs-file``: a JSON list of ``{"name": ..., "config": ArchConfig dict}``; else :data:`CONFIGS_FILE`."""
    path = path or str(CONFIGS_FILE)
    try:
        items = json.loads(Path(path).read_text())
        if not isinstance(items, list) or not items:
            raise ValueError("expected a non-empty JSON list of {\"name\": ..., \"config\": {...}}")
        out = [(str(it["name"]), ArchConfig.from_dict(it["config"]).validate()) for it in items]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: --configs-file {path}: {e}") from None
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: --configs-file {path}: names must be unique")
    return out


def check_rows(df: pd.DataFrame, items: list[tuple[str, ArchConfig]]) -> None:
    """Refuse rows that a config name of ``items`` labels but that trained another config: the name is what the
    statistics join on, so such rows would compare two architectures as one."""
    meant = dict(items)
    for name, rows in df[df.config.isin(meant) & df.config_json.notna()].groupby("config"):
        wrong = [int(i) for i, j in rows.config_json.items() if ArchConfig.from_json(j) != meant[name]]
        if wrong:
            raise SystemExit(f"error: {len(wrong)} row(s) of {name} (e.g. row {wrong[0] + 2} of the CSV) trained "
                             f"another config than the set names; remove them or give the set they belong to")


# ------------------------------------------------------------------------------------------------------- running


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_one(name: str, arch_json: str, kind: str, variant: str, fid: Fidelity, seed: int) -> dict:
    """One training run in a worker process (one thread): every score after every epoch, and its CPU time."""
    from evaluators.proxy import ProxyRun

    arch = ArchConfig.from_json(arch_json)
    t0, c0 = time.perf_counter(), time.process_time()
    run = ProxyRun(arch, "fashion-mnist", fidelity=fid, seed=seed)
    history = [{k: getattr(r, k) for k in SCORES} for r in run.run()]
    return {"config": name, "backbone": arch.backbone, "kind": kind, "variant": variant, "seed": seed,
            **history[-1], "history": json.dumps(history), "cpu_s": time.process_time() - c0,
            "time_s": time.perf_counter() - t0, "epochs": fid.epochs, "train_images": run.train_images,
            "val_images": fid.val_images, "resolution": fid.resolution, "batch_size": fid.batch_size,
            "config_json": arch.to_json()}


def zero_cost_rows(items: list[tuple[str, ArchConfig]], done: set) -> list[dict]:
    from evaluators.flops import measure
    from evaluators.zero_cost import zero_cost_scores

    rows = []
    for name, arch in items:
        if (name, "zc_params", "", 0) in done:
            continue
        t0 = time.perf_counter()
        scores = zero_cost_scores(arch)
        scores["gflops"] = measure(arch).gflops
        for key, value in scores.items():
            rows.append({"config": name, "backbone": arch.backbone, "kind": f"zc_{key}", "variant": "", "seed": 0,
                         "accuracy": float(value), "time_s": time.perf_counter() - t0, "config_json": arch.to_json()})
    return rows


def jobs(items: list[tuple[str, ArchConfig]], variants: list[str], seeds: int, done: set) -> list[tuple]:
    """What is left to run, most useful first: every variant's first seed and the long runs' first seed (a first
    answer), then the long runs' second seed, then further seeds."""
    out = []
    for s in range(seeds):
        if s < 2:
            out += [(n, a, "long", "", LONG, s) for n, a in items]
        for v in variants:
            k = VARIANTS[v].replicates
            out += [(n, a, "proxy", v, VARIANTS[v].fidelity(), s * k + r) for n, a in items for r in range(k)]
    return [j for j in out if (j[0], j[2], j[3], j[5]) not in done]


#: A config whose mean validation accuracy stays below this has learnt nothing that validation sees (Fashion-MNIST:
#: 10 classes, chance 10 %).
NEAR_CHANCE = 0.15


def precise_bn_lines(part: pd.DataFrame) -> list[str]:
    """Each variant of :data:`WITH_PRECISE_BN` against its twin without, run by run on the same config and seed.
    Only pairs whose training loss is identical are compared: those are one training validated two ways; the others
    come from rows that earlier code trained (its numerics differed), and are counted apart. Per variant: how many
    configs score near chance, and how far validation accuracy and loss move."""
    lines = []
    for bn, plain in WITH_PRECISE_BN.items():
        runs = [part[(part.kind == "proxy") & (part.variant == v)] for v in (plain, bn)]
        pair = runs[0].merge(runs[1], on=["config", "seed"], suffixes=("", "_bn"))
        same = pair[pair.loss == pair.loss_bn]
        if same.empty:
            if len(pair):
                lines.append(f"{bn} vs {plain}: none of {len(pair)} pairs trained alike (earlier code's rows)")
            continue
        means = same.groupby("config")[["accuracy", "accuracy_bn"]].mean()
        moved = 100 * (same.accuracy_bn - same.accuracy)
        low = [int((means[c] < NEAR_CHANCE).sum()) for c in ("accuracy", "accuracy_bn")]
        every = [int((r.groupby("config").accuracy.mean() < NEAR_CHANCE).sum()) for r in runs]
        lines.append(f"{bn} vs {plain}, every row of each: {every[0]} of {runs[0].config.nunique()} configs below "
                     f"{100 * NEAR_CHANCE:.0f} % mean accuracy -> {every[1]} of {runs[1].config.nunique()}")
        lines.append(f"{bn} vs {plain}, the same trainings: {len(same)} runs of {len(means)} configs "
                     f"({len(pair) - len(same)} more pairs trained apart, by earlier code, left out); configs below "
                     f"{100 * NEAR_CHANCE:.0f} % mean accuracy {low[0]} -> {low[1]}; accuracy change per run median "
                     f"{moved.median():+.2f} points ({moved.min():+.2f} .. {moved.max():+.2f}); val_loss change "
                     f"median {(same.val_loss_bn - same.val_loss).median():+.4f}; CPU seconds per run x"
                     f"{(same.cpu_s_bn / same.cpu_s).median():.3f} (median; the twins ran at different times)")
    return lines


def verification_noise_lines(part: pd.DataFrame, backbone: str, variant: str = "default-x3",
                             finalists: int = 4) -> list[str]:
    """What a verification at ``variant`` can tell apart: each config's validation loss minus the plain backbone's,
    seed by seed (the verification's paired difference), its standard deviation over seeds pooled over the configs,
    and the 95 % half-width of a paired difference of k seeds for k = 2..5: with the pair's own noise (the t
    quantile of k - 1 degrees of freedom), and with the noise pooled over ``finalists`` verified configs, as a
    search estimates it (``results.config_stats.paired_in``: (finalists - 1)(k - 1) degrees of freedom; 4 is what
    the default 200-trial search verifies, ``search.finalists.max_finalists``), beside how far the configs' mean
    differences from the plain backbone lie."""
    runs = part[(part.kind == "proxy") & (part.variant == variant)]
    table = runs.pivot_table(index="config", columns="seed", values="val_loss")
    plain = f"{backbone}/baseline"
    if plain not in table.index or table.shape[1] < 2:
        return []
    diffs = table.drop(plain).sub(table.loc[plain], axis=1).dropna()
    sd, dof = pooled_sd(diffs.to_numpy().tolist())
    if not dof:
        return []
    halves = ", ".join(f"{k} seeds ±{t_quantile(0.975, k - 1) * sd / math.sqrt(k):.4f}" for k in range(2, 6))
    pooled = ", ".join(f"{k} seeds ±{t_quantile(0.975, (finalists - 1) * (k - 1)) * sd / math.sqrt(k):.4f}"
                       for k in range(2, 6))
    far = diffs.mean(axis=1).abs()
    return [f"{variant}: val_loss minus the plain backbone's, seed by seed: sd {sd:.4f} pooled over {len(diffs)} "
            f"configs (dof {dof}); a paired difference's 95 % half-width with its own noise: {halves}; with the "
            f"noise pooled over {finalists} verified configs: {pooled}; the configs' mean differences lie "
            f"{far.median():.4f} (median) and at most {far.max():.4f} from 0"]


def long_verdict_lines(part: pd.DataFrame, backbone: str) -> list[str]:
    """Which configs the long run itself tells apart from the plain backbone: each config's long-run accuracy
    against the plain backbone's, paired over the seeds all configs share, with the seed noise pooled over them
    (``results.config_stats.paired_in``, as a search's verification compares its finalists)."""
    long = part[part.kind == "long"]
    table = long.pivot_table(index="config", columns="seed", values="accuracy").dropna()
    plain = f"{backbone}/baseline"
    if plain not in table.index or table.shape[1] < 2 or len(table) < 3:
        return []
    sd, dof = blocked_sd(table.to_numpy().tolist())  # for the line; paired_in pools the same noise
    found: dict[str, list[str]] = {"better": [], "worse": []}
    for config in table.index.drop(plain):
        diff = paired_in(table, config, plain)
        word = verdict(diff)
        if word in found:
            found[word].append(f"{config.split('/', 1)[1]} {diff.format(100, 2)}")
    said = "; ".join(f"{word}: {', '.join(names) if names else 'none'}" for word, names in found.items())
    return [f"long run against the plain backbone (accuracy points, {table.shape[1]} paired seeds, seed noise pooled "
            f"over {len(table)} configs, sd {100 * sd:.2f} points, dof {dof}; the other "
            f"{len(table) - 1 - sum(map(len, found.values()))} not distinguishable): {said}"]


def summarise(df: pd.DataFrame, backbones: list[str]) -> str:
    lines = []
    for bb in backbones:
        part = df[df.backbone == bb]
        if part.empty:
            continue
        long, ceiling = long_reference(part)
        lines.append(f"\n== {bb}: {part.config.nunique()} configs, {len(long)} with a long run; long run seed 0 vs "
                     f"seed 1 Spearman {ceiling:+.3f} (the ceiling); long-run accuracy "
                     f"{100 * long.min():.2f}-{100 * long.max():.2f} %")
        sd_long, _ = pooled_sd(g.accuracy.tolist() for _, g in part[part.kind == "long"].groupby("config"))
        lines.append(f"long-run seed sd (pooled): {100 * sd_long:.2f} points")
        lines += long_verdict_lines(part, bb)
        table = ablation(part, long, {n: (v.knob, v.replicates) for n, v in VARIANTS.items()})
        if not table.empty:
            table = table.sort_values("rho", ascending=False)
            lines.append(f"{'variant':<10} {'knob':<11} {'score':<9} {'rho':>6} {'(min..max)':>14} {'tau':>6} "
                         f"{'draws':>5} {'n':>3} {'cpu-s':>6}")
            for r in table.itertuples():
                lines.append(f"{r.variant:<10} {r.knob:<11} {r.score:<9} {r.rho:+.3f} "
                             f"({r.rho_min:+.2f}..{r.rho_max:+.2f}) {r.tau:+.3f} {r.draws:>5} {r.configs:>3} "
                             f"{r.cpu_s:6.1f}")
        for score in SCORES:
            acc = part[(part.kind == "proxy") & (part.variant == "default")]
            sd, dof = pooled_sd(g[score].tolist() for _, g in acc.groupby("config"))
            if dof:
                lines.append(f"default variant, seed sd of {score}: {sd:.4g} (dof {dof})")
        lines += precise_bn_lines(part)
        lines += verification_noise_lines(part, bb)
        default_score = PRESETS["default"].score
        called, agree, pairs = claim_precision(part, long, "default", default_score)
        if pairs:
            lines.append(f"claim precision (default, {default_score}): {agree}/{called} pairs called different agree "
                         f"with the long run ({100 * agree / max(called, 1):.0f} %), of {pairs} pairs compared")
        es = early_stopping_check(part, "default", default_score)
        if es:
            bands = "; ".join(f"with a {b}-sd band at the rung {es[f'{b} stopped']:.1f}, "
                              f"{es[f'{b} stopped in band']:.1f} in the band" for b in ("0.5", "1", "2"))
            lines.append(f"early stopping at rung 1 (eta 3; {es['draws']} draws x 20 arrival orders; rung-1 seed sd "
                         f"{es['rung_sd']:.4g}): of {es['configs']} configs, {es['in_band']} end within 2 seed sd of "
                         f"the best; plain ASHA stops {es['0 stopped']:.1f} per draw, "
                         f"{es['0 stopped in band']:.1f} of them in the band; {bands}")
        zc = [k for k in sorted(part.kind.unique()) if k.startswith("zc_")]
        for kind in zc:
            s = part[part.kind == kind].groupby("config").accuracy.mean()
            common = long.index.intersection(s.index)
            if len(common) >= 4:
                rho, lo, hi, n = bootstrap_spearman(s[common], long[common])
                lines.append(f"{kind:>12}: Spearman {rho:+.3f} ({lo:+.2f} .. {hi:+.2f}) (n={n})")
    return "\n".join(lines)


#: The ablation's label for the default variant ranked on the knobs' configs only.
SAME_CONFIGS = "on the knobs' configs"


def ablation_markdown(df: pd.DataFrame, backbones: list[str]) -> str:
    """The ablation as one markdown table: per variant, its knob, draws and CPU seconds per trial (on the first
    backbone), and per backbone the mean Spearman of a single trial with the long run for each score, with its
    95 % bootstrap interval over configs."""
    scores = ("accuracy", "val_loss", "loss", "tse_ema")
    variants = {n: (v.knob, v.replicates) for n, v in VARIANTS.items() if n not in CANDIDATES}
    tables = {}
    for bb in backbones:
        part = df[df.backbone == bb]
        long, _ = long_reference(part)
        if long.empty:
            continue
        table = ablation(part, long, variants)
        # The default variant may cover more configs than the knobs (the set grew after the ablation): a second
        # row ranks it on the knobs' configs only, so that it is compared with them like for like.
        knobs = [v for v in variants if v != "default" and v not in WITH_PRECISE_BN]
        knob_rows = part[(part.kind == "proxy") & part.variant.isin(knobs)]
        default_rows = part[(part.kind == "proxy") & (part.variant == "default")]
        if len(knob_rows) and set(default_rows.config) != set(knob_rows.config):
            same = ablation(part[part.config.isin(set(knob_rows.config))], long, {"default": variants["default"]})
            is_default = table.variant == "default"  # the row goes right after the default variant's
            table = pd.concat([table[is_default], same.assign(variant=SAME_CONFIGS), table[~is_default]],
                              ignore_index=True)
        tables[bb] = table
    if not tables:
        return ""
    first = next(iter(tables.values()))
    head = ("| variant | knob | draws | cpu-s | configs |"
            + "".join(f" {bb}: {sc} |" for bb in tables for sc in scores))
    lines = [head, "|---|---|---:|---:|---:|" + "---:|" * (len(scores) * len(tables))]
    for variant in dict.fromkeys(first.variant):
        mine = first[first.variant == variant].iloc[0]
        cells, configs = [], []
        for table in tables.values():
            hits = table[table.variant == variant]
            configs.append(str(hits.configs.max()) if len(hits) else "–")
            for sc in scores:
                hit = hits[hits.score == sc]
                cells.append(f"{hit.rho.iloc[0]:+.2f} ({hit.lo.iloc[0]:+.2f}..{hit.hi.iloc[0]:+.2f})"
                             if len(hit) else "")
        name = f"`{variant}`" if variant != SAME_CONFIGS else f"`default`, {SAME_CONFIGS}"
        lines.append(f"| {name} | {mine.knob} | {mine.draws} | {mine.cpu_s:.1f} | {' / '.join(configs)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: The verification candidates, cheapest first.
CANDIDATES = [v for v in VARIANTS if v.startswith("default-x")]


def verification_table(df: pd.DataFrame, backbones: list[str]) -> tuple[pd.DataFrame, str]:
    """Per backbone and fidelity: the Spearman of the mean of k paired seeds with the long run's 2-seed mean
    accuracy (averaged over the disjoint draws of k seeds there are), its bootstrap 95 % interval over configs, and
    CPU seconds per config (k seeds); for the proxy itself (k = 1 and 2, ranked by its score), each verification
    candidate (k = 2: what a verified finalist gets; ranked by the verification's score, and by the proxy's for
    comparison), and the long run against itself (seed 0 vs seed 1: the bar a candidate must reach). The rows and
    a markdown table."""
    score = PRESETS["default"].score
    checked = verification_score(score)
    rows = []
    for bb in backbones:
        part = df[df.backbone == bb]
        long, _ = long_reference(part)
        if long.empty:
            continue
        long_runs = part[part.kind == "long"]
        by_seed = long_runs.pivot_table(index="config", columns="seed", values="accuracy")
        singles = [by_seed[s] for s in (0, 1) if s in by_seed.columns]
        if len(singles) == 2:
            rho, lo, hi, n = bootstrap_spearman(by_seed[0], by_seed[1])
            rows.append({"backbone": bb, "fidelity": "long run, seed 0 vs seed 1 (the bar)", "score": "accuracy",
                         "seeds": 1, "configs": n, "rho": math.nan, "lo": math.nan, "hi": math.nan, "rho1": rho,
                         "lo1": lo, "hi1": hi, "cpu_s": long_runs.cpu_s.mean()})
        runs_of = [("default", 1, score, "proxy (`default`), one seed"),
                   ("default-bn", 1, "val_loss", "proxy, BN recomputed (`default-bn`), one seed"),
                   ("default", 2, score, "proxy (`default`), mean of 2 seeds")]
        for v in CANDIDATES:
            factor = v.removeprefix("default-x").removesuffix("-bn")
            label = f"`--verify {factor}x`{', BN recomputed' if v in WITH_PRECISE_BN else ''}, mean of 2 seeds"
            runs_of += [(v, 2, checked, label), (v, 2, score, label)]
        for variant, k, by, label in runs_of:
            runs = part[(part.kind == "proxy") & (part.variant == variant)]
            if runs.empty:
                continue
            table = runs.pivot_table(index="config", columns="seed", values=by)
            seeds = sorted(table.columns)
            draws = [signed(table[seeds[i:i + k]].mean(axis=1, skipna=False), by)
                     for i in range(0, len(seeds) - k + 1, k)]
            if not draws:  # not k seeds yet
                continue
            rho, lo, hi, n = bootstrap_spearman(draws, long)
            if n < 4:
                continue
            # like for like with the bar: against each long seed alone, as the bar's seeds are against each other
            rho1, lo1, hi1, _ = bootstrap_spearman(draws, singles) if singles else (math.nan,) * 4
            rows.append({"backbone": bb, "fidelity": label, "score": by, "seeds": k, "configs": n, "rho": rho,
                         "lo": lo, "hi": hi, "rho1": rho1, "lo1": lo1, "hi1": hi1, "cpu_s": runs.cpu_s.mean() * k,
                         "draws": len(draws)})
    table = pd.DataFrame(rows)
    md = ["| backbone | fidelity | ranked by | configs | draws | Spearman with one long seed (like the bar) | "
          "with the long run's 2-seed mean | CPU s per config |", "|---|---|---|---:|---:|---|---|---:|"]

    def cell(rho: float, lo: float, hi: float) -> str:
        return "—" if math.isnan(rho) else f"**{rho:+.2f}** ({lo:+.2f} .. {hi:+.2f})"

    for r in table.itertuples():
        draws = "" if pd.isna(getattr(r, "draws", math.nan)) else int(r.draws)
        md.append(f"| {r.backbone} | {r.fidelity} | {r.score} | {r.configs} | {draws} | {cell(r.rho1, r.lo1, r.hi1)} "
                  f"| {cell(r.rho, r.lo, r.hi)} | {r.cpu_s:.0f} |")
    return table, "\n".join(md) + "\n" + (
        "\nIn brackets: the 95 % percentile bootstrap interval over configs (resampled with replacement, 2,000 "
        "times; the same resample for every pair of draws averaged).\n")


def plot(df: pd.DataFrame, path: Path, backbones: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = PRESETS["default"].score
    fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 5), dpi=110, squeeze=False)
    for ax, bb in zip(axes[0], backbones, strict=True):
        part = df[df.backbone == bb]
        long, _ = long_reference(part)
        proxy = part[(part.kind == "proxy") & (part.variant == "default")].groupby("config")[score]
        stats = proxy.agg(["mean", "std", "count"])
        common = long.index.intersection(stats.index)
        if not len(common):
            continue
        half = [interval(proxy.get_group(c).tolist()).half for c in common]
        ax.errorbar(stats["mean"][common], 100 * long[common], xerr=[0 if math.isnan(h) else h for h in half],
                    fmt="o", color="#4c72b0", ecolor="#9bb0d3", capsize=2)
        for c in common:
            ax.annotate(c.split("/")[-1], (stats["mean"][c], 100 * long[c]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        rho = spearman(signed(stats["mean"][common], score), long[common])
        ax.set_xlabel(f"proxy `default` {score} (mean over seeds, 95 % interval)")
        ax.set_ylabel("long-run validation accuracy (%), mean of 2 seeds")
        ax.set_title(f"{bb}: Spearman {rho:+.2f} (n={len(common)})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs-file", help="JSON list of {\"name\": ..., \"config\": ArchConfig dict}")
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=2, help="seeds (draws) per variant and config; long runs: 2")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    ap.add_argument("--out", default=str(OUT / "proxy_fidelity.csv"))
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["config", "backbone", "kind", "variant", "seed"])
    df["variant"] = df["variant"].astype(object).fillna("")
    items = [(n, a) for n, a in load_configs(args.configs_file) if a.backbone in args.backbones]
    check_rows(df, items)

    def save(rows: list[dict]) -> None:
        nonlocal df
        df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True) if len(df) else pd.DataFrame(rows)
        tmp = out.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(out)

    if not args.summary_only:
        done = {(r.config, r.kind, r.variant, int(r.seed)) for r in df.itertuples()}
        rows = zero_cost_rows(items, done)
        if rows:
            save(rows)
        todo = jobs(items, args.variants, args.seeds, done)
        print(f"{len(todo)} runs to go; long: {LONG}", flush=True)
        spawn = multiprocessing.get_context("spawn")  # fresh workers: no torch state forked from here
        with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=_init_worker) as pool:
            futures = {pool.submit(run_one, n, a.to_json(), kind, v, fid, seed): (n, kind, v, seed)
                       for n, a, kind, v, fid, seed in todo}
            for fut in as_completed(futures):
                n, kind, v, seed = futures[fut]
                try:
                    row = fut.result()
                except Exception as e:  # one config that cannot train must not end the benchmark
                    print(f"FAILED {kind} {v} seed {seed} {n}: {type(e).__name__}: {e}", flush=True)
                    continue
                print(f"{kind:>5} {v:<10} seed {seed} {n:<34} acc {100 * row['accuracy']:.2f}% val_loss "
                      f"{row['val_loss']:.4f} tse {row['tse']:.2f}  {row['cpu_s']:.0f} cpu-s", flush=True)
                save([row])
    if df.empty:
        print(f"no runs yet in {out}; the committed rows are in docs/bench/proxy_fidelity.csv (--out)")
        return
    print(summarise(df, args.backbones))
    # The tables are the committed ones: every backbone of the rows, whichever --backbones this run trained.
    tabled = [b for b in BACKBONES if b in set(df.backbone)]
    for name, md in (("ablation", ablation_markdown(df, tabled)),
                     ("verification", verification_table(df, tabled)[1])):
        md_path = out.with_name(f"{out.stem}_{name}.md")
        md_path.write_text(f"<!-- written by `python bench/proxy_fidelity.py --summary-only --out {out}` -->\n\n{md}")
        print(f"\n{name} ({md_path}):\n{md}")
    OUT.mkdir(parents=True, exist_ok=True)
    plot(df, OUT / f"{out.stem}.png", args.backbones)  # beside the working rows, never among the committed ones


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
