"""A run's scores as plain-text tables: headline values with their CIs, then one table per nested group."""
from __future__ import annotations

from typing import Any, Mapping


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def grid(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with aligned columns (Markdown pipe syntax)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def scores_table(scores: Mapping[str, Any], digits: int = 2) -> str:
    """Top-level metrics (value and 95% CI) and a table per group of nested scores (POPE splits, MME subtasks).

    Nested dicts whose values are all scalars become rows of one table (rows = group keys, columns = their
    metrics), e.g. POPE's per-split results or MME's per-subtask acc/acc+/score; CIs of nested metrics are
    shown as `value [low, high]`.
    """
    ci = scores.get("ci") or {}

    def cell(key: str, v: Any) -> str:
        text = _fmt(v, digits)
        if key in ci and isinstance(v, (int, float)):
            lo, hi = ci[key]
            text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
        return text

    flat = [[k, _fmt(v, digits), (f"[{ci[k][0]:.{digits}f}, {ci[k][1]:.{digits}f}]" if k in ci else "")]
            for k, v in scores.items() if k != "ci" and not isinstance(v, (dict, list))]
    out = [grid(["metric", "value", "95% CI"], flat)] if flat else []
    groups = {k: v for k, v in scores.items() if k != "ci" and isinstance(v, dict) and v}
    nested = {k: v for k, v in groups.items() if not any(isinstance(x, (dict, list)) for x in v.values())}
    per_item = {k: v for k, v in nested.items() if any(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v.values())}
    # groups sharing the same metric keys (splits, subtasks) go in one table; other dicts get their own
    by_shape: dict[tuple, list[str]] = {}
    for k, v in per_item.items():
        by_shape.setdefault(tuple(v), []).append(k)
    for cols, keys in by_shape.items():
        if len(keys) == 1 and len(cols) <= 1:
            continue
        rows = [[k] + [cell(f"{k}.{c}", per_item[k].get(c)) for c in cols] for k in keys]
        out.append(grid([""] + list(cols), rows))
    lists = [f"{k}: {', '.join(map(str, v))}" for k, v in scores.items() if isinstance(v, list) and v]
    return "\n\n".join(out + (["\n".join(lists)] if lists else []))
