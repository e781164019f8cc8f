"""Reproduction suite: run the published baselines and print ours, published, difference, within our CI or not.

    halluc-bench-reproduce [--presets repro_pope_llava15_7b repro_chair_llava15_7b repro_mme_llava15_7b]
                                [--set benchmark.image_root=/coco/val2014 ...] [--answers PRESET=FILE ...]
                                [--reference benchmarks/data/reproduction/llava15_7b.json] [--out DIR] [--dry-run]

Each preset (configs/experiment/<preset>.yaml) is run with `halluc-bench experiment=<preset>` in
`<out>/<preset>` (the same command resumes an interrupted run); `--set` adds Hydra overrides to every run
(image folders, `model=...` to try another checkpoint, `run.limit=...`). `--answers PRESET=FILE` scores an
existing answers file in score-only mode instead of generating (no GPU needed), e.g. the released captions
the CHAIR reference was computed from. The reference file gives, per preset, the metrics to check, their
values, their kind (published / rescored_published_outputs) and source. Exit status 1 when a run fails.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.base import DATA_DIR

DEFAULT_REFERENCE = DATA_DIR / "reproduction" / "llava15_7b.json"


def lookup(scores: dict, key: str):
    """A (possibly dotted) metric of a scores.json dict, or None."""
    if key in scores:
        return scores[key]
    node = scores
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check(scores: dict, reference: dict) -> list[dict]:
    """Per reference metric: ours, our 95% CI, the reference value, ours - reference, reference inside our CI."""
    out = []
    ci = scores.get("ci") or {}
    for metric, ref in reference["metrics"].items():
        ours = lookup(scores, metric)
        lo, hi = ci.get(metric) or (None, None)
        within = None if ours is None or lo is None else bool(lo <= ref <= hi)
        out.append({"metric": metric, "ours": ours, "ci": None if lo is None else [lo, hi], "reference": ref,
                    "diff": None if ours is None else ours - ref, "within_ci": within, "kind": reference["kind"]})
    return out


def format_rows(preset: str, rows: list[dict]) -> list[list[str]]:
    """Table rows for one preset."""
    def f(v):
        return "" if v is None else f"{v:.2f}"

    return [[preset, r["metric"], f(r["ours"]), "" if r["ci"] is None else f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]",
             f(r["reference"]), "" if r["diff"] is None else f"{r['diff']:+.2f}",
             {True: "yes", False: "no", None: "n/a"}[r["within_ci"]], r["kind"]] for r in rows]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from harness.score_table import grid

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    ap.add_argument("--presets", nargs="*", default=None, help="default: every preset in the reference file")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="Hydra overrides for every run")
    ap.add_argument("--answers", nargs="*", default=[], help="PRESET=FILE: score this file instead of generating")
    ap.add_argument("--out", default="outputs/reproduce")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)

    refs = {k: v for k, v in json.loads(Path(args.reference).read_text(encoding="utf-8")).items()
            if not k.startswith("_")}
    presets = args.presets or list(refs)
    unknown = [p for p in presets if p not in refs]
    if unknown:
        ap.error(f"no reference values for {unknown} in {args.reference}; known: {', '.join(refs)}")
    answers = dict(a.split("=", 1) for a in args.answers)
    out = Path(args.out).resolve()
    table, failed, report = [], [], {}
    for preset in presets:
        run_dir = out / preset
        cmd = [sys.executable, "-m", "harness.cli.run", f"experiment={preset}", f"hydra.run.dir={run_dir}",
               f"results_store={out / 'results.jsonl'}", *args.overrides]
        if preset in answers:
            cmd += [f"answers={Path(answers[preset]).resolve()}", f"answers_name={preset}"]
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        proc = subprocess.run(cmd)
        scores_file = run_dir / "scores.json"
        if proc.returncode != 0 or not scores_file.is_file():
            failed.append(preset)
            print(f"{preset}: the run failed (exit {proc.returncode}); see above", file=sys.stderr)
            continue
        rows = check(json.loads(scores_file.read_text(encoding="utf-8")), refs[preset])
        report[preset] = {"rows": rows, "source": refs[preset]["source"], "run_dir": str(run_dir)}
        table += format_rows(preset, rows)
    if args.dry_run:
        return 0
    if table:
        print("\n" + grid(["preset", "metric", "ours", "ours 95% CI", "reference", "ours - ref", "ref in CI",
                            "reference kind"], table))
        for preset, rep in report.items():
            print(f"\n{preset}: {rep['source']}")
        (out / "reproduction.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"\nwritten: {out / 'reproduction.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
