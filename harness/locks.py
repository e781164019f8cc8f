"""Cross-process file locks (portable, through `filelock`): one writer per answers file, serialised merges.

``exclusive_writer(path)`` is held by a run for as long as it writes an answers file: a second
run on the same file refuses at once with a RunLockedError naming the holder (its pid, host and
start time, kept in a ``<file>.owner`` sidecar next to the lock). Shards of one job write
different files, so they do not block each other. ``blocking_lock(path)`` waits its turn
(merging shard files, appending to the results store).
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from harness.errors import RunLockedError


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe_owner(sidecar: Path) -> str:
    """'pid N on host H since T' from an owner sidecar, or a fallback when it cannot be read."""
    try:
        o = json.loads(sidecar.read_text(encoding="utf-8"))
        return f"pid {o['pid']} on host {o['host']} (since {o['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its owner file is unreadable)"


@contextmanager
def exclusive_writer(path: str | Path, what: str = "answers file") -> Iterator[None]:
    """Hold the lock of `path` (a file about to be written) or raise RunLockedError at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    sidecar = Path(str(path) + ".owner")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(
            f"{what} {path} is being written by {describe_owner(sidecar)}; wait for that run to finish "
            f"or stop it (a second run in the same run directory would answer everything twice)") from None
    try:
        sidecar.write_text(json.dumps(_owner()) + "\n", encoding="utf-8")
        yield
    finally:
        sidecar.unlink(missing_ok=True)
        lock.release()


@contextmanager
def blocking_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` + '.lock', waiting for other holders to release it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield
