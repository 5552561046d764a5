"""Search where SCSA attention goes in a timm backbone: proxy accuracy up, GFLOPs down.

    python run_search.py --budget 200 --backbone resnet50
    python run_search.py --budget 6 --backbone resnet18 --proxy smoke --out runs/try
    python run_search.py --resume --out runs/try --budget 12        # continue, with a larger budget
    python run_search.py --backbone resnet50 --show-space            # what can be searched

Everything is checked before Ray starts: bad input ends with exit code 2 and one line on stderr, and nothing is
created or overwritten. The search itself lives in ``search`` (the only package that imports Ray).
"""

from __future__ import annotations

import argparse
import sys

from evaluators.cli import Parser, UsageError, integer, non_negative_int, positive_float, positive_int
from evaluators.data import DATASETS
from evaluators.fidelity import PRESETS, VERIFY_FORMS
from search.configure import DEFAULTS, validate
from search.settings import default_population

PROXIES: tuple[str, ...] = tuple(PRESETS)



def build_parser() -> argparse.ArgumentParser:
    """The CLI; its choices come from the registries and its stated defaults from ``search.configure.DEFAULTS``."""
    from results.select import SELECT_RULE_FORMS
    from search.samplers import SAMPLERS

    D = DEFAULTS  # noqa: N806 - short, in the help texts below

    ap = Parser(
        prog="run_search.py",
        description="Multi-objective search (proxy accuracy vs GFLOPs) over where SCSA attention goes in a timm "
        "backbone: Ray Tune runs proxy trainings, Optuna proposes configs, multi-objective ASHA stops weak ones.",
        epilog="Results in --out: trials.csv (every trial), pareto.csv / pareto.png (the front), best_config.json "
        "(+ .md, mmpretrain config), study.db (optuna-dashboard sqlite:///OUT/study.db). Exit codes: 0 done, "
        "1 disk full (free space, then --resume), 2 bad input or --out in use by another search, 130 interrupted "
        "(resume with --resume --out OUT).",
    )
    what = ap.add_argument_group("what to search")
    what.add_argument("--backbone", metavar="NAME",
                      help="timm model name, e.g. resnet18, resnet50, mobilenetv2_100, efficientnet_b0")
    what.add_argument("--budget", type=positive_int("trials to launch"), metavar="N",
                      help="trials to launch, references included")
    what.add_argument("--space", metavar="FILE", help="YAML/JSON file narrowing or widening the search space")
    what.add_argument("--objectives", metavar="LIST",
                      help="comma-separated: one proxy score (score = the preset's own; or accuracy, val_loss, loss, "
                           f"tse, tse_ema) + costs from gflops, params, latency (default {D['objectives']})")
    what.add_argument("--show-space", action="store_true", help="print the search space and exit")
    data = ap.add_argument_group("proxy training")
    data.add_argument("--dataset", choices=DATASETS, help=f"default {D['dataset']}")
    data.add_argument("--data-dir", metavar="DIR", help="where the dataset is (default: the usual places)")
    data.add_argument("--download", action="store_true", help="download the dataset if missing (once, before Ray)")
    data.add_argument("--proxy", choices=PROXIES, help=f"proxy fidelity preset (default {D['proxy']})")
    data.add_argument("--proxy-set", action="append", metavar="KEY=VALUE",
                      help="override one setting of the preset (repeatable), e.g. --proxy-set lr=0.01 "
                           "--proxy-set score=loss; any field of evaluators.proxy.Fidelity")
    data.add_argument("--device", metavar="DEV", help=f"auto | cpu | cuda | cuda:N (default {D['device']})")
    how = ap.add_argument_group("search strategy")
    how.add_argument("--sampler", choices=SAMPLERS, help=f"Optuna sampler (default {D['sampler']})")
    how.add_argument("--population-size", type=positive_int("NSGA-II population"),
                     metavar="N", help=f"NSGA-II population (default: a tenth of the budget, between "
                     f"{default_population(0)} and {default_population(10**9)})")
    how.add_argument("--seed", type=integer, metavar="S",
                     help=f"seed of the sampler and of every proxy training (default {D['seed']})")
    how.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                     help="after the two references, train the single-stage configs (the paper's SCSA in one stage "
                     f"at a time) before the sampler proposes (default {'on' if D['warm_start'] else 'off'})")
    how.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                     help="multi-objective ASHA: stop trials not in the top 1/eta by non-dominated rank at a rung "
                     f"(default {'on' if D['early_stopping'] else 'off'})")
    how.add_argument("--grace-period", type=positive_int("epochs"), metavar="EPOCHS",
                     help=f"first rung, in epochs (default {D['grace_period']})")
    how.add_argument("--reduction-factor", type=positive_int("eta >= 2"), metavar="ETA",
                     help=f"eta: keep 1/eta per rung (default {D['reduction_factor']})")
    how.add_argument("--select", metavar="RULE",
                     help=f"how to pick the best config from the front: {SELECT_RULE_FORMS} "
                     f"(default {D['select']})")
    run = ap.add_argument_group("running")
    run.add_argument("--out", metavar="DIR", help="results directory (default runs/<backbone>-<dataset>-<proxy>)")
    run.add_argument("--resume", action="store_true", help="continue the search in --out")
    run.add_argument("--time-budget", type=positive_float("minutes"), metavar="MIN",
                     help="stop launching and end running trials after MIN minutes (per session)")
    run.add_argument("--max-concurrent", type=positive_int("trials at once"), metavar="K",
                     help="trials at once (default: one per core, each with 1 CPU; one per GPU with GPUs)")
    run.add_argument("--cpus-per-trial", type=positive_int("CPUs"), metavar="N", help="CPUs (torch threads) per trial "
                     "(default 1; all cores / K when --max-concurrent K is given)")
    run.add_argument("--gpus-per-trial", type=positive_float("GPUs", allow_zero=True), metavar="G",
                     help="GPUs per trial, fractions allowed (default 1 where CUDA is available, else 0)")
    run.add_argument("--retries", type=non_negative_int, metavar="N",
                     help=f"retries of a failed trial (default {D['retries']})")
    run.add_argument("--verify", metavar="FIDELITY",
                     help="once the budget's trials are done, train the finalists (both references, then the front "
                          "as --select ranks it, then the configs nearest it) again at this higher fidelity, "
                          f"and choose on those numbers: {VERIFY_FORMS} (default {D['verify']})")
    run.add_argument("--verify-seeds", type=positive_int("paired seeds"), metavar="K",
                     help=f"paired seeds each finalist is verified with, the same for all (default "
                          f"{D['verify_seeds']})")
    run.add_argument("--replicates", type=non_negative_int, metavar="K",
                     help="train the finalists K more times at the proxy's own fidelity, with further seeds, "
                          f"before verification; 0: off (default {D['replicates']})")
    run.add_argument("--address", metavar="ADDR",
                     help="address of an existing Ray cluster (default: start a local one)")
    run.add_argument("--storage", metavar="PATH", help="Ray experiment storage, shared by all nodes on a cluster "
                     "(default OUT/ray)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``scsa-search``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from evaluators.train import main as train

        return train(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        result = validate(args)
    except UsageError as e:
        print(f"run_search.py: error: {e}", file=sys.stderr)
        return 2
    if args.show_space:
        print(result.summary())
        return 0
    settings = result
    from results.io import disk_full
    from search.out_lock import OutInUse
    from search.outcome import print_outcome
    from search.run import run

    resume_hint = f"python run_search.py --resume --out {settings.out}"
    try:
        outcome = run(settings)
    except KeyboardInterrupt:
        print(f"\naborted. Continue with: {resume_hint}", file=sys.stderr)
        return 130
    except ConnectionError as e:
        print(f"run_search.py: error: cannot reach the Ray cluster at {settings.address}: {e}", file=sys.stderr)
        return 2
    except OutInUse as e:
        print(f"run_search.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        full = disk_full(e)
        if full is not None:
            # Every write to --out is journaled or atomic: what finished is kept, what ran is run again.
            print(f"run_search.py: error: no space left on the disk of {full or settings.out}; every finished "
                  f"trial is kept. Free some space, then continue with: {resume_hint}", file=sys.stderr)
            return 1
        # A bug, not bad input: keep the traceback, but say that nothing recorded is lost.
        print(f"\nthe search stopped on an internal error (traceback below); every finished trial is in "
              f"{settings.out}/trials.csv. Continue with: {resume_hint}", file=sys.stderr)
        raise
    print_outcome(outcome, settings)
    if outcome.interrupted:
        print(f"interrupted. Continue with: {resume_hint}")
        return 130
    left = outcome.budget - outcome.launched_total
    if left > 0 and not outcome.exhausted:
        print(f"{left} trial(s) of the budget not launched. Continue with: {resume_hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
