"""Recompute the golden tiny-model scores (tests/golden/tiny_smoke_scores.json) after an intended change.

    python scripts/update_goldens.py        # then review the diff and commit it with the reason
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.golden import GOLDEN_FILE, GOLDEN_RUNS, golden_scores  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for label in GOLDEN_RUNS:
        with tempfile.TemporaryDirectory() as d:
            out[label] = golden_scores(label, Path(d))
        print(label, out[label])
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print("written", GOLDEN_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
