"""No code path turns a user's file into code: the project's sources never call eval/exec, pickle or marshal
loads, ``yaml.load`` / ``yaml.unsafe_load``, or ``torch.load`` without ``weights_only=True``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("space", "evaluators", "search", "results", "bench") for p in (ROOT / d).rglob("*.py")]
SOURCES.append(ROOT / "run_search.py")

FORBIDDEN = {("", "eval"), ("", "exec"), ("pickle", "load"), ("pickle", "loads"), ("marshal", "load"),
             ("marshal", "loads"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
             ("pd", "read_pickle"), ("pandas", "read_pickle"), ("dill", "load"), ("cloudpickle", "load")}


def _call_name(node: ast.Call) -> tuple[str, str]:
    f = node.func
    if isinstance(f, ast.Name):
        return "", f.id
    if isinstance(f, ast.Attribute):
        # model.eval() and the like are methods, not the builtin: only a plain name counts as owner
        owner = f.value.id if isinstance(f.value, ast.Name) else "<expr>"
        return owner, f.attr
    return "", ""


def _problems(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        owner, attr = _call_name(node)
        if (owner, attr) in FORBIDDEN:
            found.append(f"{name}:{node.lineno}: {owner + '.' if owner else ''}{attr}()")
        if (owner, attr) == ("torch", "load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"{name}:{node.lineno}: torch.load() without weights_only=True")
    return found


def test_the_checker_finds_what_it_forbids():
    bad = "import torch, yaml, pickle\ntorch.load(p)\nyaml.load(s)\npickle.loads(b)\neval(x)\n"
    assert len(_problems(bad, "x.py")) == 4
    good = "import torch, yaml\ntorch.load(p, weights_only=True)\nyaml.safe_load(s)\nmake().eval()\nm.eval()\n"
    assert _problems(good, "x.py") == []


def test_no_source_deserialises_code():
    assert len(SOURCES) > 20
    problems = [p for path in SOURCES for p in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert problems == []
