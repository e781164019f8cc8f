"""Uncertainty for every metric: per-unit statistics, percentile-bootstrap CIs and paired tests (numpy only).

A benchmark that implements ``units(records)`` returns a :class:`Units` table: one row per resampling
unit (a CHAIR caption, a POPE question, an MME image's question pair, a judged question), each row a few
additive statistics (e.g. tp/fp/tn/fn indicators), and a stratum (POPE split, MME subtask) that the
resampling keeps fixed. Every metric is then a function of the per-stratum column sums, which the
benchmark computes for many resamples at once in ``metrics_from_sums``. Resampling with replacement is
done with resampling counts (weights), so one bootstrap is a matrix product, never a Python loop.

- ``bootstrap_ci``: 95% percentile bootstrap per metric, resampling units within their stratum.
- ``paired_bootstrap``: the same resamples applied to two runs' units over the same items; CI of B - A.
- ``paired_permutation``: p-value of B - A under the null that A and B are exchangeable per item
  (each item's two rows are swapped with probability 1/2); two-sided, ``(1 + #|d*| >= |d|) / (1 + P)``,
  so comparing a run with itself gives exactly p = 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MetricFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
DEFAULT_RESAMPLES = 1000
_CHUNK = 250  # resamples per matrix product: bounds memory at chunk x units


@dataclass
class Units:
    """Per-unit additive statistics: ``values[i]`` of unit ``ids[i]`` in stratum ``strata[i]``."""

    ids: list[str]
    values: np.ndarray  # (n, k) float64
    columns: tuple[str, ...]
    strata: np.ndarray  # (n,) int, indexes stratum_names
    stratum_names: tuple[str, ...] = ("all",)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(len(self.ids), len(self.columns))
        self.strata = np.asarray(self.strata, dtype=np.int64).reshape(len(self.ids))
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("units: duplicate unit ids")

    def __len__(self) -> int:
        return len(self.ids)

    def totals(self) -> np.ndarray:
        """Column sums per stratum, shaped (1, strata, columns): the input of ``metrics_from_sums``."""
        out = np.zeros((1, len(self.stratum_names), len(self.columns)))
        np.add.at(out[0], self.strata, self.values)
        return out

    def aligned_to(self, other: "Units") -> "Units":
        """These units reordered to ``other``'s ids; a ValueError names the ids only one side has."""
        if self.columns != other.columns or self.stratum_names != other.stratum_names:
            raise ValueError("units of different benchmarks or configurations cannot be paired")
        pos = {u: i for i, u in enumerate(self.ids)}
        mine, theirs = set(self.ids), set(other.ids)
        if mine != theirs:
            only_a, only_b = sorted(theirs - mine), sorted(mine - theirs)
            raise ValueError(f"the two runs answered different items: {len(only_a)} only in the first "
                             f"(e.g. {', '.join(only_a[:5])}), {len(only_b)} only in the second "
                             f"(e.g. {', '.join(only_b[:5])})")
        idx = np.array([pos[u] for u in other.ids], dtype=np.int64)
        return Units(list(other.ids), self.values[idx], self.columns, self.strata[idx], self.stratum_names)

    def to_json(self) -> dict:
        """A JSON-able dict (ids, columns, strata, values as integers when they are)."""
        vals = self.values
        as_int = bool(np.all(vals == np.round(vals)))
        return {"format": "halluc-bench units v1", "columns": list(self.columns),
                "stratum_names": list(self.stratum_names), "ids": list(self.ids),
                "strata": self.strata.tolist(), "values": (vals.astype(np.int64) if as_int else vals).tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Units":
        """The inverse of ``to_json``."""
        return cls([str(i) for i in data["ids"]], np.asarray(data["values"], dtype=np.float64),
                   tuple(data["columns"]), np.asarray(data["strata"]), tuple(data["stratum_names"]))

    def save(self, path: str | Path) -> Path:
        """Write the units as compact JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Units":
        """Units from a file written by ``save``."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def point_metrics(metric_fn: MetricFn, units: Units) -> dict[str, float]:
    """The metrics of all units (no resampling), as floats."""
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metric_fn(units.totals()).items()}


def _weights(units: Units, b: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum: (unit indices, resampling counts (b, n_s)): n_s draws with replacement within the stratum."""
    out = []
    for s in range(len(units.stratum_names)):
        idx = np.flatnonzero(units.strata == s)
        n = len(idx)
        if n:
            draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
            out.append((idx, np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)))
    return out


def _resampled_sums(units: Units, weights: list[tuple[np.ndarray, np.ndarray]], b: int) -> np.ndarray:
    sums = np.zeros((b, len(units.stratum_names), len(units.columns)))
    for idx, w in weights:
        s = int(units.strata[idx[0]])
        sums[:, s, :] = w @ units.values[idx]
    return sums


def _chunks(total: int) -> list[int]:
    return [min(_CHUNK, total - i) for i in range(0, total, _CHUNK)]


def _percentiles(samples: dict[str, list[np.ndarray]], level: float) -> dict[str, list[float]]:
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    out = {}
    for k, parts in samples.items():
        arr = np.concatenate(parts)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            out[k] = [float(np.percentile(arr, lo)), float(np.percentile(arr, hi))]
    return out


def bootstrap_ci(metric_fn: MetricFn, units: Units, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """{metric: [low, high]}: percentile-bootstrap interval of every metric, units resampled within strata."""
    if n_resamples <= 0 or not len(units):
        return {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {}
    for b in _chunks(n_resamples):
        for k, v in metric_fn(_resampled_sums(units, _weights(units, b, rng), b)).items():
            samples.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    return _percentiles(samples, level)


def paired_bootstrap(metric_fn: MetricFn, a: Units, b: Units, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """{metric: [low, high]}: percentile interval of metric(B) - metric(A), both resampled by the same items."""
    b = b.aligned_to(a)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {}
    for n in _chunks(n_resamples):
        w = _weights(a, n, rng)
        ma, mb = metric_fn(_resampled_sums(a, w, n)), metric_fn(_resampled_sums(b, w, n))
        for k in ma:
            samples.setdefault(k, []).append(np.asarray(mb[k], dtype=np.float64) - np.asarray(ma[k], dtype=np.float64))
    return _percentiles(samples, level)


def paired_permutation(metric_fn: MetricFn, a: Units, b: Units, n_permutations: int = DEFAULT_RESAMPLES,
                       seed: int = 0) -> dict[str, float]:
    """{metric: two-sided p-value} of metric(B) - metric(A), swapping each item's two rows at random."""
    b = b.aligned_to(a)
    ta, tb = a.totals(), b.totals()
    ma, mb = metric_fn(ta), metric_fn(tb)
    observed = {k: float(np.asarray(mb[k]).reshape(-1)[0] - np.asarray(ma[k]).reshape(-1)[0]) for k in ma}
    diff = b.values - a.values  # moving item i from A to B adds diff[i] to A's sums
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in observed}
    strata = [(int(s), np.flatnonzero(a.strata == s)) for s in range(len(a.stratum_names))]
    for n in _chunks(n_permutations):
        delta = np.zeros((n,) + ta.shape[1:])
        for s, idx in strata:
            if len(idx):
                swap = rng.random((n, len(idx))) < 0.5
                delta[:, s, :] = swap.astype(np.float64) @ diff[idx]
        pa, pb = metric_fn(ta + delta), metric_fn(tb - delta)
        for k, obs in observed.items():
            d = np.asarray(pb[k], dtype=np.float64) - np.asarray(pa[k], dtype=np.float64)
            tol = 1e-9 * max(1.0, abs(obs))
            hits[k] += int(np.sum(np.abs(d) >= abs(obs) - tol))
    return {k: (1 + h) / (1 + n_permutations) for k, h in hits.items()}


def compare_units(metric_fn: MetricFn, a: Units, b: Units, n_resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Per metric: A, B, B - A, its paired-bootstrap CI and the permutation p-value (items must match)."""
    b = b.aligned_to(a)
    pa, pb = point_metrics(metric_fn, a), point_metrics(metric_fn, b)
    ci = paired_bootstrap(metric_fn, a, b, n_resamples, seed, level)
    p = paired_permutation(metric_fn, a, b, n_resamples, seed)
    return {k: {"a": pa[k], "b": pb[k], "diff": pb[k] - pa[k], "ci": ci.get(k), "p": p.get(k)} for k in pa}


# ---- array helpers for benchmarks' metrics_from_sums ---------------------------------------------------------
def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (the convention of the scorers' point estimates)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def column(sums: np.ndarray, columns: Sequence[str], name: str, stratum: int | slice = slice(None)) -> np.ndarray:
    """One column of (B, strata, k) sums, for one stratum (B,) or summed over all strata."""
    j = list(columns).index(name)
    sel = sums[:, stratum, j]
    return sel if sel.ndim == 1 else sel.sum(axis=1)


# ---- the pipeline's hook -----------------------------------------------------------------------------------------
UNITS_FILE = "units.json"


def score_statistics(bench: Any, records: list[dict], source: str, scores: dict, run_dir: str | Path) -> Path | None:
    """Save the records' per-unit statistics as `run_dir/units.json` and put the bootstrap CIs in scores["ci"].

    Returns the units file, or None for a benchmark without per-unit statistics (then scores get no `ci`).
    """
    units = bench.units(records, source) if records else None
    if units is None:
        return None
    ci = bench.confidence_intervals(records, source, units=units)
    if ci:
        scores["ci"] = ci
    return units.save(Path(run_dir) / UNITS_FILE)
