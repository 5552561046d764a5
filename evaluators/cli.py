"""What both commands of ``run_search.py`` (the search and ``train``) share on the command line: one-line errors
(exit code 2, no usage block), argument types that name what they expect, and the output-directory check."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

__all__ = ["Parser", "UsageError", "check_creatable", "integer", "non_negative_int", "positive_float",
           "positive_int"]


class UsageError(Exception):
    """Bad input: one line for stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block) so that scripts and people see the reason only."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _int_at_least(low: int, message: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value

    return parse


def positive_int(what: str):
    return _int_at_least(1, f"must be a positive integer ({what})")


non_negative_int = _int_at_least(0, "must be an integer >= 0")


def positive_float(what: str, allow_zero: bool = False):
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


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def check_creatable(out: Path, flag: str = "--out") -> None:
    """``UsageError`` unless ``out`` is, or can be created as, a directory this process may write into."""
    ancestor = out.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {out}: {ancestor} is a file, not a directory; choose another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out}: {ancestor} is not writable; choose another {flag}")
