"""Leaderboards from the results store: one row per (model, intervention, parameters), a column group per benchmark."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import pandas as pd


def leaderboard_frame(rows: Sequence[dict], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A table indexed by (model, intervention) with (benchmark, metric) columns; the latest run wins."""
    recs = []
    for r in rows:
        keep = metrics or r.get("headline") or sorted(r.get("metrics", {}))
        for m in keep:
            if m in r.get("metrics", {}):
                recs.append({"model": r["model"], "intervention": r.get("intervention_label") or r["intervention"],
                             "benchmark": r["benchmark"], "metric": m, "value": r["metrics"][m], "time": r["time"]})
    if not recs:
        return pd.DataFrame()
    df = pd.DataFrame(recs).sort_values("time")
    df = df.drop_duplicates(["model", "intervention", "benchmark", "metric"], keep="last")
    order = list(dict.fromkeys(zip(df["benchmark"], df["metric"])))
    table = df.pivot_table(index=["model", "intervention"], columns=["benchmark", "metric"], values="value",
                           aggfunc="last")
    return table.reindex(columns=pd.MultiIndex.from_tuples(order, names=["benchmark", "metric"]))


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    if table.empty:
        return "(no results yet)\n"
    heads = ["model", "intervention"] + [f"{b} {m}" for b, m in table.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for (model, interv), vals in table.iterrows():
        cells = [str(model), str(interv)] + ["" if pd.isna(v) else f"{v:.{digits}f}" for v in vals]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, digits: int = 2, title: str = "halluc-bench leaderboard") -> str:
    """A standalone HTML page with the table."""
    body = "<p>(no results yet)</p>" if table.empty else table.to_html(
        float_format=lambda v: f"{v:.{digits}f}", na_rep="", border=0, classes="lb")
    style = ("body{font-family:sans-serif;margin:2em}table.lb{border-collapse:collapse}"
             "table.lb td,table.lb th{border:1px solid #ccc;padding:4px 8px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def write_leaderboard(rows: Sequence[dict], out_dir: str | Path, metrics: Sequence[str] | None = None) -> dict:
    """Write leaderboard.md, leaderboard.csv and leaderboard.html to `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = leaderboard_frame(rows, metrics)
    paths = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    paths["md"].write_text(to_markdown(table))
    table.to_csv(paths["csv"])
    paths["html"].write_text(to_html(table))
    return paths


def plot_sweep(rows: Sequence[dict], param: str, metric: str, out_png: str | Path,
               benchmark: str | None = None) -> Path:
    """A PNG of `metric` against intervention parameter `param`, one line per (model, intervention, benchmark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict = {}
    for r in rows:
        params = r.get("params") or {}
        if param not in params or metric not in r.get("metrics", {}):
            continue
        if benchmark and r["benchmark"] != benchmark:
            continue
        key = (r["model"], r["intervention"], r["benchmark"],
               json.dumps({k: v for k, v in params.items() if k != param}, sort_keys=True, default=str))
        series.setdefault(key, {})[float(params[param])] = r["metrics"][metric]
    if not series:
        raise ValueError(f"no results have parameter {param!r} and metric {metric!r}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, interv, bench, _), pts in sorted(series.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=f"{model} / {interv} / {bench}")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
