"""The one reader of ``search.json``, the manifest a search keeps in ``--out`` (written by ``search.settings``).

``run_search.py --resume`` reads the settings back through :func:`read_manifest`, and ``python -m results`` reads
what rendering needs through :func:`render_settings`: the manifest holds every setting, so neither supplies
defaults of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from results.schema import MANIFEST

__all__ = ["MANIFEST_VERSION", "read_manifest", "render_settings"]

MANIFEST_VERSION = 1


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the search in ``out``; ``FileNotFoundError`` / ``ValueError`` if there is none usable."""
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); it does not describe a search that can be resumed") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path} is not a search manifest of this version ({MANIFEST_VERSION})")
    return data


def render_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """What re-rendering a search's results takes from its manifest: ``objectives``, ``select`` and the keyword
    arguments of ``results.report.finalize`` (``resolution``, ``dataset``, ``num_classes``, ``fidelity``,
    ``verify_score``).
    ``ValueError`` naming a missing setting."""
    from evaluators.fidelity import VERIFY_OFF, describe_verify

    missing = [k for k in ("objectives", "select", "resolution", "dataset", "num_classes") if k not in manifest]
    if missing:
        raise ValueError(f"{MANIFEST} lacks {', '.join(missing)}: not a manifest of this version")
    return {"objectives": list(manifest["objectives"]), "select": manifest["select"],
            "resolution": manifest["resolution"], "dataset": manifest["dataset"],
            "num_classes": manifest["num_classes"], "fidelity": describe_verify(manifest.get("verify", VERIFY_OFF)),
            "verify_score": (manifest.get("verify_fidelity") or {}).get("score")}
