"""Atomic file writes: a killed search never leaves a half-written results file behind.

Every writer goes to a temporary file in the *same* directory and then ``os.replace`` s it over the target.
``os.replace`` is atomic on POSIX and Windows when source and target are on the same filesystem, which is why the
temporary file lives next to the target rather than in ``/tmp``. Readers therefore see either the old file or the
new one, never a truncated mix.

Example::

    from results.io import atomic_write_text

    atomic_write_text("out/best_config.json", json.dumps(cfg, indent=2))
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "disk_full", "error_chain"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on clean exit move it over ``path`` atomically.

    For writers that insist on a file name (``DataFrame.to_parquet``, ``Figure.savefig``). If the body raises, the
    temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed name keeps the half-written file out of casual `ls` and glob("*.csv") listings.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # Readers that share the output folder (another process, a user with `tail`) should be able to read it;
        # mkstemp creates 0600 files.
        _chmod_like_default(tmp)
        os.replace(tmp, target)
    except BaseException:
        # BaseException on purpose: a KeyboardInterrupt mid-write must not leave the temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            # Without fsync a power loss after os.replace can leave an empty file under the final name.
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def _read_umask() -> int:
    # There is no portable way to read the umask without setting it; do the set-and-restore once, at import, rather
    # than per write, because another thread creating a file in between would get umask 0.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _chmod_like_default(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_UMASK)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it (``__cause__``, else ``__context__``, else SQLAlchemy's ``orig``), each once."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__ or getattr(e, "orig", None)


def disk_full(error: BaseException) -> str | None:
    """If ``error`` (or an error in its chain of causes) says the disk or quota is full, the path it names (``""``
    when it names none); otherwise ``None``. SQLite says so in its own words (``database or disk is full``)."""
    for e in error_chain(error):
        if isinstance(e, OSError) and e.errno in _FULL:
            return str(e.filename or "")
        if isinstance(e, sqlite3.OperationalError) and "disk is full" in str(e):
            return ""
    return None
