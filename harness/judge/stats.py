"""Uncertainty of a pairwise judgment: per-system CIs over questions and the paired difference B - A.

A judged question is one unit; its per-system score is the mean over the judged orders (as in
`aggregate`). Each system's mean per criterion gets a 95% percentile-bootstrap CI over questions; the
difference of the second system minus the first gets a paired-bootstrap CI and a paired permutation
p-value (each question's two scores swapped at random), via `harness.stats`.
"""
from __future__ import annotations

from typing import Sequence

from harness.stats import DEFAULT_RESAMPLES, Units, bootstrap_ci, compare_units, ratio

CRITERIA = ("accuracy", "detailedness")


def _metric_fn(sums):
    return {c: ratio(sums[:, 0, j], sums[:, 0, len(CRITERIA)]) for j, c in enumerate(CRITERIA)}


def pairwise_statistics(per_q: list[dict], names: Sequence[str], n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0) -> dict:
    """{"ci": {"<name>.<criterion>": [low, high]}, "difference": {criterion: {a, b, diff, ci, p}}} (empty without questions)."""
    if not per_q:
        return {}
    ids = [str(i) for i in range(len(per_q))]
    units = {n: Units(ids, [[q[n][c] for c in CRITERIA] + [1] for q in per_q], CRITERIA + ("questions",),
                      [0] * len(ids)) for n in names}
    ci = {f"{n}.{k}": v for n in names for k, v in bootstrap_ci(_metric_fn, units[n], n_resamples, seed).items()}
    out: dict = {"ci": ci}
    if len(names) == 2:
        out["difference"] = {"of": f"{names[1]} - {names[0]}",
                             **compare_units(_metric_fn, units[names[0]], units[names[1]], n_resamples, seed)}
    return out


def judge_table(scores: dict, digits: int = 2) -> str:
    """The judge's results as a table: per question type and overall, each system's mean scores (CI overall)."""
    from harness.score_table import grid

    names = scores.get("names") or []
    ci = (scores.get("statistics") or {}).get("ci") or {}
    rows = []
    groups = [(t, v) for t, v in (scores.get("by_type") or {}).items()] + [("overall", {**scores.get("overall", {}),
                                                                                      "n": scores.get("n_judged")})]
    for t, v in groups:
        cells = [t, str(v.get("n", ""))]
        for n in names:
            for c in CRITERIA:
                m = (v.get(n) or {}).get(c)
                text = "" if m is None else f"{m:.{digits}f}"
                if t == "overall" and f"{n}.{c}" in ci:
                    lo, hi = ci[f"{n}.{c}"]
                    text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
                cells.append(text)
        rows.append(cells)
    head = ["type", "n"] + [f"{n} {c}" for n in names for c in CRITERIA]
    out = [grid(head, rows)]
    diff = (scores.get("statistics") or {}).get("difference")
    if diff:
        for c in CRITERIA:
            d = diff[c]
            out.append(f"{diff['of']} {c}: {d['diff']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"
                       f", p = {d['p']:.4f}")
    return "\n".join(out)
