"""Render the results store as Markdown, CSV and HTML leaderboards (and print the Markdown).

    python scripts/leaderboard.py [--store outputs/results.jsonl] [--out outputs/leaderboard]
                                  [--metrics CHAIRs CHAIRi] [--benchmark pope/coco/random]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.leaderboard import leaderboard_frame, to_markdown, write_leaderboard  # noqa: E402
from harness.results import read_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="outputs/results.jsonl")
    ap.add_argument("--out", default="outputs/leaderboard")
    ap.add_argument("--metrics", nargs="*", default=None, help="metrics to show (default: each benchmark's headline)")
    ap.add_argument("--benchmark", nargs="*", default=None, help="only these benchmark labels")
    args = ap.parse_args(argv)
    rows = read_results(args.store)
    if args.benchmark:
        rows = [r for r in rows if r["benchmark"] in args.benchmark]
    paths = write_leaderboard(rows, args.out, args.metrics)
    print(to_markdown(leaderboard_frame(rows, args.metrics)))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
