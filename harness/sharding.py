"""Data-parallel shards: disjoint item subsets per process, and a checked merge into answers.jsonl.

The merge runs under the run lock; the process that finds all shards complete merges them and
is the one that scores, exactly once per set of answers (a ``answers.jsonl.scored`` marker holds
the hash of the answers it scored), so a torchrun job prints its scores and stores its row once.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from harness.errors import ConfigValueError, HarnessError
from harness.locks import blocking_lock
from harness.records import atomic_write_text, read_jsonl

ANSWERS = "answers.jsonl"


def shard_world(num_shards: int | None, shard_id: int | None) -> tuple[int, int]:
    """(num_shards, shard_id) from explicit config, else torchrun's WORLD_SIZE/RANK, else (1, 0)."""
    n = int(num_shards) if num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    i = int(shard_id) if shard_id is not None else int(os.environ.get("RANK", 0))
    if n < 1 or not 0 <= i < n:
        raise ConfigValueError(f"run.shard_id={i} must be in [0, run.num_shards={n})")
    return n, i


def shard_items(items: Sequence, num_shards: int, shard_id: int) -> list:
    """This shard's items: every num_shards-th item starting at shard_id (disjoint, covering)."""
    return list(items[shard_id::num_shards])


def shard_file(run_dir: Path, num_shards: int, shard_id: int) -> Path:
    """The answers file of one shard (the final answers.jsonl for a single-process run)."""
    if num_shards == 1:
        return Path(run_dir) / ANSWERS
    return Path(run_dir) / f"answers.shard{shard_id:03d}-of-{num_shards:03d}.jsonl"


class ShardMergeError(HarnessError, ValueError):
    """Shard files that cannot be merged: an id answered twice, or ids outside the benchmark."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run directory, waited for (serialises merges and scoring across processes)."""
    with blocking_lock(Path(run_dir) / ".merge"):
        yield


def merge_shards(run_dir: Path, num_shards: int, expected_ids: Sequence) -> Path | None:
    """Write answers.jsonl from all shard files when together they answer exactly `expected_ids`.

    Returns the merged path, or None while some shard is still incomplete. Raises on duplicated
    or unknown ids. Records keep the order of `expected_ids`. Takes the run lock.
    """
    with run_lock(run_dir):
        return merge_shards_locked(run_dir, num_shards, expected_ids)


def merge_shards_locked(run_dir: Path, num_shards: int, expected_ids: Sequence) -> Path | None:
    """merge_shards for a caller that already holds run_lock(run_dir)."""
    run_dir = Path(run_dir)
    final = run_dir / ANSWERS
    if num_shards == 1:
        return final
    by_id: dict[str, dict] = {}
    for i in range(num_shards):
        f = shard_file(run_dir, num_shards, i)
        if not f.exists():
            return None
        for rec in read_jsonl(f, drop_partial_tail=True):
            key = str(rec["question_id"])
            if key in by_id:
                raise ShardMergeError(f"{f}: question_id {key} is answered twice across shards")
            by_id[key] = rec
    expected = [str(x) for x in expected_ids]
    unknown = set(by_id) - set(expected)
    if unknown:
        raise ShardMergeError(f"shard files in {run_dir} answer ids that are not in the benchmark: {sorted(unknown)[:10]}")
    if len(by_id) < len(expected):
        return None
    text = "".join(json.dumps(by_id[key], ensure_ascii=False) + "\n" for key in expected)
    if not final.exists() or final.read_text(encoding="utf-8") != text:
        atomic_write_text(final, text)
    return final


def _marker(merged: Path) -> Path:
    return merged.with_name(merged.name + ".scored")


def _digest(merged: Path) -> str:
    return hashlib.sha256(merged.read_bytes()).hexdigest()


def already_scored(merged: Path) -> bool:
    """Whether these merged answers (same content) were already scored and stored; call under run_lock."""
    try:
        return json.loads(_marker(merged).read_text(encoding="utf-8")).get("sha256") == _digest(merged)
    except (OSError, ValueError, AttributeError):
        return False


def mark_scored(merged: Path) -> None:
    """Record that the merged answers as they are now have been scored and stored; call under run_lock."""
    info = {"sha256": _digest(merged), "pid": os.getpid(), "host": socket.gethostname()}
    atomic_write_text(_marker(merged), json.dumps(info) + "\n")
