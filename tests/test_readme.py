"""The README's two set-up commands and .ci/run agree: the same install line for the dataset, the same steps."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Set-up on a fresh machine")
    setup = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def _steps(command: str) -> list[str]:
    """The command's top-level steps (split on the ``&&`` outside braces)."""
    steps, depth, start = [], 0, 0
    for i, ch in enumerate(command):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0 and command.startswith("&&", i):
            steps.append(command[start:i].strip())
            start = i + 2
    return steps + [command[start:].strip()]


def test_exactly_two_commands_that_install_the_dataset_the_same_way_and_ci_runs_the_second():
    search, tests = _commands()
    assert _steps(search)[-1] == "python run_search.py --budget 200 --backbone resnet50"
    assert _steps(tests)[-1] == "python -m pytest -q"
    install = next(s for s in _steps(tests) if "dataset-fashion-mnist" in s)
    assert install in _steps(search) and "sudo apt-get" not in install.replace("$(command -v sudo) apt-get", "")
    assert _steps(search)[:2] == _steps(tests)[:2]  # the same virtual environment and torch
    # .ci/run extracts and runs the README's second command; what it extracts is exactly that command
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    extract = script[script.index("command=$(") + len("command=$("):script.index("README.md)")] + "README.md"
    proc = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == tests, proc.stdout + proc.stderr
    assert 'bash -c "$command"' in script


def test_the_install_line_is_valid_shell_and_installs_nothing_when_the_package_is_there(tmp_path):
    search, _ = _commands()
    install = next(s for s in _steps(search) if "dataset-fashion-mnist" in s)
    # dpkg stands in for the real one: "installed" -> nothing else may run (no apt-get, no sudo)
    for name, body in (("dpkg", "exit 0"), ("apt-get", "echo apt-get \"$@\" >> calls; exit 0"),
                       ("sudo", "echo sudo \"$@\" >> calls; exit 0")):
        tool = tmp_path / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    proc = subprocess.run(["bash", "-c", install], cwd=tmp_path, env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "calls").exists()
    # "not installed" -> the lists are refreshed, then the package installed, through sudo where there is one
    (tmp_path / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    proc = subprocess.run(["bash", "-c", install], cwd=tmp_path, env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "sudo apt-get update", "sudo apt-get install -y dataset-fashion-mnist"]


def test_both_commands_install_the_pins_and_the_pins_are_inside_setup_cfgs_ranges():
    import configparser

    from packaging.requirements import Requirement

    for command in _commands():
        installs = [s for s in _steps(command) if s.startswith("pip install")]
        assert installs and all(s.startswith("pip install -c constraints.txt ") for s in installs), installs
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    ranges = cfg["options"]["install_requires"] + "\n" + cfg["options.extras_require"]["dev"]
    for line in ranges.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short_and_every_relative_link_in_it_and_in_docs_resolves():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 15 * 1024, f"README.md is {readme.stat().st_size} bytes"
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"(?m)^#{1,6} (.*)$", file.read_text(encoding="utf-8"))
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme.read_text(encoding="utf-8")))
    assert linked >= {p.name for p in pages[1:] if not p.name.startswith("example-")}, "a docs page the README omits"
