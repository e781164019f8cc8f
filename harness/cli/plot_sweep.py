"""Plot a metric against a swept intervention parameter from the results store (PNG).

    halluc-bench-plot-sweep --param alpha --metric CHAIRs [--intervention damro] [--model tiny_llava]
                                 [--benchmark chair/lemma_pos] [--out sweep.png]

Each series is one (model, intervention, benchmark, setting, other parameters); the 95% CIs are error
bars and the same model's `none` run is drawn as a dashed line (its CI shaded). Rows without the
parameter (e.g. a default run whose value is null) are left out.
"""
from __future__ import annotations

import argparse
import sys

from harness.results import read_results
from harness.sweep_plot import plot_sweep


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="outputs/results.jsonl")
    ap.add_argument("--param", required=True)
    ap.add_argument("--metric", required=True)
    ap.add_argument("--benchmark", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--intervention", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    name = "_".join(x for x in (args.intervention, args.model) if x)
    out = args.out or f"outputs/plots/{args.metric}_vs_{args.param}{'_' + name if name else ''}.png"
    try:
        path = plot_sweep(read_results(args.store), args.param, args.metric, out, args.benchmark, args.model,
                          args.intervention)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
