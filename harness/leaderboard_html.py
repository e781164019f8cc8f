"""The leaderboard as one standalone HTML page: a sortable table per benchmark, CI columns, sweep plots.

Clicking a column header sorts its table (numbers by value, again to reverse). The page also sorts on
load from the URL hash `#sort=<table id>:<column index>:<asc|desc>`, and records each table's current
order in `data-sorted`, so a headless browser can check the sorting (tests/browser_check.py).
"""
from __future__ import annotations

import base64
import html
import logging
import re
from typing import Sequence

from harness.leaderboard import ALPHA, BenchTable, cell_text, header

log = logging.getLogger("halluc_bench")
MAX_PLOTS = 24

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h2{margin-top:2em;border-bottom:1px solid #ddd}
table.lb{border-collapse:collapse;font-size:14px}
table.lb td,table.lb th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
table.lb td.t,table.lb th.t{text-align:left}
table.lb th{background:#f4f4f4;cursor:pointer;user-select:none}
table.lb th[aria-sort=ascending]::after{content:" \\25B2"}
table.lb th[aria-sort=descending]::after{content:" \\25BC"}
td.ci{color:#777;font-size:12px}
td.sig{font-weight:bold}
.legend{color:#555;font-size:13px}
figure{display:inline-block;margin:1em}
"""

SCRIPT = """
function hbSort(table, col, dir) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var ths = table.tHead.rows[0].cells;
  var numeric = ths[col].getAttribute('data-type') === 'num';
  rows.sort(function (a, b) {
    var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
    var r;
    if (numeric) {
      var fx = x === null || x === '' ? NaN : parseFloat(x), fy = y === null || y === '' ? NaN : parseFloat(y);
      if (isNaN(fx) && isNaN(fy)) r = 0; else if (isNaN(fx)) return 1; else if (isNaN(fy)) return -1;
      else r = fx - fy;
    } else { r = (x || '').localeCompare(y || ''); }
    return dir === 'desc' ? -r : r;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  for (var i = 0; i < ths.length; i++) ths[i].removeAttribute('aria-sort');
  ths[col].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
  table.setAttribute('data-sorted', col + ':' + dir);
  table.setAttribute('data-order', rows.map(function (r) { return r.getAttribute('data-key'); }).join('|'));
}
document.addEventListener('DOMContentLoaded', function () {
  var tables = document.querySelectorAll('table.lb');
  tables.forEach(function (table) {
    var ths = table.tHead.rows[0].cells;
    for (var i = 0; i < ths.length; i++) {
      (function (col) {
        ths[col].addEventListener('click', function () {
          var cur = table.getAttribute('data-sorted') || '';
          var dir = cur === col + ':asc' ? 'desc' : 'asc';
          hbSort(table, col, dir);
        });
      })(i);
    }
  });
  var m = /sort=([^:&]+):(\\d+):(asc|desc)/.exec(location.hash);
  if (m) {
    var t = document.getElementById(m[1]);
    if (t) hbSort(t, parseInt(m[2], 10), m[3]);
  }
  document.body.setAttribute('data-ready', String(tables.length));
});
"""


def slug(text: str) -> str:
    """An HTML id made from a benchmark label."""
    return "t-" + re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _td(text: str, sort: object = None, cls: str = "") -> str:
    attrs = (f" data-sort='{html.escape(str(sort), quote=True)}'" if sort is not None else "") + (
        f" class='{cls}'" if cls else "")
    return f"<td{attrs}>{html.escape(text)}</td>"


def table_html(t: BenchTable, digits: int = 2) -> str:
    """One benchmark's sortable table: text columns, then per metric `value ± hw` and its CI, then n."""
    ths = ["<th class='t' data-type='text'>model</th>", "<th class='t' data-type='text'>method</th>",
           "<th class='t' data-type='text'>setting</th>"]
    for m in t.metrics:
        d = t.directions.get(m)
        tip = f" title='{d} is better'" if d else ""
        ths.append(f"<th data-type='num'{tip}>{html.escape(header(m, t.directions))}</th>")
        ths.append(f"<th data-type='num' title='95% bootstrap CI'>{html.escape(m)} 95% CI</th>")
    ths.append("<th data-type='num'>n</th>")
    body = []
    for i, r in enumerate(t.rows):
        tds = [_td(str(r["model"]), r["model"], "t"), _td(r["method"], r["method"], "t"),
               _td(r["setting"], r["setting"], "t")]
        for m in t.metrics:
            c = r["cells"].get(m)
            if c is None:
                tds += [_td("", ""), _td("", "")]
                continue
            p = "" if c.p is None else f"p = {c.p:.3g} vs none"
            td = _td(cell_text(c, digits), c.value, "sig" if c.significant else "")
            tds.append(td.replace("<td", f"<td title='{p}'", 1) if p else td)
            ci = "" if c.low is None else f"[{c.low:.{digits}f}, {c.high:.{digits}f}]"
            tds.append(_td(ci, c.low if c.low is not None else "", "ci"))
        tds.append(_td("" if r["n"] is None else str(r["n"]), "" if r["n"] is None else r["n"]))
        body.append(f"<tr data-key='{i}'>" + "".join(tds) + "</tr>")
    tid = slug(t.benchmark)
    return (f"<table class='lb' id='{tid}' data-benchmark='{html.escape(t.benchmark, quote=True)}'>"
            f"<thead><tr>{''.join(ths)}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _plots(t: BenchTable, rows: Sequence[dict], budget: list[int]) -> str:
    """Embedded PNG sweep plots of this benchmark (first metric against each swept parameter)."""
    from harness.sweep_plot import detect_sweeps, sweep_png_bytes

    figs = []
    for bench, interv, param in detect_sweeps(rows):
        if bench != t.benchmark or not t.metrics or budget[0] <= 0:
            continue
        for metric in t.metrics[:1]:
            try:
                png = sweep_png_bytes(rows, param, metric, benchmark=bench, intervention=interv)
            except (ValueError, ImportError) as e:  # no plottable rows, or matplotlib missing
                log.debug("no sweep plot for %s %s %s: %s", bench, interv, param, e)
                continue
            budget[0] -= 1
            src = "data:image/png;base64," + base64.b64encode(png).decode()
            cap = html.escape(f"{interv}: {metric} vs {param}")
            figs.append(f"<figure><img alt='{cap}' src='{src}'><figcaption>{cap}</figcaption></figure>")
    return "".join(figs)


def to_html(tables: Sequence[BenchTable], rows: Sequence[dict] | None = None, digits: int = 2,
            title: str = "halluc-bench leaderboard") -> str:
    """The standalone page; `rows` (the store rows) enables the embedded sweep plots."""
    legend = ("<p class='legend'>Cells: point estimate ± half-width of the 95% percentile-bootstrap CI (the CI "
              "columns give its bounds); ↑ higher is better, ↓ lower is better; <b>bold*</b>: differs from the "
              f"same model's <code>none</code> row (paired permutation test, p &lt; {ALPHA}; hover for p). "
              "Click a column header to sort.</p>")
    sections, budget = [], [MAX_PLOTS]
    for t in tables:
        plots = _plots(t, rows, budget) if rows else ""
        sections.append(f"<section><h2>{html.escape(t.benchmark)}</h2>{table_html(t, digits)}"
                        + (f"<h3>Sweeps</h3>{plots}" if plots else "") + "</section>")
    body = "".join(sections) if sections else "<p>(no results yet)</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
            f"{legend}{body}</body></html>\n")
