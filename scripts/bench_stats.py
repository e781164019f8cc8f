"""Cost of the statistics relative to scoring, measured side by side on POPE (3 splits, 9,000 questions).

    python -m scripts.bench_stats [--resamples 1000] [--repeats 3]

Times, per repeat (medians reported): `score` (parse and score the answers), `ci` (units + 1,000-resample
bootstrap of every metric), `compare` (paired bootstrap + permutation test of two runs). Targets: ci <= 2x
score and compare <= 3x score; PASS/MISS is printed (exit code 0 either way: timings depend on the machine).
The answers are synthetic (85% right, seeded) because no published POPE answers ship with the project.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.pope import SPLITS, POPE, question_file_path
from harness.stats import compare_units

TARGETS = {"ci": 2.0, "compare": 3.0}


def answers(seed: int) -> list[dict]:
    """Synthetic answers to the three current POPE-COCO splits, right with probability 0.85."""
    rng = np.random.default_rng(seed)
    out = []
    for split in SPLITS:
        for line in question_file_path("coco", split).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                yes = (r["label"] == "yes") == (rng.random() < 0.85)
                out.append({"question_id": f"{split}/{r['question_id']}", "answer": "Yes" if yes else "No"})
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    a, b = answers(0), answers(1)
    times: dict[str, list[float]] = {"score": [], "ci": [], "compare": []}
    for _ in range(args.repeats):
        bench = POPE({"split": "all", "bootstrap": args.resamples})
        t0 = time.perf_counter()
        bench.score(a)
        t1 = time.perf_counter()
        bench.confidence_intervals(a)
        t2 = time.perf_counter()
        compare_units(bench.metrics_from_sums, bench.units(a), bench.units(b), args.resamples)
        t3 = time.perf_counter()
        times["score"].append(t1 - t0)
        times["ci"].append(t2 - t1)
        times["compare"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"score {med['score']:.2f}s")
    for k, target in TARGETS.items():
        ratio = med[k] / med["score"]
        print(f"{k:8s} {med[k]:.2f}s  {ratio:.2f}x score  target <= {target}x  {'PASS' if ratio <= target else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
