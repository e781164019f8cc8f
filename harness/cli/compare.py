"""Compare two runs of the same benchmark item by item: A, B, B - A with a paired-bootstrap CI and a p-value.

    halluc-bench-compare RUN_A RUN_B [benchmark=pope benchmark.split=all ...]
                                   [--metrics accuracy f1] [--resamples 1000] [--seed 0] [--common] [--json OUT]

RUN_A / RUN_B: run directories (outputs/runs/...) or answers files (any format the benchmark reads; an MME
eval-tool result folder too). The benchmark config comes from the run directory or the answers'
fingerprint unless given as `benchmark=NAME` (+ `benchmark.KEY=VALUE`). The p-value is a paired
permutation test (each item's two answers swapped at random); the runs must answer the same items
(`--common`: use the items both answered). For yes/no benchmarks the yes-ratio shift is reported too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.compare import compare_runs, format_comparison


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("benchmark", nargs="*", help="benchmark=NAME and benchmark.KEY=VALUE overrides")
    ap.add_argument("--metrics", nargs="*", default=None)
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples and permutations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--common", action="store_true", help="compare on the items both runs answered")
    ap.add_argument("--json", default=None, help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    bad = [a for a in args.benchmark if not a.startswith("benchmark")]
    if bad:
        ap.error(f"unexpected arguments {bad}; only benchmark=NAME and benchmark.KEY=VALUE may follow the runs")
    try:
        res = compare_runs(args.run_a, args.run_b, args.benchmark, args.resamples, args.seed, args.common)
        print(format_comparison(res, args.metrics))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
