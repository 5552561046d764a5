"""docs/upstream.md lists every private name of ray, optuna, timm, fvcore, torch and pandas that the code uses."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBS = "ray|optuna|timm|fvcore|torch|pandas"
# `lib.module._private...` anywhere, or `from lib.module import _private`
DOTTED = re.compile(rf"\b(?:{LIBS})(?:\.\w+)*\._[A-Za-z]\w*")
FROM = re.compile(rf"^\s*from ((?:{LIBS})(?:\.\w+)*) import \(?([^)#]*)", re.M)


def _private_names(text: str) -> set[str]:
    names = {m.group(0) for m in DOTTED.finditer(text)}
    for module, imported in FROM.findall(text):
        for name in imported.split(","):
            name = name.strip().split(" as ")[0].strip()
            if name.startswith("_") and not name.startswith("__"):
                names.add(f"{module}.{name}")
    return names


def test_every_private_upstream_name_in_the_code_is_listed():
    listed = (ROOT / "docs" / "upstream.md").read_text(encoding="utf-8")
    files = [p for d in ("space", "evaluators", "search", "results", "bench", "tests") for p in (ROOT / d).glob("*.py")]
    files.append(ROOT / "run_search.py")
    used = {}
    for path in files:
        for name in _private_names(path.read_text(encoding="utf-8")):
            used.setdefault(name, path.relative_to(ROOT).as_posix())
    assert used, "the scan found nothing: it would not notice a new private name either"
    missing = {name: where for name, where in used.items() if name not in listed}
    assert not missing, f"private upstream names used but not listed in docs/upstream.md: {missing}"


def test_the_scan_sees_both_forms():
    # the sample is split so that this file's own source does not use the name it makes up
    text = "from fvcore.nn.jit_analysis import " "_IGNORED_OPS as X\nimport ray\nray._private.foo\n"
    assert _private_names(text) == {"fvcore.nn.jit_analysis." "_IGNORED_OPS", "ray._private"}
