"""Tests for results.frame, results.io and results.plots: flattening, file round trips, atomic writes, PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results.frame import (
    CORE_COLUMNS,
    read_trials,
    stage_columns,
    trials_frame,
    write_pareto,
    write_trials,
)
from results.io import atomic_path, atomic_write_bytes, atomic_write_text
from results.pareto import hypervolume_history, reference_point
from results.plots import cost_axis, param_importances, plot_effects, plot_hypervolume, plot_pareto
from results.select import select_best

SCSA = {
    "attn": "scsa",
    "position": "mid",
    "blocks": "all",
    "groups": 4,
    "kernels": [3, 5, 7, 9],
    "window": 7,
    "heads": 1,
    "gate": "sigmoid",
    "pool": "avg",
}


def _records(n: int = 30, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = [
        {
            "trial_id": "base",
            "number": 0,
            "status": "completed",
            "reference": "baseline",
            "accuracy": 0.86,
            "gflops": 4.11,
            "params": 25_557_032,
            "trained_share": 1.0,
            "time_s": 40.0,
            "error": "",
            "config": {"backbone": "resnet50", "stages": [{"attn": "none"}] * 4},
        },
        {
            "trial_id": "paper",
            "number": 1,
            "status": "completed",
            "reference": "paper_default",
            "accuracy": 0.885,
            "gflops": 4.3,
            "params": 25_600_000,
            "trained_share": 1.0,
            "time_s": 45.5,
            "config": {"backbone": "resnet50", "stages": [dict(SCSA) for _ in range(4)]},
        },
    ]
    for i in range(2, n):
        stages = []
        for _ in range(4):
            attn = str(rng.choice(["none", "scsa", "se"]))
            if attn == "scsa":
                stages.append(
                    {**SCSA, "position": str(rng.choice(["pre", "mid", "post"])), "groups": int(rng.choice([2, 4]))}
                )
            elif attn == "se":
                stages.append({"attn": "se", "position": "post", "blocks": "all", "groups": 99})  # groups irrelevant
            else:
                stages.append({"attn": "none"})
        status = str(rng.choice(["completed", "completed", "completed", "stopped", "failed"]))
        n_attn = sum(s["attn"] != "none" for s in stages)
        records.append(
            {
                "trial_id": f"t{i:03d}",
                "number": i,
                "status": status,
                "accuracy": None if status == "failed" else float(0.85 + 0.01 * n_attn + rng.normal(0, 0.004)),
                "gflops": float(4.11 + 0.05 * n_attn + rng.uniform(0, 0.02)),
                "params": 25_557_032 + 10_000 * n_attn,
                "latency_ms": float(rng.uniform(5, 7)),
                "trained_share": 1.0 if status == "completed" else 0.25,
                "epochs_done": 4.0 if status == "completed" else 1.0,
                "time_s": float(rng.uniform(20, 60)),
                "error": "RuntimeError: CUDA out of memory" if status == "failed" else "",
                "config": {"backbone": "resnet50", "stages": stages},
            }
        )
    # Out of launch order on purpose: the frame sorts by `number`.
    return records[::-1]


def test_trials_frame_columns_and_flattening() -> None:
    records = _records()
    df = trials_frame(records)
    assert len(df) == len(records)
    assert df["number"].tolist() == sorted(r["number"] for r in records)
    assert list(df.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert list(df.columns[len(CORE_COLUMNS) : len(CORE_COLUMNS) + 36]) == stage_columns(4)
    assert df.columns[-1] == "config_json"

    paper = df[df["reference"] == "paper_default"].iloc[0]
    assert paper["s1_kernels"] == "3-5-7-9"
    assert (paper["s2_attn"], paper["s2_position"], paper["s2_groups"], paper["s4_pool"]) == ("scsa", "mid", 4, "avg")
    base = df[df["reference"] == "baseline"].iloc[0]
    assert base["s1_attn"] == "none" and base["s1_position"] == "" and pd.isna(base["s1_groups"])
    se_rows = df[df["s1_attn"] == "se"]
    assert len(se_rows) > 0
    # Placement is filled for any attention, SCSA hyperparameters only for SCSA.
    assert (se_rows["s1_position"] == "post").all() and se_rows["s1_groups"].isna().all()
    assert (se_rows["s1_kernels"] == "").all()

    assert df["params"].dtype == "Int64" and df["number"].dtype == "int64"
    assert df["accuracy"].dtype == "float64" and df["s1_groups"].dtype == "Int64"
    failed = df[df["status"] == "failed"]
    assert failed["accuracy"].isna().all() and failed["error"].str.contains("out of memory").all()
    assert (df["backbone"] == "resnet50").all()


def test_trials_frame_rejects_bad_records() -> None:
    with pytest.raises(ValueError, match="status"):
        trials_frame([{"trial_id": "a", "number": 0, "status": "running"}])
    with pytest.raises(ValueError, match="lacks"):
        trials_frame([{"trial_id": "a", "status": "completed"}])
    empty = trials_frame([])
    assert empty.empty and "config_json" in empty.columns


@pytest.mark.parametrize("keep_parquet", [True, False])
def test_round_trip(tmp_path: Path, keep_parquet: bool) -> None:
    records = _records()
    records[0]["seed"] = 3  # extra keys survive too
    records[0]["tags"] = ["a", "b"]
    df = trials_frame(records)
    write_trials(df, tmp_path)
    assert (tmp_path / "trials.csv").stat().st_size > 0 and (tmp_path / "trials.parquet").stat().st_size > 0
    if not keep_parquet:
        (tmp_path / "trials.parquet").unlink()
    back = read_trials(tmp_path)
    pd.testing.assert_frame_equal(back, df)  # same rows, values and dtypes, from either file
    by_id = {r["trial_id"]: r for r in records}
    for _, row in back.iterrows():
        assert json.loads(row["config_json"]) == by_id[row["trial_id"]]["config"]


def test_csv_is_readable_without_this_module(tmp_path: Path) -> None:
    df = trials_frame(_records())
    write_trials(df, tmp_path)
    plain = pd.read_csv(tmp_path / "trials.csv")
    assert plain["trial_id"].tolist() == df["trial_id"].tolist()
    np.testing.assert_array_equal(plain["accuracy"].to_numpy(), df["accuracy"].to_numpy())  # exact float text


def test_write_pareto(tmp_path: Path) -> None:
    df = trials_frame(_records())
    front = write_pareto(df, tmp_path, ["accuracy", "gflops"])
    on_disk = pd.read_csv(tmp_path / "pareto.csv", keep_default_na=False, dtype={"trial_id": str})
    assert on_disk["trial_id"].tolist() == front["trial_id"].tolist()
    assert len(front) > 0 and (front["status"] == "completed").all()
    assert front["gflops"].is_monotonic_increasing


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    df = trials_frame(_records())
    for _ in range(3):
        write_trials(df, tmp_path)
        write_pareto(df, tmp_path, ["accuracy", "gflops"])
    atomic_write_text(tmp_path / "best_config.json", json.dumps({"a": 1}))
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_config.json",
        "blob.bin",
        "pareto.csv",
        "trials.csv",
        "trials.parquet",
    ]
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"


def test_atomic_write_interrupted_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "trials.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise KeyboardInterrupt  # a kill mid-write
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path: Path) -> None:
    df = trials_frame(_records())
    best = select_best(df, ["accuracy", "gflops"], "knee")
    assert _is_png(plot_pareto(df, tmp_path / "pareto.png", best=best, best_label="chosen (knee)"))
    assert _is_png(plot_pareto(df, tmp_path / "pareto3.png", objectives=["accuracy", "gflops", "params"]))
    ref = reference_point(df)
    assert _is_png(plot_hypervolume(hypervolume_history(df, reference_point=ref), tmp_path / "hv.png",
                                    reference_point=ref))  # fmt: skip
    assert _is_png(plot_effects(df, tmp_path / "effects.png"))
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".png"]


def test_the_front_is_drawn_against_the_first_cost_objective(tmp_path: Path) -> None:
    assert cost_axis(["accuracy", "latency_ms"]) == ("latency_ms", "latency", "latency (ms, batch 1, 224 px)", "ms")
    assert cost_axis(["loss", "gflops", "latency_ms"], 160) == ("gflops", "GFLOPs", "GFLOPs (160 px)", "GFLOPs")
    records = _records()
    for record in records:
        record.setdefault("latency_ms", 6.0)
    df = trials_frame(records)
    assert _is_png(plot_pareto(df, tmp_path / "latency.png", objectives=["accuracy", "latency_ms"]))


def test_plots_survive_degenerate_frames(tmp_path: Path) -> None:
    failed_only = trials_frame([r for r in _records() if r["status"] == "failed"])
    empty = trials_frame([])
    for i, df in enumerate([failed_only, empty]):
        assert _is_png(plot_pareto(df, tmp_path / f"p{i}.png"))
        assert _is_png(plot_effects(df, tmp_path / f"e{i}.png"))
        assert _is_png(plot_hypervolume(pd.Series(dtype=float), tmp_path / f"h{i}.png"))


def test_param_importances_come_from_the_study(tmp_path: Path) -> None:
    import optuna

    from space import SearchSpace

    space, db = SearchSpace("resnet18"), tmp_path / "study.db"
    study = optuna.create_study(study_name="scsa-search", storage=f"sqlite:///{db}",
                                directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)
    for _ in range(80):
        trial = study.ask()
        arch = space.suggest(trial)
        # stage 1's attention decides the score here: it must come out on top
        study.tell(trial, [0.5 + 0.3 * (arch.stages[0].attn == "none") + 0.01 * rng.random(), 1.8])
    importances = param_importances(db)
    assert importances and all(k.startswith("s") for k in importances)
    assert max(importances, key=importances.get) == "s1_attn"
    assert sum(importances.values()) == pytest.approx(1.0)
    assert param_importances(db, min_trials=81) == {} and param_importances(tmp_path / "missing.db") == {}


def test_the_effects_plot_shows_the_searchs_first_objective(tmp_path: Path, monkeypatch) -> None:
    import results.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    records = _records()
    for i, record in enumerate(records):
        record["loss"] = 0.5 + 0.01 * i
        record["accuracy"] = None  # a loss-ranked search: only the loss says anything
    df = trials_frame(records)
    completed = int((df["status"] == "completed").sum())
    plot_effects(df, tmp_path / "effects.png", objective="loss")
    (fig,) = drawn
    assert fig.get_suptitle().startswith(f"{df['backbone'].iloc[0]}: proxy training loss (last epoch) by")
    assert f"({completed} completed trials)" in fig.get_suptitle()
    assert fig.axes[0].get_xlabel() == "proxy training loss (last epoch), lower is better"
