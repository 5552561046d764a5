"""Does the proxy rank architectures the way longer training does? Rank correlation, measured.

For a fixed, diverse set of resnet50 configs (the two references, hand-picked placements and samples of the search
space), train each with a proxy preset and with a schedule ``--long-factor`` times longer (more images per epoch
and more epochs, same resolution), on Fashion-MNIST; compute training-free (zero-cost) scores too. Report Spearman
and Kendall rank correlation of every proxy score with long-run accuracy, and the seed-to-seed noise of both
(repeated seeds for a few configs). Writes ``bench/out/proxy_fidelity.csv`` (one row per run, appended as runs
finish, so an interrupted benchmark resumes where it stopped) and ``bench/out/proxy_fidelity.png``.

    python bench/proxy_fidelity.py [--preset default] [--long-factor 10] [--configs 14] [--noise-configs 3]

It runs for a long time (roughly configs x (1 + long-factor) proxy trials); run it in the background.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluators.proxy import ProxyRun, fidelity  # noqa: E402
from space import ArchConfig, SearchSpace, StageConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def configs(n: int) -> list[tuple[str, ArchConfig]]:
    bb = "resnet50"
    none = StageConfig()
    scsa = StageConfig.scsa()
    hand = [
        ("baseline", ArchConfig.baseline(bb)),
        ("paper_default", ArchConfig.paper_default(bb)),
        ("scsa_stage4_only", ArchConfig(bb, (none, none, none, scsa))),
        ("scsa_stage12_only", ArchConfig(bb, (scsa, scsa, none, none))),
        ("se_end_all", ArchConfig(bb, (StageConfig("se", "end", "all"),) * 4)),
        ("eca_end_all", ArchConfig(bb, (StageConfig("eca", "end", "all"),) * 4)),
        ("cbam_end_all", ArchConfig(bb, (StageConfig("cbam", "end", "all"),) * 4)),
        ("scsa_end_all", ArchConfig(bb, (StageConfig.scsa(position="end"),) * 4)),
        ("scsa_global_4heads_softmax",
         ArchConfig(bb, (StageConfig.scsa(window=-1, heads=4, gate="softmax"),) * 4)),
        ("scsa_alternate_g8", ArchConfig(bb, (StageConfig.scsa(blocks="alternate", groups=8,
                                                                kernels=(3, 3, 5, 5, 7, 7, 9, 9)),) * 4)),
    ]
    space = SearchSpace(bb)
    seed = 0
    while len(hand) < n:
        arch = space.sample(seed)
        if all(arch != a for _, a in hand):
            hand.append((f"sample{seed}", arch))
        seed += 1
    return hand[:n]


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties handled); written out because pandas needs scipy for it and scipy is not required."""
    conc = disc = tx = ty = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def spearman(x: pd.Series, y: pd.Series) -> float:
    return x.rank().corr(y.rank())


def run_one(name: str, arch: ArchConfig, kind: str, fid, seed: int) -> dict:
    t0 = time.perf_counter()
    run = ProxyRun(arch, "fashion-mnist", fidelity=fid, seed=seed)
    history = run.run()
    return {"config": name, "kind": kind, "seed": seed, "accuracy": history[-1].accuracy,
            "time_s": time.perf_counter() - t0, "epochs": fid.epochs, "train_images": run.train_images,
            "resolution": fid.resolution, "config_json": arch.to_json()}


def zero_cost_rows(items: list[tuple[str, ArchConfig]], done: set) -> list[dict]:
    try:
        from evaluators.flops import measure
        from evaluators.zero_cost import zero_cost_scores
    except ImportError as e:  # zero-cost scores are optional for this benchmark
        print(f"zero-cost scores skipped: {e}")
        return []
    rows = []
    for name, arch in items:
        if (name, "zero_cost", 0) in done:
            continue
        t0 = time.perf_counter()
        scores = zero_cost_scores(arch)
        scores["gflops"] = measure(arch).gflops
        for key, value in scores.items():
            rows.append({"config": name, "kind": f"zc_{key}", "seed": 0, "accuracy": float(value),
                         "time_s": time.perf_counter() - t0, "config_json": arch.to_json()})
        rows.append({"config": name, "kind": "zero_cost", "seed": 0, "accuracy": float("nan"), "time_s": 0.0,
                     "config_json": arch.to_json()})
    return rows


def summarise(df: pd.DataFrame, preset: str) -> str:
    long = df[df.kind == "long"].groupby("config").accuracy.mean()
    lines = [f"configs with a long run: {len(long)}"]
    scores = {"proxy " + preset: df[df.kind == "proxy"].groupby("config").accuracy.mean()}
    for kind in sorted(k for k in df.kind.unique() if k.startswith("zc_")):
        s = df[df.kind == kind].groupby("config").accuracy.mean()
        # cost scores rank the other way round: fewer params/FLOPs is "better" only as a baseline direction
        scores[kind[3:]] = s
    for label, s in scores.items():
        common = long.index.intersection(s.index)
        if len(common) < 3:
            continue
        a, b = s[common], long[common]
        lines.append(f"{label:>24}: Spearman {spearman(a, b):+.3f}  Kendall {kendall_tau_b(list(a), list(b)):+.3f}"
                     f"  (n={len(common)})")
    for kind in ("proxy", "long"):
        rep = df[df.kind == kind].groupby("config").accuracy.agg(["std", "count"])
        rep = rep[rep["count"] >= 2]
        if len(rep):
            lines.append(f"seed-to-seed std of {kind} accuracy: mean {100 * rep['std'].mean():.2f} points over "
                         f"{len(rep)} configs")
    times = df[df.kind.isin(["proxy", "long"])].groupby("kind").time_s.mean()
    lines.append("mean seconds per run: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, preset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = df[df.kind == "long"].groupby("config").accuracy.mean()
    proxy = df[df.kind == "proxy"].groupby("config").accuracy.mean()
    common = long.index.intersection(proxy.index)
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=120)
    ax.scatter(100 * proxy[common], 100 * long[common], color="#4c72b0")
    for c in common:
        ax.annotate(c, (100 * proxy[c], 100 * long[c]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rho = spearman(proxy[common], long[common]) if len(common) >= 3 else float("nan")
    ax.set_xlabel(f"proxy ({preset}) validation accuracy (%)")
    ax.set_ylabel("long-run validation accuracy (%)")
    ax.set_title(f"resnet50 on Fashion-MNIST: proxy vs long run (Spearman {rho:+.2f}, n={len(common)})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--long-factor", type=int, default=10)
    ap.add_argument("--configs", type=int, default=14)
    ap.add_argument("--noise-configs", type=int, default=3, help="configs repeated with a second seed")
    ap.add_argument("--long-val-images", type=int, default=5000,
                    help="validation images for the long runs: the reference ranking must not drown in the "
                         "sampling noise of a 500-image estimate (~2 points)")
    ap.add_argument("--out", default=str(OUT / "proxy_fidelity.csv"))
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["config", "kind", "seed"])
    done = {(r.config, r.kind, int(r.seed)) for r in df.itertuples()}
    items = configs(args.configs)
    proxy_fid = fidelity(args.preset)
    # 10x longer: more images per epoch first (up to the whole split), then more epochs
    images = min(54000, (proxy_fid.train_images or 54000) * args.long_factor)
    epochs = math.ceil(proxy_fid.epochs * args.long_factor * (proxy_fid.train_images or 54000) / images)
    long_fid = fidelity(args.preset, train_images=images, epochs=max(epochs, proxy_fid.epochs),
                        val_images=max(args.long_val_images, proxy_fid.val_images or 0))
    print(f"proxy: {proxy_fid}\nlong:  {long_fid}")

    def save(rows: list[dict]) -> pd.DataFrame:
        nonlocal df
        df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True) if len(df) else pd.DataFrame(rows)
        tmp = out.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(out)
        return df

    if not args.summary_only:
        save(zero_cost_rows(items, done) or [])
        jobs = [(n, a, "proxy", proxy_fid, 0) for n, a in items]
        jobs += [(n, a, "proxy", proxy_fid, 1) for n, a in items[: args.noise_configs]]
        jobs += [(n, a, "long", long_fid, 0) for n, a in items]
        jobs += [(n, a, "long", long_fid, 1) for n, a in items[: args.noise_configs]]
        for name, arch, kind, fid, seed in jobs:
            if (name, kind, seed) in done:
                continue
            row = run_one(name, arch, kind, fid, seed)
            print(f"{kind:>5} seed {seed} {name:<28} acc {100 * row['accuracy']:.2f}%  {row['time_s']:.1f}s",
                  flush=True)
            save([row])
    print(summarise(df, args.preset))
    plot(df, out.with_suffix(".png"), args.preset)


if __name__ == "__main__":
    main()
