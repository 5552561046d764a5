"""One search at a time per ``--out``: a lock held for as long as a search writes there.

Two searches writing one output directory corrupt each other (the second ``--resume`` re-runs the first one's
running trials; the first then dies on Optuna's ``UpdateFinishedTrialError``). So a search holds an exclusive
``flock`` on ``<out>/search.lock`` from before it writes anything until it has written its results, and a second
one is refused at once with :class:`OutInUse`, naming the holder (pid, host, since when) that the file records.

The kernel drops a ``flock`` when its holder dies, ``kill -9`` included: a lock file that a killed search left
behind is stale by construction, and the next search takes it over. On a file system without ``flock`` (some
network mounts) the recorded holder is checked instead: a live pid on this host holds the directory, anything else
is stale. The descriptor is not inherited by the processes the search starts (Python opens files
non-inheritable), so Ray's workers never keep the lock alive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from results.schema import OUT_LOCK

__all__ = ["OutInUse", "OutLock"]


class OutInUse(RuntimeError):
    """Another live search is writing the output directory."""


class OutLock:
    """``with OutLock(out):`` holds ``out`` for this process; raises :class:`OutInUse` if another search holds it.

    A directory that the lock itself created and that holds nothing else when the lock is released (the search
    stopped before writing, e.g. a cluster that refused it) is removed again: a refused start leaves no trace.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.path = self.out / OUT_LOCK
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> OutLock:
        self._created_dir = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._take(fd)
        except BaseException:
            os.close(fd)  # the directory is the holder's: nothing here to tidy
            raise
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return self

    def _take(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                if not self._holder_alive():  # no flock here: the recorded holder decides
                    return
            raise OutInUse(self.describe_holder()) from None

    def _holder_alive(self) -> bool:
        holder = self.holder()
        if not holder or holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except (ProcessLookupError, ValueError, KeyError, TypeError):
            return False
        except PermissionError:
            return True
        return True

    def holder(self) -> dict | None:
        """What the lock file says of the search that holds (or last held) it."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None

    def describe_holder(self) -> str:
        holder = self.holder() or {}
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
               if holder else "a process that has not written its name yet")
        return (f"{self.out} is in use by a running search ({who}); wait for it to end, or stop it (Ctrl-C), "
                f"before starting another search on it")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._tidy()

    def _tidy(self) -> None:
        if self._created_dir and self.out.is_dir() and {p.name for p in self.out.iterdir()} <= {OUT_LOCK}:
            self.path.unlink(missing_ok=True)
            self.out.rmdir()
