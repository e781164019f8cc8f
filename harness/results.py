"""The results store: one JSON line per scored run under outputs/, appended under a lock.

A row is written whole or not at all: appends hold a lock, a half-written last line left by a
killed writer is cut before the next append, and a write that fails (disk full) is rolled back.
Readers skip a torn last line and, with a warning naming the line, any line an old crash left
unparsable, so one bad row never makes the store unreadable.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from harness.errors import OutputNotWritableError
from harness.locks import blocking_lock
from harness.records import read_text, repair_partial_tail

log = logging.getLogger("halluc_bench")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested metric dicts flattened to 'a.b' keys, keeping numbers only."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def check_store_writable(store: str | Path) -> None:
    """Raise OutputNotWritableError unless a row could be appended to the store (creates its folder, not the
    store: a run that fails before scoring leaves no empty store behind)."""
    store = Path(store)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        existed = store.exists()
        with open(store, "a", encoding="utf-8"):
            pass
        if not existed:
            store.unlink()
    except OSError as e:
        raise OutputNotWritableError(f"results_store={store} cannot be written ({e.strerror or e}); "
                                     f"set results_store=PATH to a writable file") from None


def add_result(store: str | Path, row: dict[str, Any]) -> dict:
    """Append a result row (stamped with the time) to the store, whole or not at all, and return it."""
    store = Path(store)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    data = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    try:
        with blocking_lock(store):
            repair_partial_tail(store)
            _append_or_roll_back(store, data)
    except OSError as e:
        raise OutputNotWritableError(f"results_store={store}: the row could not be written ({e.strerror or e}); "
                                     f"the store is unchanged") from None
    return row


def _append_or_roll_back(store: Path, data: bytes) -> None:
    """Append `data` and fsync; on failure cut the file back to its former length and re-raise."""
    fd = os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def read_results(store: str | Path) -> list[dict]:
    """All rows of the store (empty when it does not exist yet); unparsable lines are skipped with a warning."""
    store = Path(store)
    if not store.exists():
        return []
    text = read_text(store, "results store")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row, start = _parse_row(line)
        if start:
            log.warning("%s, line %d: a torn row before a whole one skipped: %r", store, i, line[:start][:80])
        if row is None:
            if not (i == len(lines) and not text.endswith("\n")):  # a torn last line is a write in flight
                log.warning("%s, line %d: unreadable results row skipped: %r", store, i, line[:80])
            continue
        rows.append(row)
    return rows


def _parse_row(line: str) -> tuple[dict | None, int]:
    """(row, offset) of a store line; where an old crash left a torn row before a whole one, the whole one."""
    for start in (0, line.rfind('{"time": ')):
        if start < 0:
            continue
        try:
            row = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return row, start
    return None, 0


def setting_label(decoding: dict | None, seed: int | None, limit: int | None) -> str:
    """A short label of what else shapes a run's answers: non-greedy decoding, its seed, an item limit.

    `decoding` is the decoding config as given (max_new_tokens null unless the user set it).
    """
    parts = []
    d = dict(decoding or {})
    strategy = d.get("strategy", "greedy")
    if strategy == "sample":
        parts.append(f"sample T={d.get('temperature', 1.0)} p={d.get('top_p', 1.0)}"
                     + (f" k={d['top_k']}" if d.get("top_k") else "") + f" seed={seed}")
    elif strategy == "beam":
        parts.append(f"beam {d.get('num_beams', 5)}")
    if d.get("max_new_tokens"):
        parts.append(f"max_new_tokens={d['max_new_tokens']}")
    if limit:
        parts.append(f"first {limit}")
    return ", ".join(parts)


def result_row(model_cfg: dict, intervention: Any, bench: Any, scores: dict, fingerprint: dict | None,
               answers_path: str | Path, run_dir: str | Path, setting: str = "", provenance: dict | None = None,
               units_path: str | Path | None = None) -> dict:
    """The store row for one scored run.

    Besides the metrics: their 95% CIs (`ci`), which side is better per metric (`directions`), the per-item
    units file the leaderboard's paired tests read (`units`), the benchmark's config (`benchmark_cfg`) and
    the run's provenance (harness commit, versions, dataset hashes, judge, decoding, seed).
    """
    return {
        "model": model_cfg.get("name"),
        "setting": setting,
        "intervention": intervention.name if intervention is not None else "external",
        "params": intervention.params() if intervention is not None else {},
        "intervention_label": intervention.label() if intervention is not None else "external answers",
        "benchmark": bench.label(),
        "benchmark_name": bench.name,
        "benchmark_cfg": dict(bench.cfg),
        "headline": list(bench.headline_metrics),
        "directions": dict(getattr(bench, "metric_directions", {}) or {}),
        "metrics": flatten(scores),
        "ci": dict(scores.get("ci") or {}),
        "fingerprint": (fingerprint or {}).get("hash"),
        "answers": str(answers_path),
        "units": str(units_path) if units_path else None,
        "run_dir": str(run_dir),
        "provenance": provenance or {},
    }
