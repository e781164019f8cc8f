"""Leaderboards from the results store: one table per benchmark, CIs, and significance against the baseline.

Rows are (model, method, setting): the method is the intervention plus only its non-default parameters
(`damro alpha=2 topk=10`; keys equal to `configs/intervention/<name>.yaml` and null values are left out);
each benchmark's table keeps the latest run per row, its headline metrics first (arrows: ↑ higher is
better, ↓ lower is better), cells `value ± half-width` of the 95% bootstrap CI, and `n`. A cell is
starred when the row differs from the same model's `none` row (same setting) at p < 0.05 in a paired
permutation test over the per-item units both runs stored (`units.json`; no mark when either lacks them
or they answered different items).

Renderers: `to_markdown` (per-benchmark tables), `long_frame` (tidy long-format CSV) and, in
`harness.leaderboard_html`, the sortable HTML page with CI columns and embedded sweep plots.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pandas is imported when a frame is built: printing scores stays light
    import pandas as pd

ALPHA = 0.05
ARROWS = {"higher": "↑", "lower": "↓"}


# ---- row labels ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def intervention_defaults(name: str) -> dict:
    """The values of `configs/intervention/<name>.yaml` ({} for an unknown name, e.g. external answers)."""
    from harness.config import group_defaults

    try:
        values = group_defaults("intervention", name)
    except Exception:  # not a configured intervention (external answers, a removed method)
        return {}
    return {k: v for k, v in values.items() if k != "name"}


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def member_label(name: str, params: dict) -> str:
    """`name k=v ...` with only the parameters that differ from the YAML defaults (never null ones)."""
    defaults = intervention_defaults(name)
    shown = [f"{k}={_fmt_param(v)}" for k, v in sorted(params.items())
             if k != "name" and v is not None and not (k in defaults and _same(v, defaults[k]))]
    return " ".join([name] + shown)


def method_label(row: dict) -> str:
    """The row's method: intervention and its non-default parameters (composed members joined by ' + ')."""
    name = row.get("intervention") or "none"
    params = dict(row.get("params") or {})
    if name == "external":
        return row.get("intervention_label") or "external answers"
    if name == "compose" and isinstance(params.get("members"), list):
        return " + ".join(member_label(m.get("name", "none"), {k: v for k, v in m.items() if k != "name"})
                          for m in params["members"])
    return member_label(name, params)


def row_key(row: dict) -> tuple:
    """(model, method, setting, benchmark): one leaderboard cell group."""
    return row["model"], method_label(row), row.get("setting", ""), row["benchmark"]


def latest_rows(rows: Sequence[dict]) -> list[dict]:
    """The latest store row per (model, method, setting, benchmark): metrics of two runs never mix."""
    latest: dict = {}
    for r in sorted(rows, key=lambda r: r.get("time", "")):
        latest[row_key(r)] = r
    return list(latest.values())


# ---- tables ----------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One metric of one row: value, 95% CI, and the paired test against the model's `none` row."""

    value: float
    low: float | None = None
    high: float | None = None
    p: float | None = None

    @property
    def half_width(self) -> float | None:
        """Half the CI's width (the ± shown), or None without a CI."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def significant(self) -> bool:
        """Whether the difference from the baseline row is significant at ALPHA."""
        return self.p is not None and self.p < ALPHA


@dataclass
class BenchTable:
    """One benchmark's leaderboard: metric columns (headline first), directions and rows."""

    benchmark: str
    metrics: list[str]
    directions: dict[str, str]
    rows: list[dict] = field(default_factory=list)  # {"model", "method", "setting", "n", "cells", "row"}


def direction(directions: dict, metric: str) -> str | None:
    """'higher'/'lower' for a metric, looking up dotted metrics by their last part (random.f1 -> f1)."""
    return directions.get(metric) or directions.get(metric.rsplit(".", 1)[-1])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def benchmark_tables(rows: Sequence[dict], metrics: Sequence[str] | None = None, significance: bool = True,
                     permutations: int = 1000) -> list[BenchTable]:
    """One BenchTable per benchmark label (sorted), from the latest run of each row."""
    from harness.significance import baseline_pvalues

    by_bench: dict[str, list[dict]] = {}
    for r in latest_rows(rows):
        by_bench.setdefault(r["benchmark"], []).append(r)
    tables = []
    for bench in sorted(by_bench):
        brows = sorted(by_bench[bench], key=lambda r: (str(r["model"]), r["intervention"] != "none",
                                                      method_label(r), r.get("setting", "")))
        head = list(metrics or next((r.get("headline") for r in reversed(brows) if r.get("headline")), []) or [])
        if not head:
            head = sorted({m for r in brows for m in r.get("metrics", {}) if m != "n"})
        cols = [m for m in head if any(m in r.get("metrics", {}) for r in brows)]
        dirs: dict[str, str] = {}
        for r in brows:
            dirs.update(r.get("directions") or {})
        pvals = baseline_pvalues(brows, permutations) if significance else {}
        t = BenchTable(bench, cols, {m: d for m in cols if (d := direction(dirs, m))})
        for r in brows:
            cells = {}
            for m in cols:
                v = _num(r.get("metrics", {}).get(m))
                if v is None:
                    continue
                lo, hi = (r.get("ci") or {}).get(m) or (None, None)
                cells[m] = Cell(v, lo, hi, pvals.get(id(r), {}).get(m))
            n = r.get("metrics", {}).get("n")
            t.rows.append({"model": r["model"], "method": method_label(r), "setting": r.get("setting", ""),
                           "n": int(n) if _num(n) is not None else None, "cells": cells, "row": r})
        tables.append(t)
    return tables


# ---- renderers -------------------------------------------------------------------------------------------------
def header(metric: str, directions: dict) -> str:
    """A metric's column title with its arrow (↑ higher / ↓ lower is better)."""
    d = directions.get(metric)
    return f"{metric} {ARROWS[d]}" if d in ARROWS else metric


def cell_text(c: Cell | None, digits: int = 2) -> str:
    """`value ± half-width` (plus `*` when significantly different from the baseline)."""
    if c is None:
        return ""
    text = f"{c.value:.{digits}f}"
    if c.half_width is not None:
        text += f" ± {c.half_width:.{digits}f}"
    return text + ("*" if c.significant else "")


def to_markdown(tables: Sequence[BenchTable], digits: int = 2) -> str:
    """GitHub Markdown: a heading and a table per benchmark, and the legend."""
    if not tables:
        return "(no results yet)\n"
    out = []
    for t in tables:
        heads = ["model", "method", "setting"] + [header(m, t.directions) for m in t.metrics] + ["n"]
        lines = [f"### {t.benchmark}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in t.rows:
            vals = [cell_text(r["cells"].get(m), digits) for m in t.metrics]
            lines.append("| " + " | ".join([str(r["model"]), r["method"], r["setting"]] + vals
                                           + ["" if r["n"] is None else str(r["n"])]) + " |")
        out.append("\n".join(lines))
    legend = ("values: point estimate ± half-width of the 95% bootstrap CI; ↑/↓: higher/lower is better; "
              f"*: differs from the same model's `none` row (paired permutation test, p < {ALPHA})")
    return "\n\n".join(out) + "\n\n" + legend + "\n"


def benchmark_markdown(rows: Sequence[dict], significance: bool = True) -> str:
    """Markdown leaderboard of store rows (what a run prints after scoring)."""
    return to_markdown(benchmark_tables(rows, significance=significance))


LONG_COLUMNS = ["benchmark", "model", "method", "intervention", "params", "setting", "metric", "direction",
                "value", "ci_low", "ci_high", "n", "p_vs_none", "significant", "run_dir", "time"]


def long_frame(tables: Sequence[BenchTable]) -> pd.DataFrame:
    """A tidy long-format table: one row per (benchmark, model, method, setting, metric)."""
    import pandas as pd

    recs = []
    for t in tables:
        for r in t.rows:
            src = r["row"]
            for m in t.metrics:
                c = r["cells"].get(m)
                if c is None:
                    continue
                recs.append({"benchmark": t.benchmark, "model": r["model"], "method": r["method"],
                             "intervention": src.get("intervention"),
                             "params": json.dumps(src.get("params") or {}, sort_keys=True, default=str),
                             "setting": r["setting"], "metric": m, "direction": t.directions.get(m, ""),
                             "value": c.value, "ci_low": c.low, "ci_high": c.high, "n": r["n"], "p_vs_none": c.p,
                             "significant": c.significant if c.p is not None else None,
                             "run_dir": src.get("run_dir"), "time": src.get("time")})
    return pd.DataFrame(recs, columns=LONG_COLUMNS)


def write_leaderboard(rows: Sequence[dict], out_dir: str | Path, metrics: Sequence[str] | None = None,
                      significance: bool = True, plots: bool = True) -> dict:
    """Write leaderboard.md, leaderboard.csv (long format) and leaderboard.html to `out_dir`; returns the paths."""
    from harness.leaderboard_html import to_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = benchmark_tables(rows, metrics, significance=significance)
    paths = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    paths["md"].write_text(to_markdown(tables), encoding="utf-8")
    long_frame(tables).to_csv(paths["csv"], index=False)
    paths["html"].write_text(to_html(tables, rows if plots else None), encoding="utf-8")
    return paths
