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
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from search.settings import SearchSettings

PROXIES = ("smoke", "fast", "default", "thorough")
SEARCH_FILES = ("search.json", "study.db", "launched.jsonl", "trials.csv", "trials.parquet")


class UsageError(Exception):
    """Bad input: one line for stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block) so that scripts and people see the reason only."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _positive_int(what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive integer ({what}), got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer ({what}), got {text!r}")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(what: str, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a number {bound} ({what}), got {text!r}")
        return value

    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from search.samplers import SAMPLERS

    ap = _Parser(
        prog="run_search.py",
        description="Multi-objective search (proxy accuracy vs GFLOPs) over where SCSA attention goes in a timm "
        "backbone: Ray Tune runs proxy trainings, Optuna proposes configs, multi-objective ASHA stops weak ones.",
        epilog="Results in --out: trials.csv (every trial), pareto.csv / pareto.png (the front), best_config.json "
        "(+ .md, mmpretrain config), study.db (optuna-dashboard sqlite:///OUT/study.db). Exit codes: 0 done, "
        "2 bad input, 130 interrupted (resume with --resume --out OUT).",
    )
    what = ap.add_argument_group("what to search")
    what.add_argument("--backbone", metavar="NAME",
                      help="timm model name, e.g. resnet18, resnet50, mobilenetv2_100, efficientnet_b0")
    what.add_argument("--budget", type=_positive_int("trials to launch"), metavar="N",
                      help="trials to launch, references included")
    what.add_argument("--space", metavar="FILE", help="YAML/JSON file narrowing or widening the search space")
    what.add_argument("--objectives", metavar="LIST",
                      help="comma-separated: one proxy score (score = the preset's own; or accuracy, val_loss, loss, "
                           "tse, tse_ema) + costs from gflops, params, latency (default score,gflops)")
    what.add_argument("--show-space", action="store_true", help="print the search space and exit")
    data = ap.add_argument_group("proxy training")
    data.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder"),
                      help="default fashion-mnist")
    data.add_argument("--data-dir", metavar="DIR", help="where the dataset is (default: the usual places)")
    data.add_argument("--download", action="store_true", help="download the dataset if missing (once, before Ray)")
    data.add_argument("--proxy", choices=PROXIES, help="proxy fidelity preset (default: default)")
    data.add_argument("--proxy-set", action="append", metavar="KEY=VALUE",
                      help="override one setting of the preset (repeatable), e.g. --proxy-set lr=0.01 "
                           "--proxy-set score=loss; any field of evaluators.proxy.Fidelity")
    data.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N (default auto)")
    how = ap.add_argument_group("search strategy")
    how.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default nsga2)")
    how.add_argument("--population-size", type=_positive_int("NSGA-II population"),
                     metavar="N", help="NSGA-II population (default: budget/4, between 4 and 50)")
    how.add_argument("--seed", type=_int, metavar="S",
                     help="seed of the sampler and of every proxy training (default 0)")
    how.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                     help="multi-objective ASHA: stop trials not in the top 1/eta by non-dominated rank at a rung "
                     "(default on)")
    how.add_argument("--grace-period", type=_positive_int("epochs"), metavar="EPOCHS",
                     help="first rung, in epochs (default 1)")
    how.add_argument("--reduction-factor", type=_positive_int("eta >= 2"), metavar="ETA",
                     help="eta: keep 1/eta per rung (default 3)")
    how.add_argument("--select", metavar="RULE",
                     help="how to pick the best config from the front: knee (default), max-accuracy, "
                     "max-accuracy-under:GFLOPS, min-gflops-over:ACC")
    run = ap.add_argument_group("running")
    run.add_argument("--out", metavar="DIR", help="results directory (default runs/<backbone>-<dataset>-<proxy>)")
    run.add_argument("--resume", action="store_true", help="continue the search in --out")
    run.add_argument("--time-budget", type=_positive_float("minutes"), metavar="MIN",
                     help="stop launching and end running trials after MIN minutes (per session)")
    run.add_argument("--max-concurrent", type=_positive_int("trials at once"), metavar="K",
                     help="trials at once (default: one per core, each with 1 CPU; one per GPU with GPUs)")
    run.add_argument("--cpus-per-trial", type=_positive_int("CPUs"), metavar="N", help="CPUs (torch threads) per trial "
                     "(default 1; all cores / K when --max-concurrent K is given)")
    run.add_argument("--gpus-per-trial", type=_positive_float("GPUs", allow_zero=True), metavar="G",
                     help="GPUs per trial, fractions allowed (default 1 where CUDA is available, else 0)")
    run.add_argument("--retries", type=_non_negative_int, metavar="N", help="retries of a failed trial (default 0)")
    run.add_argument("--replicates", type=_non_negative_int, metavar="K",
                     help="once the budget's trials are done, train the finalists (front, configs within the noise "
                          f"band, both references) K more times with further seeds; 0: off (default "
                          f"{SearchSettings.replicates})")
    run.add_argument("--address", metavar="ADDR",
                     help="address of an existing Ray cluster (default: start a local one)")
    run.add_argument("--storage", metavar="PATH", help="Ray experiment storage, shared by all nodes on a cluster "
                     "(default OUT/ray)")
    return ap


DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "proxy": "default",
    "objectives": "score,gflops",
    "sampler": "nsga2",
    "seed": 0,
    "early_stopping": True,
    "grace_period": 1,
    "reduction_factor": 3,
    "select": "knee",
    "device": "auto",
    "retries": 0,
    "replicates": SearchSettings.replicates,
    "gpus_per_trial": 0.0,
}


GIB_PER_TRIAL = 3  # a CPU proxy trial (Ray worker, torch, data in memory, activations): ample for resnet50 at 64 px


def _total_memory_gib() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30)
    except (ValueError, OSError, AttributeError):  # not POSIX: do not let memory limit concurrency
        return 1 << 20


def _default_out(backbone: str, dataset: str, proxy: str) -> Path:
    return Path("runs") / f"{backbone}-{dataset}-{proxy}"


def _holds_search(out: Path) -> bool:
    return any((out / name).exists() for name in SEARCH_FILES)


def validate(args: argparse.Namespace):
    """Turn parsed arguments into ``SearchSettings`` (or ``None`` after --show-space); ``UsageError`` if bad.

    Touches nothing on disk except reading; downloads the dataset only with --download.
    """
    from search.settings import SEARCH_DEFINING, objective_columns

    manifest: dict[str, Any] = {}
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "show_space")}
    if args.download is False:
        given.pop("download", None)

    # -- where: --out, and what it holds ------------------------------------------------------------------------
    if args.out is None and args.resume and not args.backbone:
        raise UsageError("--resume needs --out DIR (the directory of the search to continue)")
    if args.resume:
        out = Path(args.out) if args.out else _default_out(args.backbone, args.dataset or DEFAULTS["dataset"],
                                                            args.proxy or DEFAULTS["proxy"])
        try:
            manifest = SearchSettings.read_manifest(out)
        except FileNotFoundError:
            raise UsageError(f"--resume: no search to resume in {out} (no search.json); "
                             "start one without --resume") from None
        except ValueError as e:
            raise UsageError(f"--resume: {e}") from None
    values = {**DEFAULTS, **_manifest_as_args(manifest), **given}

    # -- the backbone and the space -----------------------------------------------------------------------------
    if not values.get("backbone"):
        raise UsageError("--backbone is required (a timm model name, e.g. resnet18 or resnet50)")
    backbone = values["backbone"]
    from space import SearchSpace
    from space.backbones import UnsupportedBackboneError

    try:
        SearchSpace(backbone)
    except UnsupportedBackboneError as e:
        raise UsageError(str(e)) from None
    space_spec = manifest.get("space_spec")
    if args.space is not None:
        space_spec = _read_space(backbone, args.space)
    try:
        space = SearchSpace.from_spec(backbone, space_spec)
    except ValueError as e:
        raise UsageError(f"space: {e}") from None
    if args.show_space:
        return space

    # -- the rest of the settings --------------------------------------------------------------------------------
    if values.get("budget") is None:
        raise UsageError("--budget N is required: the number of trials to launch (e.g. --budget 200)")
    from evaluators.proxy import fidelity, parse_overrides

    try:
        proxy_set = parse_overrides(args.proxy_set) if args.proxy_set else manifest.get("proxy_set")
    except ValueError as e:
        raise UsageError(f"--proxy-set: {e}") from None
    try:
        fid = fidelity(values["proxy"], **(proxy_set or {}))
    except ValueError as e:
        raise UsageError(f"--proxy{'-set' if proxy_set else ''}: {e}") from None
    fid_settings = {k: v for k, v in fid.to_dict().items() if k != "threads"}  # threads are per trial, not per search
    try:
        objectives = objective_columns(values["objectives"], fid.score)
    except ValueError as e:
        raise UsageError(str(e)) from None
    from search.samplers import check_sampler

    try:
        check_sampler(values["sampler"], len(objectives))
    except ValueError as e:
        raise UsageError(str(e)) from None
    from results.select import parse_select_rule

    try:
        parse_select_rule(values["select"])
    except ValueError as e:
        raise UsageError(f"--select: {e}") from None
    if values["reduction_factor"] < 2:
        raise UsageError(f"--reduction-factor must be an integer >= 2, got {values['reduction_factor']}")

    data_dir = values.get("data_dir")
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir() and not args.download:
            raise UsageError(f"--data-dir {data_dir} does not exist (or is not a directory); give the folder that "
                             f"holds the {values['dataset']} files, or add --download")
        data_dir = str(Path(data_dir).expanduser().resolve())
    from evaluators.data import DatasetNotFoundError, check_dataset

    try:
        info = check_dataset(values["dataset"], data_dir, download=bool(args.download))
    except (DatasetNotFoundError, ValueError, OSError) as e:
        raise UsageError(f"dataset {values['dataset']}: {e}") from None

    local = not values.get("address")
    device = values["device"]
    if local:
        from evaluators.device import resolve_device

        try:
            resolve_device(device)
        except ValueError as e:
            raise UsageError(f"--device: {e}") from None
    gpus = float(values["gpus_per_trial"])
    if local and "gpus_per_trial" not in given and device != "cpu":
        import torch

        # Ray hides GPUs from trials that did not ask for one: on a GPU machine, give each trial one by default.
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if local and gpus == 0 and device.startswith("cuda"):
        raise UsageError(f"--device {device} needs --gpus-per-trial > 0: Ray hides GPUs from trials that did not "
                         "ask for one")
    if local and gpus > 0:
        import torch

        n_gpus = torch.cuda.device_count()
        if n_gpus == 0:
            raise UsageError(f"--gpus-per-trial {gpus:g}: this machine has no CUDA GPU; leave it at 0 or use --address")
        if gpus > n_gpus:
            raise UsageError(f"--gpus-per-trial {gpus:g} exceeds the {n_gpus} GPU(s) here")
    cores = os.cpu_count() or 1
    max_concurrent = given.get("max_concurrent")
    cpus = given.get("cpus_per_trial")
    if local:
        if cpus is not None and cpus > cores:
            raise UsageError(f"--cpus-per-trial {cpus} exceeds the {cores} CPU cores of this machine")
        if max_concurrent is None:
            # One single-threaded trial per core: on 2 cores, 2 x 1 thread ran the fast proxy ~1.3x faster than
            # 1 x 2 threads (and never suffers OpenMP spin-waiting on a busy machine); capped by memory.
            max_concurrent = max(1, min(cores // (cpus or 1), _total_memory_gib() // GIB_PER_TRIAL))
            if gpus > 0:
                max_concurrent = min(max_concurrent, max(1, int(torch.cuda.device_count() // gpus)))
        if cpus is None:
            cpus = max(1, cores // max_concurrent)
        if cpus * max_concurrent > cores:
            raise UsageError(f"--max-concurrent {max_concurrent} x --cpus-per-trial {cpus} needs "
                             f"{cpus * max_concurrent} cores; this machine has {cores}")
    else:
        cpus = cpus or 1
        max_concurrent = max_concurrent or 1

    budget = int(values["budget"])
    population = values.get("population_size") or max(4, min(50, budget // 4))
    settings_values = dict(
        backbone=backbone, budget=budget, dataset=values["dataset"], data_dir=data_dir,
        download=bool(args.download), proxy=values["proxy"], proxy_set=proxy_set or None, objectives=objectives,
        sampler=values["sampler"],
        seed=int(values["seed"]), space_spec=space_spec, select=values["select"], device=device,
        time_budget_min=given.get("time_budget"), max_concurrent=max_concurrent, cpus_per_trial=cpus,
        gpus_per_trial=gpus, address=values.get("address"),
        storage=_storage(values.get("storage")),
        early_stopping=bool(values["early_stopping"]), grace_period=int(values["grace_period"]),
        reduction_factor=int(values["reduction_factor"]), retries=int(values["retries"]),
        replicates=int(values["replicates"]),
        population_size=int(population), resolution=224, num_classes=info.num_classes, epochs=fid.epochs,
        fidelity=fid_settings,
    )

    # -- the output directory ------------------------------------------------------------------------------------
    out = Path(args.out) if args.out else _default_out(backbone, values["dataset"], values["proxy"])
    if args.resume:
        for key in SEARCH_DEFINING:
            if key == "fidelity" and manifest.get(key) and _differs(fid_settings, manifest[key]):
                changed = sorted(k for k in fid_settings if fid_settings[k] != manifest[key].get(k))
                raise UsageError(f"--resume: the proxy preset {values['proxy']!r} changed since this search started "
                                 f"({', '.join(changed)}); its trials would not be comparable: start a new search")
            if key == "fidelity":
                continue
            if key in manifest and _differs(settings_values.get(key), manifest[key]):
                flag = {"space_spec": "space", "objectives": "objectives"}.get(key, key).replace("_", "-")
                raise UsageError(f"--resume: --{flag} {_show(settings_values[key])} conflicts with the search in "
                                 f"{out} ({_show(manifest[key])}); drop it or start a new search in another --out")
        from search.ledger import Ledger

        launched = Ledger.open(out, objectives).trials_launched()
        if budget < launched:
            raise UsageError(f"--budget {budget} is below the {launched} trials already launched in {out}; "
                             f"give --budget {launched} or more")
    elif out.exists():
        if _holds_search(out):
            raise UsageError(f"{out} already holds a search; continue it with --resume, or choose another --out")
        if not out.is_dir() or any(out.iterdir()):
            raise UsageError(f"--out {out} exists and is not an empty directory; choose a new or empty one")
    _check_creatable(out)
    settings_values["out"] = str(out.resolve())
    return SearchSettings(resume=bool(args.resume), **settings_values)


def _check_creatable(out: Path) -> None:
    """``UsageError`` unless ``out`` is, or can be created as, a directory this process may write into."""
    ancestor = out.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is a file, not a directory; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {ancestor} is not writable; choose another --out")


def _storage(text: str | None) -> str | None:
    """``--storage`` as Ray takes it: a URI unchanged, a path made absolute (trials run in other directories)."""
    if not text:
        return None
    return text if "://" in text else str(Path(text).expanduser().resolve())


def _manifest_as_args(manifest: dict[str, Any]) -> dict[str, Any]:
    """Manifest values under the CLI's argument names (for settings not given on the command line)."""
    if not manifest:
        return {}
    values = {k: manifest[k] for k in ("backbone", "budget", "dataset", "data_dir", "proxy", "sampler", "seed",
                                        "select", "device", "early_stopping", "grace_period", "reduction_factor",
                                        "retries", "replicates", "population_size", "address", "storage")
              if k in manifest}
    values["objectives"] = ",".join(manifest.get("objectives", ["accuracy", "gflops"]))
    return values


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) != list(b)
    return a != b


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values()):
        return " ".join(f"{k}={v}" for k, v in value.items())  # --proxy-set
    if isinstance(value, dict):
        return "a different space"
    return str(value)


def _read_space(backbone: str, path: str) -> Any:
    """The parsed space file (kept in the manifest), checked by building the space from it."""
    import yaml

    from space import SearchSpace

    try:
        SearchSpace.from_file(backbone, path)
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"--space: {e}") from None


def _print_outcome(outcome, settings) -> None:
    out = outcome.out
    c = outcome.counts
    print(f"\n{sum(c.values())} trial(s) recorded of a budget of {outcome.budget}: completed {c['completed']}, "
          f"stopped {c['stopped']}, failed {c['failed']}"
          + (f"; {outcome.duplicates} duplicate suggestion(s) answered from earlier trials" if outcome.duplicates
             else ""))
    r = outcome.replicate_counts
    if r and sum(r.values()):
        print(f"{sum(r.values())} replicate run(s) of the finalists: completed {r['completed']}, failed "
              f"{r['failed']}" + (f", cut short {r['stopped']}" if r["stopped"] else ""))
    if outcome.noise:
        print(outcome.noise)
    if outcome.exhausted:
        print("the sampler kept proposing configs tried already: the space looks exhausted")
    if outcome.timed_out:
        print(f"time budget of {settings.time_budget_min:g} min reached")
    print(f"results in {out}:")
    shown = {"trials.csv", "pareto.csv", "pareto.png", "best_config.json", "best_config.md"}
    for name, path in sorted(outcome.written.items()):
        if name in shown or "mmpretrain" in str(path):
            print(f"  {name:<18} {path}")
    print(f"  {'study.db':<18} {out / 'study.db'}  (optuna-dashboard sqlite:///{out / 'study.db'})")
    best = outcome.best
    if best is not None:
        seeds, score = int(best.get("seeds", 1) or 1), settings.objectives[0]
        print(f"chosen by {settings.select}: {best['trial_id']} {score} {float(best[score]):.4f}"
              + (f" (mean of {seeds} seeds)" if seeds > 1 else "") + f", {float(best['gflops']):.3f} GFLOPs")
        if outcome.note:
            print(f"  {outcome.note}")
        try:
            import json

            from space import ArchConfig

            print(f"  {ArchConfig.from_dict(json.loads(best['config_json'])).describe()}")
        except Exception:  # the id and numbers above are what matter
            pass
    elif outcome.reason:
        print(f"no config chosen: {outcome.reason}")


def train_main(argv: list[str]) -> int:
    """``run_search.py train --config best_config.json --epochs N``: full training of an exported config."""
    from evaluators.train import CHECKPOINT

    ap = _Parser(prog="run_search.py train", description="Train an exported architecture with the full-training "
                 "recipe (whole training split, crop + flip, AdamW, warm-up + cosine, label smoothing); a checkpoint "
                 "every epoch, so running the same command again continues an interrupted training. Writes "
                 "model.pth (state dict), metrics.json (val and test accuracy), arch.json.")
    ap.add_argument("--config", required=True, help="best_config.json of a search (an ArchConfig)")
    ap.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "cifar10", "cifar100",
                                                                   "imagefolder"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--epochs", type=_positive_int("--epochs"), default=30)
    ap.add_argument("--resolution", type=_positive_int("--resolution"), default=64, help="input px (default 64)")
    ap.add_argument("--batch-size", type=_positive_int("--batch-size"), default=64)
    ap.add_argument("--lr", type=_positive_float("AdamW learning rate"), default=2e-3)
    ap.add_argument("--seed", type=_int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="default: train-<backbone>-<dataset>")
    try:
        args = ap.parse_args(argv)
        from evaluators.data import DatasetNotFoundError, check_dataset
        from evaluators.device import resolve_device
        from space.timm_models import load_arch

        try:
            raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read --config {args.config}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {args.config} is not valid JSON: {e.msg} at line {e.lineno}") from None
        try:
            from space import ArchConfig

            arch = ArchConfig.from_dict(raw).validate()
            load_arch(arch, arch.backbone)
            check_dataset(args.dataset, args.data_dir, args.download)
            resolve_device(args.device)
        except (ValueError, DatasetNotFoundError) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        out = Path(args.out or f"train-{arch.backbone}-{args.dataset}")
        if (out / "model.pth").exists():
            raise UsageError(f"{out} already holds a trained model.pth; choose another --out")
        if out.exists() and not (out / CHECKPOINT).exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} exists and is neither empty nor an interrupted training; choose another")
        _check_creatable(out)
    except UsageError as e:
        print(f"run_search.py train: error: {e}", file=sys.stderr)
        return 2
    from evaluators.proxy import TrainingDiverged
    from evaluators.train import CheckpointError, train_full

    def started(run) -> None:
        again = f", continuing after epoch {run.epoch} ({out / CHECKPOINT})" if run.epoch else ""
        print(f"training {arch.describe()}: {run.train_images} images per epoch at {run.fidelity.resolution} px, "
              f"{run.fidelity.epochs} epoch(s), batch {run.fidelity.batch_size}, {run.device}{again}", flush=True)

    def show(r) -> None:
        print(f"epoch {r.epoch}/{r.epochs}: val accuracy {100 * r.accuracy:.2f}%, train loss {r.loss:.4f}, "
              f"{r.time_s:.0f}s", flush=True)

    try:
        metrics = train_full(arch, out, epochs=args.epochs, dataset=args.dataset, data_dir=args.data_dir,
                             resolution=args.resolution, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             device=args.device, download=args.download, on_epoch=show, on_start=started)
    except CheckpointError as e:
        print(f"run_search.py train: error: {e}; choose another --out", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"run_search.py train: {e}; try a lower --lr", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; the last finished epoch is in {out / CHECKPOINT}: run the same command to continue")
        return 130
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}%; wrote {out}/model.pth, metrics.json, arch.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``scsa-search``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
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
    except Exception:
        # A bug, not bad input: keep the traceback, but say that nothing recorded is lost.
        print(f"\nthe search stopped on an internal error (traceback below); every finished trial is in "
              f"{settings.out}/trials.csv. Continue with: {resume_hint}", file=sys.stderr)
        raise
    _print_outcome(outcome, settings)
    if outcome.interrupted:
        print(f"interrupted. Continue with: {resume_hint}")
        return 130
    left = outcome.budget - outcome.launched_total
    if left > 0 and not outcome.exhausted:
        print(f"{left} trial(s) of the budget not launched. Continue with: {resume_hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
