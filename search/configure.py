"""From the command line to :class:`~search.settings.SearchSettings`, checked before Ray starts.

:func:`validate` takes parsed arguments through a few named steps: **merge** (defaults, then the manifest of a
search being resumed, then what was given), the **space**, the **search** itself (proxy, objectives, sampler,
selection rule, data), the **resources** (device, GPUs, concurrency), and the **output** (a resume must agree with
the search it continues; a new search needs an empty, writable ``--out``). Any bad input is a
:class:`UsageError`: one line for stderr, exit code 2, and nothing created or overwritten. No Ray here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from evaluators.cli import UsageError, check_creatable
from results.schema import SEARCH_FILES

from .settings import DEFAULT_OBJECTIVES, SEARCH_DEFINING, SearchSettings, kept_fidelity, objective_columns

__all__ = ["DEFAULTS", "UsageError", "default_out", "validate"]

GIB_PER_TRIAL = 3  # a CPU proxy trial (Ray worker, torch, data in memory, activations): ample for resnet50 at 64 px
#: Settings of one session only: a resume takes them from its own command line, never from the manifest.
PER_SESSION = ("download", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "time_budget_min")
#: The CLI's defaults: SearchSettings' own, and the objectives as the CLI writes them (the preset's score first).
DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(SearchSettings) if f.default is not MISSING and f.name not in PER_SESSION},
    "objectives": DEFAULT_OBJECTIVES,
    "gpus_per_trial": SearchSettings.gpus_per_trial,
}


@contextmanager
def _usage(prefix: str = "") -> Iterator[None]:
    """A ``ValueError`` (or a missing dataset) inside becomes a :class:`UsageError` line, ``prefix`` first."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise UsageError(f"{prefix}{' '.join(str(e).split()) or type(e).__name__}") from None


def default_out(backbone: str, dataset: str, proxy: str) -> Path:
    return Path("runs") / f"{backbone}-{dataset}-{proxy}"


def validate(args: argparse.Namespace):
    """Turn parsed arguments into ``SearchSettings`` (or the ``SearchSpace`` with --show-space); ``UsageError`` if
    bad. Touches nothing on disk except reading; downloads the dataset only with --download."""
    values, manifest = _merge(args)
    backbone, space, space_spec = _space(args, values, manifest)
    if args.show_space:
        return space
    settings = {"backbone": backbone, "space_spec": space_spec, **_search(args, values, manifest),
                **_resources(values)}
    out = Path(args.out) if args.out else default_out(backbone, values["dataset"], values["proxy"])
    _output(args, out, settings, manifest)
    return SearchSettings(out=str(out.resolve()), resume=bool(args.resume), **settings)


def _merge(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Defaults, then the manifest of the search to resume, then what the command line gave (``given`` names
    those); and the manifest."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "show_space")}
    if given.get("time_budget") is not None:
        given["time_budget_min"] = given.pop("time_budget")
    if args.download is False:
        given.pop("download", None)
    manifest: dict[str, Any] = {}
    if args.resume:
        if args.out is None and not args.backbone:
            raise UsageError("--resume needs --out DIR (the directory of the search to continue)")
        out = Path(args.out) if args.out else default_out(args.backbone, args.dataset or DEFAULTS["dataset"],
                                                           args.proxy or DEFAULTS["proxy"])
        try:
            manifest = SearchSettings.read_manifest(out)
        except FileNotFoundError:
            raise UsageError(f"--resume: no search to resume in {out} (no search.json); "
                             "start one without --resume") from None
        except ValueError as e:
            raise UsageError(f"--resume: {e}") from None
    # The manifest's settings under the CLI's names: every field the command line also takes, but a session's own.
    carried = {k: manifest[k] for k in vars(args) if k in manifest and k not in PER_SESSION}
    if "objectives" in manifest:
        carried["objectives"] = ",".join(manifest["objectives"])
    return {**DEFAULTS, **carried, **given, "given": set(given)}, manifest


def _space(args: argparse.Namespace, values: dict[str, Any], manifest: dict[str, Any]):
    from space import SearchSpace

    if not values.get("backbone"):
        raise UsageError("--backbone is required (a timm model name, e.g. resnet18 or resnet50)")
    backbone = values["backbone"]
    with _usage():
        SearchSpace(backbone)
    space_spec = manifest.get("space_spec")
    if args.space is not None:
        import yaml

        with _usage("--space: "):
            SearchSpace.from_file(backbone, args.space)
            space_spec = yaml.safe_load(Path(args.space).read_text(encoding="utf-8"))
    with _usage("space: "):
        space = SearchSpace.from_spec(backbone, space_spec)
    return backbone, space, space_spec


def _search(args: argparse.Namespace, values: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """What the search is: budget, proxy (and its overrides), objectives, sampler, rule, data."""
    from evaluators.data import DatasetNotFoundError, check_dataset
    from evaluators.proxy import parse_overrides, preset
    from results.select import parse_select_rule

    from .samplers import check_sampler

    if values.get("budget") is None:
        raise UsageError("--budget N is required: the number of trials to launch (e.g. --budget 200)")
    with _usage("--proxy-set: "):
        proxy_set = parse_overrides(args.proxy_set) if args.proxy_set else manifest.get("proxy_set")
    with _usage(f"--proxy{'-set' if proxy_set else ''}: "):
        fid = preset(values["proxy"], **(proxy_set or {}))
    with _usage():
        objectives = objective_columns(values["objectives"], fid.score)
        check_sampler(values["sampler"], len(objectives))
    with _usage("--select: "):
        parse_select_rule(values["select"])
    if values["reduction_factor"] < 2:
        raise UsageError(f"--reduction-factor must be an integer >= 2, got {values['reduction_factor']}")
    data_dir = values.get("data_dir")
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir() and not args.download:
            raise UsageError(f"--data-dir {data_dir} does not exist (or is not a directory); give the folder that "
                             f"holds the {values['dataset']} files, or add --download")
        data_dir = str(Path(data_dir).expanduser().resolve())
    try:
        info = check_dataset(values["dataset"], data_dir, download=bool(args.download))
    except (DatasetNotFoundError, ValueError, OSError) as e:
        raise UsageError(f"dataset {values['dataset']}: {e}") from None
    budget = int(values["budget"])
    return dict(
        budget=budget, dataset=values["dataset"], data_dir=data_dir, download=bool(args.download),
        proxy=values["proxy"], proxy_set=proxy_set or None, objectives=objectives, sampler=values["sampler"],
        seed=int(values["seed"]), select=values["select"], device=values["device"],
        time_budget_min=values.get("time_budget_min"), address=values.get("address"),
        storage=values.get("storage") or None,  # made absolute where Ray needs it (SearchSettings.storage_path)
        early_stopping=bool(values["early_stopping"]), grace_period=int(values["grace_period"]),
        reduction_factor=int(values["reduction_factor"]), retries=int(values["retries"]),
        replicates=int(values["replicates"]), verify=str(values["verify"]).strip().lower(),
        verify_seeds=int(values["verify_seeds"]), verify_fidelity=_verify_fidelity(values["verify"], fid),
        population_size=values.get("population_size"),  # None: SearchSettings resolves it from the budget
        warm_start=bool(values["warm_start"]),
        num_classes=info.num_classes, epochs=fid.epochs,
        fidelity=kept_fidelity(fid),
    )


def _verify_fidelity(spec: str, fid) -> dict[str, Any] | None:
    """``--verify``'s fidelity as the search keeps it (None: off); ``UsageError`` for a spec that is none."""
    from evaluators.fidelity import verification

    with _usage():
        checked = verification(fid, spec)
    return None if checked is None else kept_fidelity(checked)


def _total_memory_gib() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30)
    except (ValueError, OSError, AttributeError):  # not POSIX: do not let memory limit concurrency
        return 1 << 20


def _resources(values: dict[str, Any]) -> dict[str, Any]:
    """Device, GPUs per trial, trials at a time and CPUs each: checked against this machine unless on a cluster."""
    local = not values.get("address")
    device = values["device"]
    gpus = float(values["gpus_per_trial"])
    max_concurrent, cpus = values.get("max_concurrent"), values.get("cpus_per_trial")
    if not local:
        return {"gpus_per_trial": gpus, "max_concurrent": max_concurrent or 1, "cpus_per_trial": cpus or 1}
    import torch

    from evaluators.device import resolve_device

    with _usage("--device: "):
        resolve_device(device)
    if "gpus_per_trial" not in values["given"] and device != "cpu":
        # Ray hides GPUs from trials that did not ask for one: on a GPU machine, give each trial one by default.
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if gpus == 0 and device.startswith("cuda"):
        raise UsageError(f"--device {device} needs --gpus-per-trial > 0: Ray hides GPUs from trials that did not "
                         "ask for one")
    n_gpus = torch.cuda.device_count() if gpus > 0 else 0
    if gpus > 0 and n_gpus == 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: this machine has no CUDA GPU; leave it at 0 or use --address")
    if gpus > n_gpus > 0:
        raise UsageError(f"--gpus-per-trial {gpus:g} exceeds the {n_gpus} GPU(s) here")
    cores = os.cpu_count() or 1
    if cpus is not None and cpus > cores:
        raise UsageError(f"--cpus-per-trial {cpus} exceeds the {cores} CPU cores of this machine")
    if max_concurrent is None:
        # One single-threaded trial per core: on 2 cores, 2 x 1 thread ran the fast proxy ~1.3x faster than
        # 1 x 2 threads (and never suffers OpenMP spin-waiting on a busy machine); capped by memory.
        max_concurrent = max(1, min(cores // (cpus or 1), _total_memory_gib() // GIB_PER_TRIAL))
        if gpus > 0:
            max_concurrent = min(max_concurrent, max(1, int(n_gpus // gpus)))
    if cpus is None:
        cpus = max(1, cores // max_concurrent)
    if cpus * max_concurrent > cores:
        raise UsageError(f"--max-concurrent {max_concurrent} x --cpus-per-trial {cpus} needs "
                         f"{cpus * max_concurrent} cores; this machine has {cores}")
    return {"gpus_per_trial": gpus, "max_concurrent": max_concurrent, "cpus_per_trial": cpus}


def _output(args: argparse.Namespace, out: Path, settings: dict[str, Any], manifest: dict[str, Any]) -> None:
    """A resume must agree with the search it continues; a new search needs an empty ``--out``; both a writable one."""
    if args.resume:
        for key in SEARCH_DEFINING:
            if key == "verify_fidelity":
                continue  # follows from --verify and the preset, both checked here
            if key == "fidelity":
                if manifest.get(key) and _differs(settings[key], manifest[key]):
                    changed = sorted(k for k in settings[key] if settings[key][k] != manifest[key].get(k))
                    raise UsageError(f"--resume: the proxy preset {settings['proxy']!r} changed since this search "
                                     f"started ({', '.join(changed)}); its trials would not be comparable: start a "
                                     "new search")
            elif key in manifest and _differs(settings.get(key, DEFAULTS.get(key)), manifest[key]):
                flag = {"space_spec": "space"}.get(key, key).replace("_", "-")
                mine = _show(settings.get(key, DEFAULTS.get(key)))
                raise UsageError(f"--resume: --{flag} {mine} conflicts with the search in "
                                 f"{out} ({_show(manifest[key])}); drop it or start a new search in another --out")
        from .ledger import Ledger

        launched = Ledger.open(out, settings["objectives"]).trials_launched()
        if settings["budget"] < launched:
            raise UsageError(f"--budget {settings['budget']} is below the {launched} trials already launched in "
                             f"{out}; give --budget {launched} or more")
    elif out.exists():
        if any((out / name).exists() for name in SEARCH_FILES):
            raise UsageError(f"{out} already holds a search; continue it with --resume, or choose another --out")
        if not out.is_dir() or any(out.iterdir()):
            raise UsageError(f"--out {out} exists and is not an empty directory; choose a new or empty one")
    check_creatable(out)


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
