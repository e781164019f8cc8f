"""Leaderboards from the results store: one row per (model, intervention, parameters), a column group per benchmark."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import pandas as pd


def latest_rows(rows: Sequence[dict]) -> list[dict]:
    """The latest store row per (model, intervention, setting, benchmark): metrics of two runs never mix."""
    latest: dict = {}
    for r in sorted(rows, key=lambda r: r.get("time", "")):
        key = (r["model"], r.get("intervention_label") or r["intervention"], r.get("setting", ""), r["benchmark"])
        latest[key] = r
    return list(latest.values())


def leaderboard_frame(rows: Sequence[dict], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A table indexed by (model, intervention, setting) with (benchmark, metric) columns.

    Each cell comes from the latest run of its row and benchmark; `n` (items scored) is shown
    beside each benchmark's metrics so partial runs stand out.
    """
    recs, order = [], []
    for r in latest_rows(rows):
        keep = list(metrics or r.get("headline") or sorted(r.get("metrics", {})))
        if "n" in r.get("metrics", {}) and "n" not in keep:
            keep.append("n")
        for m in keep:
            if m in r.get("metrics", {}):
                recs.append({"model": r["model"], "intervention": r.get("intervention_label") or r["intervention"],
                             "setting": r.get("setting", ""), "benchmark": r["benchmark"], "metric": m,
                             "value": r["metrics"][m]})
                order.append((r["benchmark"], m))
    if not recs:
        return pd.DataFrame()
    df = pd.DataFrame(recs)
    benches = sorted(dict.fromkeys(b for b, _ in order))
    heads = {r["benchmark"]: list(metrics or r.get("headline") or []) for r in rows}

    def rank(b: str, m: str) -> tuple:  # headline order, then other metrics, then n
        h = heads.get(b, [])
        return (m == "n", h.index(m) if m in h else len(h), m)

    columns = [(b, m) for b in benches for m in sorted(dict.fromkeys(m for bb, m in order if bb == b),
                                                        key=lambda m, b=b: rank(b, m))]
    table = df.pivot_table(index=["model", "intervention", "setting"], columns=["benchmark", "metric"],
                           values="value", aggfunc="last")
    return table.reindex(columns=pd.MultiIndex.from_tuples(columns, names=["benchmark", "metric"]))


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    if table.empty:
        return "(no results yet)\n"
    heads = ["model", "intervention", "setting"] + [f"{b} {m}" for b, m in table.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for (model, interv, setting), vals in table.iterrows():
        cells = [str(model), str(interv), str(setting)] + [
            "" if pd.isna(v) else (f"{int(v)}" if m == "n" else f"{v:.{digits}f}")
            for (_, m), v in zip(table.columns, vals)]
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
