"""Paired comparison of two runs of the same benchmark: per metric A, B, B - A, its paired-bootstrap CI and p.

A run is a run directory (its `units.json`, else its `answers.jsonl`) or an answers file / MME result folder
of any format the benchmark reads. The benchmark config comes from `benchmark=NAME` (+ `benchmark.KEY=VALUE`
overrides) when given, else from the run directory (`provenance.json`, `.hydra/config.yaml`) or the answers'
fingerprint. Items skipped in a run are left out; the two runs must then cover the same items (or, with
`common=True`, the comparison uses the items both answered and says how many were dropped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.stats import DEFAULT_RESAMPLES, Units, compare_units

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunInput:
    """One side of a comparison: its display name, answers path (or None) and stored units path (or None)."""

    name: str
    answers: Path | None
    units: Path | None
    benchmark_cfg: dict | None


def _first_fingerprint_benchmark(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline() or "{}")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    fp = first.get("fingerprint") if isinstance(first, dict) else None
    return dict(fp["benchmark"]) if isinstance(fp, dict) and isinstance(fp.get("benchmark"), dict) else None


def resolve_run(path: str | Path) -> RunInput:
    """Where a run's answers, units and benchmark config are (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run directory or answers file")
    if p.is_file():
        return RunInput(p.stem if p.stem != "answers" else p.parent.name, p, None, _first_fingerprint_benchmark(p))
    answers = p / "answers.jsonl"
    cfg = None
    if (p / "provenance.json").is_file():
        cfg = json.loads((p / "provenance.json").read_text(encoding="utf-8")).get("benchmark_cfg")
    elif (p / ".hydra" / "config.yaml").is_file():
        import yaml

        cfg = (yaml.safe_load((p / ".hydra" / "config.yaml").read_text(encoding="utf-8")) or {}).get("benchmark")
    if cfg is None and answers.is_file():
        cfg = _first_fingerprint_benchmark(answers)
    units = p / "units.json"
    return RunInput(p.name, answers if answers.is_file() else p, units if units.is_file() else None, cfg)


def benchmark_config(spec: Sequence[str]) -> dict | None:
    """A benchmark config from `benchmark=NAME` and `benchmark.KEY=VALUE` arguments (None when absent)."""
    import yaml

    name = next((a.split("=", 1)[1] for a in spec if a.startswith("benchmark=")), None)
    overrides = [a for a in spec if a.startswith("benchmark.")]
    if name is None:
        if overrides:
            raise ValueError("benchmark.KEY=VALUE overrides need benchmark=NAME too")
        return None
    from harness.config import group_defaults

    path = ROOT / "configs" / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(q.stem for q in (ROOT / "configs" / "benchmark").glob("*.yaml"))
        raise ValueError(f"unknown benchmark config {name!r}; valid choices: {', '.join(choices)}")
    cfg = group_defaults("benchmark", name)
    for a in overrides:
        key, _, value = a[len("benchmark."):].partition("=")
        cfg[key] = yaml.safe_load(value)
    return cfg


def _build(cfg: dict):
    from harness.registry import BENCHMARKS

    return BENCHMARKS.get(cfg["name"])(cfg)


def run_units(run: RunInput, cfg: dict, reuse_stored: bool) -> Units:
    """The run's per-item units: stored ones when they were made under the same config, else from its answers.

    Answers that cover only part of the benchmark (a `run.limit` run) are scored on the items they answer.
    """
    from benchmarks.base import AnswerMismatchError

    if reuse_stored and run.units is not None:
        return Units.load(run.units)
    if run.answers is None:
        raise ValueError(f"{run.name}: no answers to score")
    bench = _build(cfg)
    records = [r for r in bench.load_answers(run.answers) if not r.get("skipped")]
    try:
        units = bench.units(records, str(run.answers))
    except AnswerMismatchError as e:
        if e.unknown or not e.missing:
            raise
        bench = _build(cfg)
        answered = {str(r.get("question_id")) for r in records}
        bench.restrict_to([it.question_id for it in bench.items() if str(it.question_id) in answered])
        units = bench.units(records, str(run.answers))
    if units is None:
        raise ValueError(f"benchmark {bench.label()!r} has no per-item statistics, so it cannot be compared")
    return units


def compare_runs(path_a: str | Path, path_b: str | Path, spec: Sequence[str] = (), n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, common: bool = False) -> dict:
    """The comparison of run B against run A: {"benchmark", "a", "b", "n", "dropped", "metrics": {m: {...}}}."""
    ra, rb = resolve_run(path_a), resolve_run(path_b)
    given = benchmark_config(spec)
    cfg = given or ra.benchmark_cfg or rb.benchmark_cfg
    if cfg is None:
        raise ValueError("cannot tell which benchmark these answers belong to: pass benchmark=NAME "
                         "(and benchmark.KEY=VALUE for non-default settings)")
    bench = _build(cfg)
    if given is None and ra.benchmark_cfg and rb.benchmark_cfg:
        la, lb = _build(ra.benchmark_cfg).label(), _build(rb.benchmark_cfg).label()
        if la != lb:
            raise ValueError(f"the runs are of different benchmarks ({la} vs {lb}); pass benchmark=NAME to "
                             "score both answer sets the same way")

    def same(run: RunInput) -> bool:
        from harness.fingerprint import SCORING_ONLY_KEYS

        strip = lambda c: {k: v for k, v in (c or {}).items() if k not in SCORING_ONLY_KEYS}  # noqa: E731
        return run.benchmark_cfg is not None and strip(run.benchmark_cfg) == strip(cfg)

    ua, ub = run_units(ra, cfg, same(ra)), run_units(rb, cfg, same(rb))
    dropped = 0
    if common and set(ua.ids) != set(ub.ids):
        keep = set(ua.ids) & set(ub.ids)
        dropped = len(set(ua.ids) | set(ub.ids)) - len(keep)
        ua, ub = _subset(ua, keep), _subset(ub, keep)
    metrics = compare_units(bench.metrics_from_sums, ua, ub, n_resamples, seed)
    return {"benchmark": bench.label(), "task": bench.task, "a": ra.name, "b": rb.name, "n": len(ua),
            "dropped": dropped, "headline": list(bench.headline_metrics),
            "directions": dict(bench.metric_directions), "metrics": metrics}


def _subset(u: Units, keep: set[str]) -> Units:
    idx = [i for i, x in enumerate(u.ids) if x in keep]
    return Units([u.ids[i] for i in idx], u.values[idx], u.columns, u.strata[idx], u.stratum_names)


def format_comparison(res: dict, metrics: Sequence[str] | None = None, digits: int = 2) -> str:
    """The comparison as a plain-text table, plus the yes-ratio (mirage) line for yes/no benchmarks."""
    from harness.score_table import grid

    allm = list(res["metrics"])
    head = [m for m in res["headline"] if m in res["metrics"]]
    order = list(metrics) if metrics else head + [m for m in allm if m not in head]
    rows = []
    for m in order:
        r = res["metrics"].get(m)
        if r is None:
            raise ValueError(f"unknown metric {m!r}; available: {', '.join(allm)}")
        ci = "" if r["ci"] is None else f"[{r['ci'][0]:+.{digits}f}, {r['ci'][1]:+.{digits}f}]"
        sig = "*" if r["p"] is not None and r["p"] < 0.05 else ""
        rows.append([m, f"{r['a']:.{digits}f}", f"{r['b']:.{digits}f}", f"{r['diff']:+.{digits}f}", ci,
                     f"{r['p']:.4f}" if r["p"] is not None else "", sig])
    text = [f"{res['benchmark']}: B = {res['b']} vs A = {res['a']} on {res['n']} paired items"
            + (f" ({res['dropped']} items answered by only one run left out)" if res["dropped"] else ""),
            grid(["metric", "A", "B", "B - A", "95% CI (paired bootstrap)", "p (permutation)", ""], rows),
            f"*: p < 0.05 (permutation p-values resolve down to 1/(1 + resamples))"]
    yr = res["metrics"].get("yes_ratio")
    if res.get("task") == "yes_no" and yr is not None:
        shift = yr["diff"]
        text.append(f"yes-ratio shift (B - A): {shift:+.{digits}f} points (p = {yr['p']:.4f}). A one-directional "
                    "shift of yes answers can move accuracy/F1 on its own; compare against intervention=yes_bias "
                    "(a pure yes/no logit shift) before reading a gain as better grounding.")
    return "\n".join(text)
