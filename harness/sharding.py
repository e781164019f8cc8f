"""Data-parallel shards: disjoint item subsets per process, and a checked merge into answers.jsonl."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from harness.records import read_jsonl

ANSWERS = "answers.jsonl"


def shard_world(num_shards: int | None, shard_id: int | None) -> tuple[int, int]:
    """(num_shards, shard_id) from explicit config, else torchrun's WORLD_SIZE/RANK, else (1, 0)."""
    n = int(num_shards) if num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    i = int(shard_id) if shard_id is not None else int(os.environ.get("RANK", 0))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"run.shard_id={i} must be in [0, run.num_shards={n})")
    return n, i


def shard_items(items: Sequence, num_shards: int, shard_id: int) -> list:
    """This shard's items: every num_shards-th item starting at shard_id (disjoint, covering)."""
    return list(items[shard_id::num_shards])


def shard_file(run_dir: Path, num_shards: int, shard_id: int) -> Path:
    """The answers file of one shard (the final answers.jsonl for a single-process run)."""
    if num_shards == 1:
        return Path(run_dir) / ANSWERS
    return Path(run_dir) / f"answers.shard{shard_id:03d}-of-{num_shards:03d}.jsonl"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive file lock on the run directory (serialises merges across processes)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merge_shards(run_dir: Path, num_shards: int, expected_ids: Sequence) -> Path | None:
    """Write answers.jsonl from all shard files when together they answer exactly `expected_ids`.

    Returns the merged path, or None while some shard is still incomplete. Raises on duplicated
    or unknown ids. Records keep the order of `expected_ids`.
    """
    run_dir = Path(run_dir)
    final = run_dir / ANSWERS
    if num_shards == 1:
        return final
    with run_lock(run_dir):
        by_id: dict[str, dict] = {}
        for i in range(num_shards):
            f = shard_file(run_dir, num_shards, i)
            if not f.exists():
                return None
            for rec in read_jsonl(f, drop_partial_tail=True):
                key = str(rec["question_id"])
                if key in by_id:
                    raise ValueError(f"{f}: question_id {key} is answered twice across shards")
                by_id[key] = rec
        expected = [str(x) for x in expected_ids]
        unknown = set(by_id) - set(expected)
        if unknown:
            raise ValueError(f"shard files in {run_dir} answer ids that are not in the benchmark: {sorted(unknown)[:10]}")
        if len(by_id) < len(expected):
            return None
        import json

        tmp = final.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for key in expected:
                fh.write(json.dumps(by_id[key], ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final
