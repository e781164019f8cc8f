"""Plot a metric against a swept intervention parameter from the results store (PNG).

    python scripts/plot_sweep.py --param alpha --metric CHAIRs [--benchmark chair/lemma_pos] [--out sweep.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.leaderboard import plot_sweep  # noqa: E402
from harness.results import read_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="outputs/results.jsonl")
    ap.add_argument("--param", required=True)
    ap.add_argument("--metric", required=True)
    ap.add_argument("--benchmark", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = args.out or f"outputs/plots/{args.metric}_vs_{args.param}.png"
    print(plot_sweep(read_results(args.store), args.param, args.metric, out, args.benchmark))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
