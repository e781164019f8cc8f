"""Sweep plots: a metric against one intervention parameter, CIs as error bars, the `none` baseline as a line.

Rows that lack the parameter (or hold a non-numeric value for it) or the metric are ignored; one series per
(model, intervention, benchmark, setting, other parameters). Filters: model, intervention, benchmark.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

from harness.leaderboard import ARROWS, direction, latest_rows, method_label


def _x(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sweep_series(rows: Sequence[dict], param: str, metric: str, model: str | None = None,
                 intervention: str | None = None, benchmark: str | None = None) -> dict:
    """{(model, intervention, benchmark, setting, other params): {x: (value, low, high)}} of the matching rows."""
    series: dict = {}
    for r in latest_rows(rows):
        if (model and r["model"] != model) or (intervention and r["intervention"] != intervention) \
                or (benchmark and r["benchmark"] != benchmark):
            continue
        params = r.get("params") or {}
        x, y = _x(params.get(param)), r.get("metrics", {}).get(metric)
        if x is None or not isinstance(y, (int, float)):
            continue
        lo, hi = (r.get("ci") or {}).get(metric) or (None, None)
        rest = json.dumps({k: v for k, v in params.items() if k != param}, sort_keys=True, default=str)
        series.setdefault((r["model"], r["intervention"], r["benchmark"], r.get("setting", ""), rest), {})[x] = (
            float(y), lo, hi)
    return series


def _baselines(rows: Sequence[dict], metric: str, keys) -> dict:
    """The latest `none` row's (value, low, high) per (model, benchmark, setting) among the series' keys."""
    wanted = {(m, b, s) for m, _, b, s, _ in keys}
    out = {}
    for r in latest_rows(rows):
        k = (r["model"], r["benchmark"], r.get("setting", ""))
        if r.get("intervention") == "none" and k in wanted and isinstance(r.get("metrics", {}).get(metric), (int, float)):
            lo, hi = (r.get("ci") or {}).get(metric) or (None, None)
            out[k] = (float(r["metrics"][metric]), lo, hi)
    return out


def sweep_figure(rows: Sequence[dict], param: str, metric: str, model: str | None = None,
                 intervention: str | None = None, benchmark: str | None = None):
    """A matplotlib figure of the sweep (ValueError when no row has both the parameter and the metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sweep_series(rows, param, metric, model, intervention, benchmark)
    if not series:
        filters = ", ".join(f"{k}={v}" for k, v in (("model", model), ("intervention", intervention),
                                                     ("benchmark", benchmark)) if v)
        raise ValueError(f"no results have parameter {param!r} and metric {metric!r}"
                         + (f" ({filters})" if filters else ""))
    dirs: dict = {}
    for r in rows:
        dirs.update(r.get("directions") or {})
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((m, interv, bench, setting, rest), pts) in enumerate(sorted(series.items())):
        xs = sorted(pts)
        ys = [pts[x][0] for x in xs]
        err = [[max(0.0, pts[x][0] - pts[x][1]) if pts[x][1] is not None else 0.0 for x in xs],
               [max(0.0, pts[x][2] - pts[x][0]) if pts[x][2] is not None else 0.0 for x in xs]]
        method = method_label({"intervention": interv, "params": json.loads(rest)})  # other non-default params
        label = f"{m} / {method}" + ("" if benchmark else f" / {bench}") + (f" / {setting}" if setting else "")
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=colors[i % len(colors)], label=label)
    for j, ((m, bench, setting), (v, lo, hi)) in enumerate(sorted(_baselines(rows, metric, series).items())):
        c = "0.35" if j == 0 else colors[(len(series) + j) % len(colors)]
        ax.axhline(v, linestyle="--", color=c, label=f"{m} / none" + ("" if benchmark else f" / {bench}")
                   + (f" / {setting}" if setting else ""))
        if lo is not None and hi is not None:
            ax.axhspan(lo, hi, color=c, alpha=0.12)
    d = direction(dirs, metric)
    ax.set_xlabel(param)
    ax.set_ylabel(metric + (f" ({ARROWS[d]} {d} is better)" if d in ARROWS else ""))
    ax.set_title(f"{metric} vs {param}" + (f" - {benchmark}" if benchmark else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_sweep(rows: Sequence[dict], param: str, metric: str, out_png: str | Path, benchmark: str | None = None,
               model: str | None = None, intervention: str | None = None) -> Path:
    """Write the sweep plot as a PNG and return its path."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(rows, param, metric, model, intervention, benchmark)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def sweep_png_bytes(rows: Sequence[dict], param: str, metric: str, **filters) -> bytes:
    """The sweep plot as PNG bytes (for embedding)."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(rows, param, metric, **filters)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def detect_sweeps(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(benchmark, intervention, parameter) triples where a numeric parameter takes 2+ values."""
    values: dict = {}
    for r in latest_rows(rows):
        if r.get("intervention") in ("none", "external", "compose"):
            continue
        for k, v in (r.get("params") or {}).items():
            if _x(v) is not None:
                values.setdefault((r["benchmark"], r["intervention"], k), set()).add(_x(v))
    return sorted(k for k, v in values.items() if len(v) >= 2)
