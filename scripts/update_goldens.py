"""Recompute the golden tiny-model scores (tests/golden/tiny_smoke_scores.json) after an intended change.

    python -m scripts.update_goldens                      # all; then review the diff and commit it with the reason
    python -m scripts.update_goldens --only tiny_qwen2_vl # one family's golden (a new family), the rest kept
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from harness.golden import GOLDEN_FILE, golden_runs, golden_scores, load_goldens


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(golden_runs()), help="recompute these, keep the others")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from harness.config import register_configs

    register_configs()  # the typed schemas the benchmark / model YAMLs name in their defaults
    out = load_goldens() if args.only and GOLDEN_FILE.exists() else {}
    for label in args.only or golden_runs():
        with tempfile.TemporaryDirectory() as d:
            out[label] = golden_scores(label, Path(d))
        print(label, out[label])
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print("written", GOLDEN_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
