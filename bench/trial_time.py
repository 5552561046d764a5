"""What SCSA's paper setting costs in time, against the plain backbone, side by side in one run.

Per backbone (default resnet50 and mobilenetv2_100), the plain backbone and the paper default (SCSA with the
paper's settings in every block) are measured in interleaved rounds (the order alternates from round to round, so
that a drift of the machine's speed falls on both), on one thread:

* ``trial``: one ``default`` proxy trial, as a search runs it (data, model, two epochs, validation), the same seed;
* ``fwdbwd``: the whole model's forward + backward at the proxy's size and memory format (48 px, batch 32, train
  mode, channels-last as the ``default`` preset trains), median of ``--steps``;
* ``infer``: the inference latency ratio at 224 px, batch 1, eval, no grad (``evaluators.latency.latency_ratio``,
  its own interleaved repeats, no cache);
* ``compiled``, ``uncompiled`` and ``compile-time``: ``fwdbwd`` under ``torch.compile`` (default mode), the same
  process's eager steps just before it (so that compiled and eager are measured side by side), and the one-off
  time of the first compiled step (tracing, inductor's code generation, the C++ build, with an empty inductor
  cache). Each model is compiled in a fresh process: torch.compile does not guard on forward hooks, which is how
  attention is attached, so a second model of the same timm class compiled in one process would silently run the
  first one's graph. Where torch.compile cannot run (no C++ compiler for inductor), the rows are skipped with the
  reason printed.

Each round is one row per measure in the CSV (``--out``, appended as it goes: an interrupted run resumes where it
stopped; ``--rounds`` counts the rows a measure should have). The summary is the median ratio over the rounds with
its range, beside the FLOPs ratio (fvcore, batch 1, at the measure's resolution), and is written as markdown beside
the CSV by every run:

    python bench/trial_time.py --out docs/bench/trial_time.csv [--rounds 3] [--backbones resnet50 mobilenetv2_100]
    python bench/trial_time.py --out docs/bench/trial_time.csv --summary-only
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluators.fidelity import Fidelity, preset  # noqa: E402
from evaluators.flops import measure  # noqa: E402
from evaluators.latency import latency_ratio  # noqa: E402
from evaluators.proxy import train_proxy  # noqa: E402
from space import ArchConfig  # noqa: E402
from space.build import build_model  # noqa: E402

MEASURES = ("trial", "fwdbwd", "infer", "compiled", "uncompiled", "compile-time")
#: Measured together by ``compiled_round``.
COMPILE_MEASURES = ("compiled", "uncompiled", "compile-time")
INFER_RESOLUTION = 224
COLUMNS = ["backbone", "measure", "round", "plain_s", "paper_s", "ratio", "threads", "torch", "date"]


def trial_seconds(arch: ArchConfig, seed: int = 0, fidelity: Fidelity | str = "default") -> float:
    """Wall seconds of one proxy trial of ``arch`` at ``fidelity`` (data, model, every epoch and its validation)."""
    start = time.perf_counter()
    for _ in train_proxy(arch, fidelity=fidelity, seed=seed):
        pass
    return time.perf_counter() - start


def _model_and_input(arch: ArchConfig) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model in train mode and a batch, at the ``default`` preset's size and memory format."""
    fid = preset("default")
    torch.manual_seed(0)
    # The preset's memory format: channels-last makes the plain backbone's convolutions 1.7x faster on
    # mobilenetv2_100 (93 vs 160 ms) and SCSA no faster, so measuring in NCHW understates the trial's ratio.
    fmt = torch.channels_last if fid.channels_last else torch.contiguous_format
    model = build_model(arch, num_classes=10).train().to(memory_format=fmt)
    return model, torch.randn(fid.batch_size, 3, fid.resolution, fid.resolution).contiguous(memory_format=fmt)


def _step_times(model: torch.nn.Module, step: torch.nn.Module, x: torch.Tensor, steps: int) -> list[float]:
    """Seconds of ``steps`` + 2 fwd+bwd steps of ``step`` (``model`` or its compiled self); the first two are
    warm-up (compiled, the first compiles)."""
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        step(x).logsumexp(1).mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return times


def _fwdbwd_s(arch: ArchConfig, steps: int) -> float:
    """Median seconds of one eager fwd+bwd step."""
    model, x = _model_and_input(arch)
    return statistics.median(_step_times(model, model, x, steps)[2:])


def _compiled_fwdbwd_s(arch: ArchConfig, steps: int) -> tuple[float, float, float]:
    """Median seconds of one fwd+bwd step compiled, of one eager step just before it in the same process, and the
    first compiled step's seconds (the compile time): in the order of ``COMPILE_MEASURES``."""
    model, x = _model_and_input(arch)
    eager = statistics.median(_step_times(model, model, x, steps)[2:])
    times = _step_times(model, torch.compile(model), x, steps)
    return statistics.median(times[2:]), eager, times[0]


def _init_compile_worker(cache_dir: str) -> None:
    torch.set_num_threads(1)
    # An empty cache: the compile time is a first compile's, not a lookup of an earlier round's kernels.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir


def _compiled_in_fresh_process(arch: ArchConfig, steps: int) -> tuple[float, float, float]:
    # A fresh process per model: see the module docstring (torch.compile reuses a graph across hook changes).
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as cache_dir, ProcessPoolExecutor(
            1, mp_context=spawn, initializer=_init_compile_worker, initargs=(cache_dir,)) as pool:
        return pool.submit(_compiled_fwdbwd_s, arch, steps).result()


def measure_round(backbone: str, what: str, round_: int, steps: int) -> dict:
    """One round of ``what`` for ``backbone``: plain and paper default back to back, the order alternating."""
    plain, paper = ArchConfig.baseline(backbone), ArchConfig.paper_default(backbone)
    if what in COMPILE_MEASURES:
        raise ValueError(f"{', '.join(COMPILE_MEASURES)} are measured together: call compiled_round")
    if what == "infer":
        r = latency_ratio(paper, INFER_RESOLUTION, 1, threads=1, repeats=9, warmup=3, use_cache=False)
        plain_s, paper_s = r.plain_ms / 1e3, r.config_ms / 1e3
        return _row(backbone, what, round_, plain_s, paper_s) | {"ratio": r.ratio}

    def run(arch: ArchConfig) -> float:
        return trial_seconds(arch) if what == "trial" else _fwdbwd_s(arch, steps)

    if round_ % 2:
        paper_s, plain_s = run(paper), run(plain)
    else:
        plain_s, paper_s = run(plain), run(paper)
    return _row(backbone, what, round_, plain_s, paper_s)


def _row(backbone: str, what: str, round_: int, plain_s: float, paper_s: float) -> dict:
    return {"backbone": backbone, "measure": what, "round": round_, "plain_s": plain_s, "paper_s": paper_s,
            "ratio": paper_s / plain_s, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def compiled_round(backbone: str, round_: int, steps: int) -> list[dict]:
    """One round of the compile measures for ``backbone``: plain and paper default, each compiled in its own
    process, the order alternating. Raises what torch.compile raised where it cannot run."""
    plain, paper = ArchConfig.baseline(backbone), ArchConfig.paper_default(backbone)
    if round_ % 2:
        paper_t, plain_t = _compiled_in_fresh_process(paper, steps), _compiled_in_fresh_process(plain, steps)
    else:
        plain_t, paper_t = _compiled_in_fresh_process(plain, steps), _compiled_in_fresh_process(paper, steps)
    return [_row(backbone, what, round_, a, b) for what, a, b in zip(COMPILE_MEASURES, plain_t, paper_t)]


def flops_ratio(backbone: str, what: str) -> float:
    resolution = INFER_RESOLUTION if what == "infer" else preset("default").resolution
    classes = 1000 if what == "infer" else 10
    plain = measure(ArchConfig.baseline(backbone), resolution, classes).flops
    return measure(ArchConfig.paper_default(backbone), resolution, classes).flops / plain


def summary(df: pd.DataFrame) -> str:
    """Markdown: per backbone and measure, the median paper/plain ratio over the rounds, its range, the FLOPs'."""
    lines = ["| backbone | measure | rounds | plain (s, median) | paper default (s, median) | ratio, median "
             "[min, max] | FLOPs ratio |", "|---|---|---:|---:|---:|---:|---:|"]
    order = {b: i for i, b in enumerate(dict.fromkeys(df.backbone))}  # backbones as first measured, measures as listed
    df = df.assign(_b=df.backbone.map(order), _m=df.measure.map(MEASURES.index))
    df = df.sort_values(["_b", "_m"], kind="stable")
    for (backbone, what), g in df.groupby(["backbone", "measure"], sort=False):
        lines.append(f"| {backbone} | {what} | {len(g)} | {g.plain_s.median():.4g} | {g.paper_s.median():.4g} | "
                     f"{g.ratio.median():.2f}× [{g.ratio.min():.2f}, {g.ratio.max():.2f}] | "
                     f"{flops_ratio(backbone, what):.3f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenetv2_100"])
    ap.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES))
    ap.add_argument("--rounds", type=int, default=3, help="rows per backbone and measure (default 3)")
    ap.add_argument("--steps", type=int, default=7, help="timed fwd+bwd steps per model and round (default 7)")
    ap.add_argument("--out", default="bench/out/trial_time.csv", help="raw rows (appended; resumed from)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be at least 1")
    out = Path(args.out)
    torch.set_num_threads(1)  # as a search's trials run: one CPU each
    df = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=COLUMNS)
    if not args.summary_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        # the compile measures are measured together, as "compiled"
        measures = list(dict.fromkeys("compiled" if m in COMPILE_MEASURES else m for m in args.measures))
        for backbone in args.backbones:
            for what in measures:
                done = set(df[(df.backbone == backbone) & (df.measure == what)]["round"].astype(int))
                for r in range(args.rounds):
                    if r in done:
                        continue
                    if what == "compiled":
                        try:
                            rows = compiled_round(backbone, r, args.steps)
                        except Exception as e:  # e.g. no C++ compiler for inductor: say why, go on with the rest
                            print(f"{backbone}: the compiled measures failed ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); compiled rows skipped", flush=True)
                            break
                    else:
                        rows = [measure_round(backbone, what, r, args.steps)]
                    for row in rows:
                        print(f"{backbone:<16} {row['measure']:<12} round {r}: plain {row['plain_s']:.4g} s, "
                              f"paper default {row['paper_s']:.4g} s, ratio {row['ratio']:.3f}", flush=True)
                    pd.DataFrame(rows, columns=COLUMNS).to_csv(out, mode="a", header=not out.exists(), index=False)
                    df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True)
    if df.empty:
        print(f"no rows yet in {out}")
        return 0
    md = summary(df)
    md_path = out.with_suffix(".md")
    md_path.write_text(f"<!-- written by `python bench/trial_time.py --out {out} --summary-only` -->\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
