"""The results store: one JSON line per scored run under outputs/, appended under a lock."""
from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from harness.records import read_jsonl


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


def add_result(store: str | Path, row: dict[str, Any]) -> dict:
    """Append a result row (stamped with the time) to the store and return it."""
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
    with open(store, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    return row


def read_results(store: str | Path) -> list[dict]:
    """All rows of the store (empty when it does not exist yet)."""
    store = Path(store)
    return read_jsonl(store, drop_partial_tail=True) if store.exists() else []


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
