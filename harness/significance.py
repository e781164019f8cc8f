"""Paired tests between stored runs: a method's row against the same model's `none` row (leaderboard stars).

Each scored run stores its per-item units (`units.json`) and its benchmark config in the results store, so
a test needs no re-scoring: the benchmark object is rebuilt from its config only for `metrics_from_sums`.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("halluc_bench")


@functools.lru_cache(maxsize=64)
def _load_units(path: str, mtime: float):
    from harness.stats import Units

    return Units.load(path)


def load_units(path: str | None):
    """The Units stored at `path`, or None when there is no such file."""
    if not path or not Path(path).is_file():
        return None
    return _load_units(str(path), Path(path).stat().st_mtime)


@functools.lru_cache(maxsize=64)
def _benchmark(cfg_json: str):
    from harness.registry import BENCHMARKS

    cfg = json.loads(cfg_json)
    return BENCHMARKS.get(cfg["name"])(cfg)


def benchmark_from_row(row: dict) -> Any:
    """The benchmark object a store row was scored with (None when the row predates `benchmark_cfg`)."""
    cfg = row.get("benchmark_cfg")
    if not cfg or "name" not in cfg:
        return None
    return _benchmark(json.dumps(cfg, sort_keys=True, default=str))


def baseline_pvalues(rows: Sequence[dict], permutations: int = 1000, seed: int = 0) -> dict[int, dict[str, float]]:
    """{id(row): {metric: p}} for every non-`none` row whose model has a `none` row (same setting) with units.

    Rows are one benchmark's latest rows. Pairs whose units are missing or cover different items get no
    p-values (logged at debug level), so the leaderboard simply shows no star.
    """
    from harness.stats import paired_permutation

    base = {(r["model"], r.get("setting", "")): r for r in rows
            if r.get("intervention") == "none" and not (r.get("params") or {})}
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        b = base.get((r["model"], r.get("setting", "")))
        if b is None or b is r or r.get("intervention") in ("none", "external"):
            continue
        ua, ub = load_units(b.get("units")), load_units(r.get("units"))
        bench = benchmark_from_row(r)
        if ua is None or ub is None or bench is None:
            continue
        try:
            out[id(r)] = paired_permutation(bench.metrics_from_sums, ua, ub, permutations, seed)
        except ValueError as e:  # different items, or units of another configuration
            log.debug("no paired test for %s vs %s: %s", r.get("run_dir"), b.get("run_dir"), e)
    return out
