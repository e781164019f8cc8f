"""Render the results store as per-benchmark leaderboards: Markdown (printed), tidy CSV and a sortable HTML page.

    halluc-bench-leaderboard [--store outputs/results.jsonl] [--out outputs/leaderboard]
                                  [--metrics CHAIRs CHAIRi] [--benchmark pope/coco/random]
                                  [--model NAME ...] [--no-significance] [--no-plots]

Cells are `value ± half-width` of the 95% bootstrap CI; `*` marks a significant difference (p < 0.05,
paired permutation test) from the same model's `none` row. The HTML page embeds the sweep plots.
"""
from __future__ import annotations

import argparse

from harness.leaderboard import write_leaderboard
from harness.results import read_results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="outputs/results.jsonl")
    ap.add_argument("--out", default="outputs/leaderboard")
    ap.add_argument("--metrics", nargs="*", default=None, help="metrics to show (default: each benchmark's headline)")
    ap.add_argument("--benchmark", nargs="*", default=None, help="only these benchmark labels")
    ap.add_argument("--model", nargs="*", default=None, help="only these models")
    ap.add_argument("--no-significance", action="store_true", help="skip the paired tests against `none` rows")
    ap.add_argument("--no-plots", action="store_true", help="no sweep plots in the HTML page")
    args = ap.parse_args(argv)
    rows = read_results(args.store)
    if args.benchmark:
        rows = [r for r in rows if r["benchmark"] in args.benchmark]
    if args.model:
        rows = [r for r in rows if r["model"] in args.model]
    paths = write_leaderboard(rows, args.out, args.metrics, significance=not args.no_significance,
                              plots=not args.no_plots)
    print(paths["md"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
