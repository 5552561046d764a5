"""The spread of each cost objective over a search space, and the line that says when one is flat."""

from __future__ import annotations

from dataclasses import replace

import pytest

from evaluators.cost_spread import FLAT_SPAN, CostSpread, Spread, cost_spread, costliest_config
from evaluators.flops import measure
from space import ArchConfig, SearchSpace

#: The paper's question only: where SCSA goes (mid slot), with the paper's settings.
PAPER_ONLY = {"attn": ["none", "scsa"], "position": ["mid"], "groups": [4], "kernel_start": [3],
              "kernel_step": [2], "window": [7], "heads": [1], "gate": ["sigmoid"], "pool": ["avg"]}


def test_resnet50_is_flat_where_only_placement_is_searched():
    spread = cost_spread(SearchSpace.from_spec("resnet50", PAPER_ONLY), resolution=224)
    assert spread.costliest == ArchConfig.paper_default("resnet50")  # SCSA in every block is the dearest
    gflops = spread.spreads[0]
    assert gflops.objective == "gflops" and gflops.flat
    assert gflops.span == pytest.approx(4.135323584 / 4.111512576 - 1)  # SCSA everywhere adds 0.58 %
    assert spread.flat() == ["gflops", "params"]
    lines = spread.lines()
    assert "gflops: plain 4.1115, paper default 4.1353 (+0.58 %), costliest 4.1353 (+0.58 %); span 0.58 %" in lines[1]
    flat = [line for line in lines if line.startswith("gflops spans only")]
    assert len(flat) == 1 and "--objectives accuracy,latency" in flat[0]
    assert spread.to_dict()["lines"] == lines and spread.to_dict()["spreads"]["gflops"]["flat"] is True


def test_mobilenetv2_is_not_flat():
    spread = cost_spread(SearchSpace.from_spec("mobilenetv2_100", PAPER_ONLY), resolution=224,
                         objectives=["accuracy", "gflops"])
    assert [s.objective for s in spread.spreads] == ["gflops"]  # accuracy is no cost
    assert spread.spreads[0].span > 0.15 and spread.flat() == []
    assert not any("spans only" in line for line in spread.lines())


def test_costliest_config_of_the_default_space():
    space = SearchSpace("resnet18")
    arch = costliest_config(space, resolution=48)
    space.params_of(arch)  # reachable: built through the space's own choices and repairs
    top = measure(arch, 48).gflops
    others = [ArchConfig.paper_default("resnet18"), *(space.sample(seed) for seed in range(6))]
    assert all(measure(a, 48).gflops < top for a in others)
    # one stage narrowed to no attention: that stage stays plain, the others still take the dearest choice
    narrowed = SearchSpace.from_spec("resnet18", {"stages": {2: {"attn": ["none"]}}})
    arch2 = costliest_config(narrowed, resolution=48)
    assert arch2.stages[1].attn == "none" and arch2.stages[0] == arch.stages[0]


def test_spread_lines_from_given_costs():
    spread = CostSpread("resnet50", 224, ArchConfig.baseline("resnet50"), (
        Spread("gflops", 4.0, 4.02, 4.06), Spread("latency_ms", 10.0, 10.1, 10.1), Spread("params", 1.0, 1.0, 1.5)))
    assert spread.flat() == ["gflops", "latency_ms"]
    lines = spread.lines()
    assert len(lines) == 1 + 3 + 2
    assert lines[4].startswith("gflops spans only 1.50 %")
    assert lines[4].endswith("consider --objectives accuracy,latency")
    assert "latency_ms spans only 1.00 %" in lines[5] and "--objectives" not in lines[5]
    assert Spread("gflops", 1.0, 1.0, 1.0 + FLAT_SPAN).flat is False


def test_latency_needs_a_cost_function():
    space = SearchSpace.from_spec("resnet18", PAPER_ONLY)
    with pytest.raises(ValueError, match="latency_ms"):
        cost_spread(space, 48, objectives=["gflops", "latency_ms"])
    spread = cost_spread(space, 48, objectives=["latency_ms"], costs={"latency_ms": lambda a: 1.0})
    assert spread.spreads == (Spread("latency_ms", 1.0, 1.0, 1.0),)


# --- where it is said: at the start of a search, and in best_config.md ---------------------------------------


def _records() -> list[dict]:
    archs = {"t0": ArchConfig.baseline("resnet18"), "t1": ArchConfig.paper_default("resnet18")}
    refs = {"t0": "baseline", "t1": "paper_default"}
    return [dict(trial_id=tid, number=i, seed=0, status="completed", reference=refs[tid], accuracy=0.8 + 0.01 * i,
                 gflops=1.82 + 0.01 * i, params=11_689_512 + i, config=arch.to_dict())
            for i, (tid, arch) in enumerate(archs.items())]


def test_search_start_prints_and_keeps_the_spread(tmp_path, monkeypatch):
    from results.report import read_cost_spread
    from search import run as search_run
    from search.settings import SearchSettings

    settings = SearchSettings(backbone="resnet18", budget=2, out=str(tmp_path), space_spec=PAPER_ONLY,
                              resolution=48, objectives=["accuracy", "gflops", "params"])
    space = SearchSpace.from_spec("resnet18", PAPER_ONLY)
    printed: list[str] = []
    spread = search_run.report_cost_spread(settings, space, printed.append)
    assert printed == spread["lines"] and printed[0].startswith("cost spread over the space (resnet18 at 48 px")
    assert any(line.startswith("  gflops: plain ") for line in printed)
    assert read_cost_spread(tmp_path) == spread
    # a resumed search prints what its first session measured, without measuring again
    monkeypatch.setattr(search_run, "_measure_cost_spread", lambda *a: pytest.fail("measured again"))
    again: list[str] = []
    search_run.report_cost_spread(replace(settings, resume=True), space, again.append)
    assert again == printed
    # a spread that cannot be measured is one line, not the end of the search

    def broken(*args):
        raise RuntimeError("no device")

    monkeypatch.setattr(search_run, "_measure_cost_spread", broken)
    said: list[str] = []
    assert search_run.report_cost_spread(settings, space, said.append) is None
    assert said == ["cost spread over the space not measured: RuntimeError: no device"]


def test_search_start_measures_latency_only_beside_the_trials(tmp_path, monkeypatch):
    from evaluators import latency
    from search import run as search_run
    from search.settings import SearchSettings

    class Fake:
        def __init__(self, arch) -> None:
            self.latency_ms = 10.0 if arch == ArchConfig.baseline("resnet18") else 15.0

    monkeypatch.setattr(latency, "latency_ratio", lambda arch, **kw: Fake(arch))
    space = SearchSpace.from_spec("resnet18", PAPER_ONLY)
    settings = SearchSettings(backbone="resnet18", budget=2, out=str(tmp_path), space_spec=PAPER_ONLY,
                              resolution=48, objectives=["accuracy", "latency_ms"], device="cpu")
    lines = search_run.report_cost_spread(settings, space, lambda line: None)["lines"]
    assert lines[1] == "  latency_ms: plain 10.0000, paper default 15.0000 (+50.00 %), costliest 15.0000 (+50.00 %); " \
                       "span 50.00 %"
    remote = replace(settings, out=str(tmp_path / "remote"), address="10.0.0.1:6379")
    assert len(search_run.report_cost_spread(remote, space, lambda line: None)["lines"]) == 1  # nothing measured


def test_best_config_md_says_when_an_axis_is_flat(tmp_path):
    from results.report import finalize, write_cost_spread

    spread = cost_spread(SearchSpace.from_spec("resnet50", PAPER_ONLY), resolution=224).to_dict()
    write_cost_spread(tmp_path, spread)
    finalize(tmp_path, _records(), ["accuracy", "gflops"], "max-accuracy", num_classes=10)
    md = (tmp_path / "best_config.md").read_text()
    section = md[md.index("## Cost spread over the space"):]
    assert "- gflops: plain 4.1115, paper default 4.1353 (+0.58 %), costliest 4.1353 (+0.58 %); span 0.58 %" in section
    assert "**gflops spans only 0.58 % over this space (under 2 %): it can hardly rank configs; consider " \
           "--objectives accuracy,latency**" in section
    finalize(tmp_path, _records(), ["accuracy", "gflops"], "max-accuracy", num_classes=10)  # re-rendered: once
    assert (tmp_path / "best_config.md").read_text().count("## Cost spread") == 1


def test_best_config_md_without_a_spread(tmp_path):
    from results.report import finalize

    finalize(tmp_path, _records(), ["accuracy", "gflops"], "max-accuracy", num_classes=10)
    assert "Cost spread" not in (tmp_path / "best_config.md").read_text()
