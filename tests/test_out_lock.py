"""One search per --out: the lock refuses a second holder by name and takes over what a dead one left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from search.out_lock import OutInUse, OutLock


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_is_free_once_released(tmp_path):
    out = tmp_path / "run"
    with OutLock(out):
        (out / "trials.csv").write_text("x\n")
        with pytest.raises(OutInUse) as refused, OutLock(out):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}, since " in message and str(out) in message
        assert (out / "trials.csv").read_text() == "x\n"  # the refused one touched nothing
    with OutLock(out):  # released: the next search takes it
        assert json.loads((out / "search.lock").read_text())["pid"] == os.getpid()


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path):
    out = tmp_path / "run"
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from search.out_lock import OutLock; "
            "OutLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), 9)")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code, str(out), root], capture_output=True)
    assert proc.returncode == -9 and (out / "search.lock").exists()
    dead = json.loads((out / "search.lock").read_text())["pid"]
    assert dead != os.getpid()
    with OutLock(out):
        assert json.loads((out / "search.lock").read_text())["pid"] == os.getpid()


def test_a_directory_the_lock_created_and_nothing_else_wrote_is_removed(tmp_path):
    out = tmp_path / "new"
    with OutLock(out):
        assert out.is_dir()
    assert not out.exists()  # e.g. a cluster that refused the search: no trace
    kept = tmp_path / "kept"
    with OutLock(kept):
        (kept / "search.json").write_text("{}")
    assert sorted(p.name for p in kept.iterdir()) == ["search.json", "search.lock"]


def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch):
    # some network file systems refuse flock (ENOLCK): a live pid on this host holds the directory, a dead one not
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(fcntl, "flock", no_flock)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "earlier"}
    (out / "search.lock").write_text(json.dumps(holder))
    with pytest.raises(OutInUse, match=f"pid {os.getpid()} on {socket.gethostname()}, since earlier"), OutLock(out):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "search.lock").write_text(json.dumps({**holder, "pid": int(dead.stdout)}))
    with OutLock(out):  # its holder is gone: taken over
        assert json.loads((out / "search.lock").read_text())["pid"] == os.getpid()
