"""What a benchmarked search gives its user, measured again with fresh seeds at the verification fidelity.

One proxy trial is one draw of a biased measure, and ``hv_gain`` of a front of single draws over one draw of the
plain backbone ranks luck as much as samplers. So for every run of ``bench/search_efficiency.py`` the configs that
carry its answer are trained again at ``--verify``'s fidelity (3x the proxy's images, ranked by the validation
loss, ``evaluators.fidelity.verification``) with ``--measure-seeds`` fresh seeds, the same seeds for every config
of a benchmark seed (so configs, and variants, are compared seed by seed):

* the plain backbone (the box of the gain);
* the run's chosen config (its ``best_config.json``: chosen on the search's own verification of its finalists);
* the front members inside the single-draw box (better proxy score than the plain backbone's draw, no more GFLOPs
  than the paper default), the best :data:`MAX_FRONT` by proxy score.

A config trained for one run is not trained again for another run of the same benchmark seed (rows keyed by
config, backbone, seed and the fidelity's every setting, :func:`settings_key`, in ``<out stem>_measured.csv``; an
interrupted measurement resumes, and rows of a recipe that has changed since are never taken for this one's).
Per run, from those rows:

* ``v_gain``: the chosen config's verified gain over the plain backbone (plain's validation loss minus the chosen
  one's, seed by seed, averaged over the seeds; 0 when the answer is the plain backbone);
* ``v_hv_gain``: the hypervolume of the measured front members' verified means inside the box (the plain backbone's
  verified mean, the paper default's GFLOPs): what the front is worth when re-drawn;
* the anytime ``v_hv_gain``: the same over the measured configs whose proxy trial had finished by each moment. It
  is a lower bound of what the search held then (a config on the front early and dominated later was not measured).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluators.fidelity import SPEED_ONLY, Fidelity, preset, verification
from results.pareto import hypervolume, loss_name, pareto_front, to_loss
from results.schema import CONFIG_JSON

__all__ = ["MAX_FRONT", "MEASURE_SEED_BASE", "canonical", "measure_seeds", "measured_at", "needed", "recorded_keys",
           "run_measurements", "settings_key", "verified"]

#: Measurement seed k of benchmark seed s is ``MEASURE_SEED_BASE + 100 * s + k``: far from every seed a search
#: trains with (its trials ``s`` and ``s + attempt``, replicates ``s + 1000 k``, verification ``s + 1000 (100 + k)``).
MEASURE_SEED_BASE = 900_000
#: At most this many front members per run are measured (the best by proxy score first).
MAX_FRONT = 6
#: The verification score: what the measured configs are compared on.
V_SCORE = "val_loss"
MEASURED_COLUMNS = ["backbone", "proxy", "verify", "seed", V_SCORE, "accuracy", "time_s", "torch", "date",
                    "fidelity", CONFIG_JSON]


def settings_key(fid: Fidelity | Mapping[str, Any]) -> str:
    """A fidelity (or its dict) as benchmark rows record it: every setting but those that set only the speed
    (``SPEED_ONLY``), as compact JSON. A preset that changes (a new setting, another value) gets another key, so rows
    of the earlier recipe stay apart from the new ones."""
    settings = fid.to_dict() if isinstance(fid, Fidelity) else fid
    return json.dumps({k: v for k, v in settings.items() if k not in SPEED_ONLY}, sort_keys=True,
                      separators=(",", ":"))


def recorded_keys(recorded: pd.Series) -> pd.Series:
    """A ``fidelity`` column as :func:`settings_key` writes it now: rows written before a setting joined
    ``SPEED_ONLY`` recorded it (``eval_batch_size``), and measured the same recipe. Each distinct key is parsed
    once: a trials table has thousands of rows and a handful of keys."""
    keys = {key: settings_key(json.loads(key)) for key in recorded.unique() if isinstance(key, str)}
    return recorded.map(lambda key: keys.get(key, key))


def measure_seeds(seed: int, k: int) -> list[int]:
    return [MEASURE_SEED_BASE + 100 * seed + i for i in range(k)]


def fidelity(proxy: str, verify: str) -> Fidelity:
    fid = verification(preset(proxy, threads=1), verify)
    if fid is None:
        raise ValueError("--verify off measures nothing: give a fidelity such as 3x")
    return fid


def measured_at(measured: pd.DataFrame, backbone: str, proxy: str, verify: str) -> pd.DataFrame:
    """The rows of ``measured`` trained at ``verify``'s fidelity of ``proxy`` as it is now (rows without a
    ``fidelity`` column come from before it was recorded, and match nothing)."""
    if "fidelity" not in measured.columns:
        return measured.iloc[:0]
    key = settings_key(fidelity(proxy, verify))
    return measured[(measured["backbone"] == backbone) & (recorded_keys(measured["fidelity"]) == key)]


def chosen_and_front(trials: pd.DataFrame, objectives: list[str]) -> tuple[str, list[str]]:
    """From one run's trial rows: the chosen config's JSON and the JSON of the front members to measure (inside the
    single-draw box, best proxy score first, at most :data:`MAX_FRONT`)."""
    chosen = trials.loc[trials["chosen"].astype(bool), CONFIG_JSON]
    if len(chosen) != 1:
        raise ValueError(f"a run's rows must mark exactly one chosen config, found {len(chosen)}")
    quality, cost = objectives[:2]
    done = trials[trials["status"] == "completed"]
    refs = done.set_index(done["reference"].astype("string").fillna(""))
    front = pareto_front(done, [quality, cost])
    if "baseline" in refs.index and "paper_default" in refs.index:
        plain_q = to_loss(np.array([[float(refs.loc["baseline", quality]), 0.0]]), [quality, cost])[0, 0]
        mine = to_loss(front[[quality, cost]].to_numpy(dtype=float), [quality, cost])
        inside = (mine[:, 0] < plain_q) & (front[cost].to_numpy(dtype=float) <= float(refs.loc["paper_default", cost]))
        front = front[inside].iloc[np.argsort(mine[inside, 0], kind="stable")]
    else:
        front = front.iloc[:0]
    return str(chosen.iloc[0]), [str(c) for c in front[CONFIG_JSON].head(MAX_FRONT)]


def canonical(arch) -> str:
    """One JSON text per config (an ``ArchConfig`` or its JSON in any spacing), so rows can be matched on it."""
    from space import ArchConfig

    if isinstance(arch, str):
        arch = ArchConfig.from_json(arch)
    return json.dumps(arch.to_dict(), separators=(",", ":"))


def plain_json(backbone: str) -> str:
    from space import ArchConfig

    return canonical(ArchConfig.baseline(backbone))


def needed(trials: pd.DataFrame, objectives: list[str], backbone: str, seed: int, k: int) -> list[tuple[str, int]]:
    """(config JSON, measurement seed) pairs one run needs."""
    chosen, front = chosen_and_front(trials, objectives)
    configs = list(dict.fromkeys([plain_json(backbone), chosen, *front]))
    return [(c, s) for c in configs for s in measure_seeds(seed, k)]


def _train(config: str, fid_dict: dict, seed: int) -> dict:
    import time

    import torch

    from evaluators.proxy import ProxyRun
    from space import ArchConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    last = ProxyRun(ArchConfig.from_json(config), "fashion-mnist", fidelity=Fidelity(**fid_dict), seed=seed).run()[-1]
    return {"seed": seed, V_SCORE: last.val_loss, "accuracy": last.accuracy, "time_s": time.perf_counter() - t0,
            CONFIG_JSON: config}


def run_measurements(todo: list[tuple[str, int]], proxy: str, verify: str, backbone: str, out: Path,
                     workers: int) -> pd.DataFrame:
    """Train the missing pairs of ``todo`` (``workers`` processes of one thread), appending each row to ``out`` as
    it finishes; every row of ``out``."""
    import torch

    have = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=MEASURED_COLUMNS)
    mine = measured_at(have, backbone, proxy, verify)
    done = set(zip(mine[CONFIG_JSON], mine["seed"].astype(int), strict=True))
    missing = [p for p in dict.fromkeys(todo) if p not in done]
    if not missing:
        return have
    fid = fidelity(proxy, verify)
    recipe = settings_key(fid)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_train, c, fid.to_dict(), s) for c, s in missing]
        for future in as_completed(futures):
            row = {"backbone": backbone, "proxy": proxy, "verify": verify, **future.result(),
                   "torch": torch.__version__, "date": datetime.date.today().isoformat(), "fidelity": recipe}
            frame = pd.DataFrame([row], columns=MEASURED_COLUMNS)
            frame.to_csv(out, mode="a", header=not out.exists(), index=False)
            have = pd.concat([have, frame], ignore_index=True)
    return have


def _scores(measured: pd.DataFrame, config: str, seeds: list[int]) -> list[float] | None:
    rows = measured[measured[CONFIG_JSON] == config].drop_duplicates("seed").set_index("seed")
    if not set(seeds) <= set(rows.index.astype(int)):
        return None
    return [float(rows.loc[s, V_SCORE]) for s in seeds]


def verified(trials: pd.DataFrame, objectives: list[str], measured: pd.DataFrame, backbone: str, seed: int,
             k: int) -> dict | None:
    """One run's verified figures (see the module's docstring), or None while a needed row is missing.

    ``curve``: the anytime ``v_hv_gain``, indexed by ``finished_s`` (as ``search_efficiency.anytime``'s curves)."""
    seeds = measure_seeds(seed, k)
    chosen, front = chosen_and_front(trials, objectives)
    plain = _scores(measured, plain_json(backbone), seeds)
    mine = _scores(measured, chosen, seeds)
    fronts = {c: _scores(measured, c, seeds) for c in front}
    if plain is None or mine is None or any(v is None for v in fronts.values()):
        return None
    cost = objectives[1]
    done = trials[trials["status"] == "completed"]
    paper = done.loc[done["reference"].astype("string").fillna("") == "paper_default", cost]
    if paper.empty:
        return None
    plain_mean = float(np.mean(plain))
    ref = {loss_name(V_SCORE): plain_mean, loss_name(cost): float(paper.iloc[0])}
    by_config = done.drop_duplicates(CONFIG_JSON).set_index(CONFIG_JSON)
    points = pd.DataFrame({"status": "completed", V_SCORE: [float(np.mean(v)) for v in fronts.values()],
                           cost: [float(by_config.loc[c, cost]) for c in fronts],
                           "finished_s": [float(by_config.loc[c, "finished_s"]) for c in fronts]})
    # a trial without a finishing time (its last report unread) counts at the end only
    points["finished_s"] = points["finished_s"].fillna(math.inf)
    times = sorted(set(points["finished_s"]))
    curve = pd.Series([hypervolume(points[points["finished_s"] <= t], [V_SCORE, cost], ref) for t in times],
                      index=times, dtype=float)
    gains = [p - c for p, c in zip(plain, mine, strict=True)]  # val_loss: lower is better
    return {"v_gain": float(np.mean(gains)), "v_gain_seeds": json.dumps([round(g, 6) for g in gains]),
            "v_hv_gain": hypervolume(points, [V_SCORE, cost], ref) if len(points) else 0.0,
            "v_measured": len({plain_json(backbone), chosen, *front}),
            "chosen_is_plain": chosen == plain_json(backbone), "curve": curve}
