"""run_search.py: bad input ends with exit code 2, one line on stderr, no traceback, nothing created or overwritten
— all before Ray starts (these tests never start it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_search
from evaluators.scores import verification_score
from search.configure import default_out
from search.settings import SearchSettings
from space import ArchConfig

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
BASE = ["--backbone", "resnet18", "--proxy", "smoke", "--budget", "4"]


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def _fails(capsys, argv: list[str], *expected: str, out: Path | None = None) -> str:
    """Run main(argv) in-process; check exit 2 before Ray started, a single stderr line naming ``expected``, and no
    change to ``out``."""
    before = _snapshot(out) if out is not None else None
    existed = out.exists() if out is not None else None
    rc = run_search.main(argv)
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized(), f"Ray was started for {argv}"
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (argv, captured.out, captured.err)
    assert err and "\n" not in err, f"expected one line on stderr, got: {captured.err!r}"
    assert "Traceback" not in captured.err + captured.out
    assert err.startswith("run_search.py: error: ")
    for text in expected:
        assert text in err, (text, err)
    if out is not None:
        assert out.exists() == existed, f"{out} was created or removed"
        assert _snapshot(out) == before, f"{out} was modified"
    return err


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "new-search"


@pytest.fixture
def existing(tmp_path) -> Path:
    """A directory that holds a search (its manifest, as a real search writes it)."""
    from search.settings import SearchSettings

    path = tmp_path / "old-search"
    path.mkdir()
    settings = SearchSettings(backbone="resnet18", budget=4, out=str(path), proxy="smoke")
    settings.write_manifest()
    (path / "launched.jsonl").write_text("")
    return path


# ------------------------------------------------------------------------------------------------ inputs


def test_unknown_backbone(capsys, out):
    _fails(capsys, [*BASE, "--backbone", "resnet999", "--out", str(out)], "resnet999", "not a timm model",
           out=out)


def test_vit_backbone_is_refused_with_the_supported_families(capsys, out):
    _fails(capsys, [*BASE, "--backbone", "vit_tiny_patch16_224", "--out", str(out)], "vit_tiny_patch16_224",
           "resnet", out=out)


@pytest.mark.parametrize("budget", ["0", "-1", "abc", "2.5"])
def test_bad_budget(capsys, out, budget):
    _fails(capsys, ["--backbone", "resnet18", "--budget", budget, "--out", str(out)], "--budget",
           "positive integer", out=out)


def test_missing_budget(capsys, out):
    _fails(capsys, ["--backbone", "resnet18", "--out", str(out)], "--budget", out=out)


def test_missing_backbone(capsys, out):
    _fails(capsys, ["--budget", "3", "--out", str(out)], "--backbone", out=out)


def test_unknown_proxy(capsys, out):
    _fails(capsys, [*BASE, "--proxy", "turbo", "--out", str(out)], "--proxy", "smoke", out=out)


def test_unknown_dataset(capsys, out):
    _fails(capsys, [*BASE, "--dataset", "mnist", "--out", str(out)], "--dataset", "fashion-mnist", out=out)


def test_missing_data_dir(capsys, out, tmp_path):
    missing = tmp_path / "no-such-dir"
    _fails(capsys, [*BASE, "--data-dir", str(missing), "--out", str(out)], str(missing), "does not exist", out=out)
    assert not missing.exists()


def test_data_dir_without_the_dataset(capsys, out, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, [*BASE, "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(out)], "cifar10", out=out)


def test_fashion_mnist_missing_names_the_package_and_its_install_command(capsys, out, tmp_path, monkeypatch):
    from evaluators import data
    from evaluators.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("SCSA_SEARCH_DATA", str(tmp_path / "cache"))
    expected = ("dataset-fashion-mnist", data.FASHION_MNIST_INSTALL, "--data-dir", "--download")
    _fails(capsys, [*BASE, "--out", str(out)], *expected, out=out)
    cfg = tmp_path / "best_config.json"
    cfg.write_text(json.dumps(ArchConfig.baseline("resnet18").to_dict()))
    assert run_search.main(["train", "--config", str(cfg), "--out", str(tmp_path / "train")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(text in err for text in expected), err
    assert not (tmp_path / "train").exists()


@pytest.mark.parametrize("objectives, expected", [
    ("accuracy,flops", "unknown objective 'flops'"),
    ("gflops,params", "must hold one proxy score (score or one of accuracy, val_loss, loss, tse, tse_ema)"),
    ("accuracy", "at least one cost"),
    ("accuracy,gflops,gflops", "twice"),
    ("accuracy,tse,gflops", "must hold one proxy score"),
])
def test_bad_objectives(capsys, out, objectives, expected):
    _fails(capsys, [*BASE, "--objectives", objectives, "--out", str(out)], expected, out=out)


def test_unknown_sampler(capsys, out):
    _fails(capsys, [*BASE, "--sampler", "cmaes", "--out", str(out)], "--sampler", "nsga2", out=out)


def test_sampler_with_missing_dependency_says_what_to_install(capsys, out, monkeypatch):
    # scipy is a dependency; an environment without it (installed by hand, --no-deps) is told what to install
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    _fails(capsys, [*BASE, "--sampler", "gp", "--out", str(out)], "scipy", "pip install", out=out)


def test_bad_select_rule(capsys, out):
    _fails(capsys, [*BASE, "--select", "fastest", "--out", str(out)], "--select", "knee", out=out)


def test_bad_resources(capsys, out):
    cores = os.cpu_count() or 1
    _fails(capsys, [*BASE, "--cpus-per-trial", str(cores + 1), "--out", str(out)], "--cpus-per-trial", out=out)
    _fails(capsys, [*BASE, "--max-concurrent", "0", "--out", str(out)], "--max-concurrent", out=out)
    _fails(capsys, [*BASE, "--time-budget", "-5", "--out", str(out)], "--time-budget", out=out)
    _fails(capsys, [*BASE, "--reduction-factor", "1", "--out", str(out)], "--reduction-factor", out=out)
    import torch

    if not torch.cuda.is_available():
        _fails(capsys, [*BASE, "--gpus-per-trial", "0.5", "--out", str(out)], "no CUDA GPU", out=out)
        _fails(capsys, [*BASE, "--device", "cuda", "--out", str(out)], "--device", "CUDA", out=out)


def test_unknown_option(capsys, out):
    _fails(capsys, [*BASE, "--budgett", "3", "--out", str(out)], "unrecognized arguments", out=out)


# ------------------------------------------------------------------------------------------------ space files


def test_space_file_missing(capsys, out, tmp_path):
    _fails(capsys, [*BASE, "--space", str(tmp_path / "nope.yaml"), "--out", str(out)], "--space", "nope.yaml",
           out=out)


@pytest.mark.parametrize("text, expected", [
    ("attn: [none, scsa\nwindow: 3", "not valid YAML"),
    ("attn: [none, sccsa]", "sccsa"),
    ("colour: [red]", "unknown keys"),
    ("stages:\n  9: {attn: [none]}", "stage 9"),
    ("- just\n- a list", "mapping"),
])
def test_bad_space_file(capsys, out, tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    _fails(capsys, [*BASE, "--space", str(path), "--out", str(out)], "space", expected, out=out)


def test_show_space(capsys, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("attn: [none, scsa]\nwindow: [7]\n")
    assert run_search.main(["--backbone", "resnet18", "--space", str(path), "--show-space"]) == 0
    text = capsys.readouterr().out
    assert "search space for resnet18" in text and "stage 4" in text


# ------------------------------------------------------------------------------------------------ --out, --resume


def test_resume_without_a_search(capsys, out):
    _fails(capsys, [*BASE, "--resume", "--out", str(out)], "no search to resume", str(out), out=out)


def test_resume_without_out_or_backbone(capsys):
    _fails(capsys, ["--resume"], "--resume needs --out")


def test_new_search_into_an_existing_one_is_refused(capsys, existing):
    _fails(capsys, [*BASE, "--out", str(existing)], "already holds a search", "--resume", out=existing)


def test_new_search_into_a_non_empty_directory_is_refused(capsys, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _fails(capsys, [*BASE, "--out", str(busy)], "not an empty directory", out=busy)


def test_out_under_a_regular_file_is_refused_before_anything_starts(capsys, tmp_path):
    afile = tmp_path / "some_file"
    afile.write_text("mine")
    _fails(capsys, [*BASE, "--out", str(afile / "sub")], f"{afile} is a file, not a directory", out=afile)
    assert afile.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_directory_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _fails(capsys, [*BASE, "--out", str(locked / "run")], "is not writable", out=locked)


def test_resume_refuses_conflicting_search_settings(capsys, existing):
    _fails(capsys, ["--resume", "--out", str(existing), "--backbone", "resnet34"], "--backbone resnet34",
           "conflicts", out=existing)
    _fails(capsys, ["--resume", "--out", str(existing), "--objectives", "accuracy,params"], "--objectives",
           "conflicts", out=existing)
    _fails(capsys, ["--resume", "--out", str(existing), "--seed", "3"], "--seed 3", out=existing)


def test_resume_refuses_a_proxy_preset_that_changed_since(capsys, existing):
    manifest = json.loads((existing / "search.json").read_text())
    manifest["fidelity"] = {"epochs": 99, "resolution": 32}
    (existing / "search.json").write_text(json.dumps(manifest))
    _fails(capsys, ["--resume", "--out", str(existing)], "preset 'smoke' changed", "epochs", out=existing)


def test_resume_refuses_a_budget_below_what_was_launched(capsys, existing):
    from search.ledger import Launch, Ledger

    ledger = Ledger.open(existing, ["accuracy", "gflops"])
    for n, arch in enumerate((ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"))):
        ledger.launch(Launch(n, f"t{n:04d}", arch.to_dict()))
    _fails(capsys, ["--resume", "--out", str(existing), "--budget", "1"], "--budget 1", "2 trials already launched",
           out=existing)


def test_resume_with_a_corrupt_manifest(capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "search.json").write_text("{not json")
    _fails(capsys, ["--resume", "--out", str(broken)], "--resume", "search.json", out=broken)


def test_valid_resume_settings_are_taken_from_the_manifest(existing):
    args = run_search.build_parser().parse_args(["--resume", "--out", str(existing), "--budget", "9"])
    settings = run_search.validate(args)
    assert (settings.backbone, settings.proxy, settings.budget, settings.resume) == ("resnet18", "smoke", 9, True)
    assert settings.objectives == ["accuracy", "gflops"] and settings.epochs >= 1
    assert json.loads((existing / "search.json").read_text())["budget"] == 4  # validation writes nothing


def test_defaults_fill_the_machine_with_one_trial(out):
    def settings(*extra: str):
        return run_search.validate(run_search.build_parser().parse_args([*BASE, "--out", str(out), *extra]))

    cores = os.cpu_count() or 1
    default = settings()
    assert default.cpus_per_trial == 1 and 1 <= default.max_concurrent <= cores
    assert (settings("--max-concurrent", "1").max_concurrent, settings("--max-concurrent", "1").cpus_per_trial) == \
        (1, cores)
    assert default.objectives == ["accuracy", "gflops"] and default.sampler == "nsga2"
    assert (default.early_stopping, default.grace_period, default.reduction_factor) == (True, 1, 3)
    assert settings("--cpus-per-trial", "1").max_concurrent == cores
    assert settings("--objectives", "accuracy,latency").objectives == ["accuracy", "latency_ms"]
    assert not settings("--no-early-stopping").early_stopping
    assert default_out("resnet50", "cifar10", "fast") == Path("runs/resnet50-cifar10-fast")
    assert not out.exists()


@pytest.mark.parametrize("proxy", ["smoke", "default"])
def test_a_search_set_up_in_python_is_the_search_the_cli_runs(out, proxy):
    cli = run_search.validate(run_search.build_parser().parse_args(
        ["--backbone", "resnet18", "--budget", "200", "--proxy", proxy, "--out", str(out)]))
    python = SearchSettings(backbone="resnet18", budget=200, out=str(out), proxy=proxy)
    defining = ("objectives", "sampler", "population_size", "fidelity", "epochs", "select", "seed", "dataset",
                "early_stopping", "grace_period", "reduction_factor", "replicates", "resolution", "verify",
                "verify_seeds", "verify_fidelity", "warm_start")
    assert {k: getattr(python, k) for k in defining} == {k: getattr(cli, k) for k in defining}
    assert python.objectives[1:] == ["gflops"] and python.population_size == 20 and not python.warm_start


def test_verify_takes_a_multiple_of_the_proxy_a_preset_or_off_and_refuses_the_rest(capsys, out, existing):
    def settings(*extra: str):
        return run_search.validate(run_search.build_parser().parse_args([*BASE, "--out", str(out), *extra]))

    default = settings()
    assert default.verify == "3x" and default.verify_seeds == 2 and default.replicates == 0
    smoke = run_search.PRESETS["smoke"]
    assert default.verify_fidelity["train_images"] == 3 * smoke.train_images
    assert default.verify_fidelity["val_images"] == 3 * smoke.val_images
    assert {k: v for k, v in default.verify_fidelity.items() if "images" not in k} == \
        {k: v for k, v in default.fidelity.items() if "images" not in k}
    assert default.for_trials().verify_fidelity == default.verify_fidelity
    assert settings("--verify", "off").verify_fidelity is None
    thorough = settings("--verify", "thorough", "--verify-seeds", "3")
    assert thorough.verify_fidelity["resolution"] == 64 and thorough.verify_seeds == 3
    assert thorough.verify_fidelity["score"] == verification_score(default.fidelity["score"])
    _fails(capsys, [*BASE, "--out", str(out), "--verify", "1x"], "--verify 1x", "no higher fidelity", out=out)
    _fails(capsys, [*BASE, "--out", str(out), "--verify", "twice"], "--verify 'twice' is not a fidelity",
           "Nx (N times the proxy's images", out=out)
    _fails(capsys, [*BASE, "--out", str(out), "--verify-seeds", "0"], "--verify-seeds", out=out)
    # what verifies is fixed with the search: a resume that changes it is refused
    _fails(capsys, ["--resume", "--out", str(existing), "--budget", "4", "--verify", "5x"], "--verify 5x conflicts",
           out=existing)


def test_proxy_set_overrides_the_preset_and_is_kept_for_resume(capsys, out, existing):
    args = run_search.build_parser().parse_args([*BASE, "--out", str(out), "--proxy-set", "lr=0.01",
                                                 "--proxy-set", "score=loss", "--proxy-set", "epochs=3"])
    settings = run_search.validate(args)
    assert settings.proxy_set == {"lr": 0.01, "score": "loss", "epochs": 3}
    assert (settings.fidelity["lr"], settings.fidelity["score"], settings.epochs) == (0.01, "loss", 3)
    assert settings.objectives == ["loss", "gflops"]  # the preset's score, as overridden, ranks
    trial = settings.for_trials()
    assert trial.fidelity == settings.fidelity and trial.objectives == ("loss", "gflops")
    _fails(capsys, [*BASE, "--out", str(out), "--proxy-set", "lrr=1"], "--proxy-set", "unknown fidelity setting",
           out=out)
    _fails(capsys, [*BASE, "--out", str(out), "--proxy-set", "lr=fast"], "lr takes float", out=out)
    _fails(capsys, ["--resume", "--out", str(existing), "--proxy-set", "lr=0.5"], "--proxy-set", "conflicts",
           out=existing)


def test_the_parsers_name_lists_are_the_registries():
    from evaluators.data import DATASETS
    from evaluators.proxy import PRESETS
    from search.samplers import SAMPLERS

    parser = run_search.build_parser()
    choices = {a.dest: tuple(a.choices) for a in parser._actions if a.choices}
    assert choices["dataset"] == DATASETS and choices["proxy"] == tuple(PRESETS)
    assert choices["sampler"] == SAMPLERS and run_search.PROXIES == tuple(PRESETS)


# ------------------------------------------------------------------------------------------------ as a process


def test_bad_input_as_a_process_is_one_line_exit_2_and_starts_no_ray(tmp_path):
    out = tmp_path / "x"
    argv = ["--budget", "abc", "--backbone", "resnet18", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "run_search.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not out.exists()
    assert "ray" not in proc.stderr.lower()
    # refused before Ray (or anything that imports it) was even imported
    code = f"import sys, run_search; rc = run_search.main({argv!r}); print('ray' in sys.modules); sys.exit(rc)"
    imported = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (imported.returncode, imported.stdout.strip()) == (2, "False"), imported.stdout + imported.stderr


def test_help_lists_the_contract(capsys):
    with pytest.raises(SystemExit) as e:
        run_search.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--budget", "--backbone", "--dataset", "--data-dir", "--proxy", "--objectives", "--sampler", "--seed",
                 "--out", "--resume", "--address", "--max-concurrent", "--space", "--select", "--device",
                 "--time-budget", "--show-space", "--early-stopping", "--retries"):
        assert flag in text
