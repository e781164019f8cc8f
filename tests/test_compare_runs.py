"""Paired comparison: a run against itself, a planted 5% flip, item-set mismatches, run directories."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, run_in_process
from harness.compare import compare_runs, format_comparison
from test_stats import LAVIN, pope_answers


def write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def planted_flip(recs, frac=0.05, seed=1):
    """B = A with `frac` of all answers flipped from a right "No" to a wrong "Yes" (false positives)."""
    from benchmarks.pope import question_file_path

    labels = {json.loads(x)["question_id"]: json.loads(x)["label"]
              for x in question_file_path("coco", "random").read_text().splitlines() if x.strip()}
    right_no = [i for i, r in enumerate(recs) if r["answer"] == "No" and labels[r["question_id"]] == "no"]
    pick = set(np.random.default_rng(seed).choice(right_no, size=int(frac * len(recs)), replace=False).tolist())
    return [{**r, "answer": "Yes"} if i in pick else r for i, r in enumerate(recs)]


def test_a_run_against_itself_differs_by_zero_with_p_1(tmp_path):
    a = write(tmp_path / "a.jsonl", pope_answers())
    res = compare_runs(a, a, ["benchmark=pope"], n_resamples=500)
    assert res["n"] == 3000
    for m, r in res["metrics"].items():
        assert r["diff"] == 0 and r["ci"] == [0.0, 0.0] and r["p"] == 1.0, m


def test_planted_five_percent_flip_is_significant(tmp_path):
    recs = pope_answers()
    a = write(tmp_path / "a.jsonl", recs)
    b = write(tmp_path / "b.jsonl", planted_flip(recs))
    res = compare_runs(a, b, ["benchmark=pope"], n_resamples=1000)
    acc, yr = res["metrics"]["accuracy"], res["metrics"]["yes_ratio"]
    assert acc["diff"] == pytest.approx(-5.0) and yr["diff"] == pytest.approx(5.0)
    assert acc["p"] < 0.01 and yr["p"] < 0.01
    assert acc["ci"][1] < 0 < yr["ci"][0]
    text = format_comparison(res)
    assert "yes-ratio shift (B - A): +5.00 points" in text and "yes_bias" in text


def test_a_small_random_difference_is_not_significant(tmp_path):
    recs = pope_answers()
    rng = np.random.default_rng(3)
    swap = set(rng.choice(len(recs), size=10, replace=False).tolist())  # 10 answers flipped both ways
    b = [{**r, "answer": "No" if r["answer"] == "Yes" else "Yes"} if i in swap else r for i, r in enumerate(recs)]
    res = compare_runs(write(tmp_path / "a.jsonl", recs), write(tmp_path / "b.jsonl", b), ["benchmark=pope"])
    assert res["metrics"]["accuracy"]["p"] > 0.05


def test_different_item_sets_are_an_error_unless_common(tmp_path):
    recs = pope_answers()
    a = write(tmp_path / "a.jsonl", recs[:2000])
    b = write(tmp_path / "b.jsonl", recs[500:])
    with pytest.raises(ValueError, match="different items"):
        compare_runs(a, b, ["benchmark=pope"], n_resamples=100)
    res = compare_runs(a, b, ["benchmark=pope"], n_resamples=100, common=True)
    assert res["n"] == 1500 and res["dropped"] == 1500
    assert all(r["diff"] == 0 for r in res["metrics"].values())  # same answers on the common items


def test_benchmark_must_be_known(tmp_path):
    a = write(tmp_path / "a.jsonl", pope_answers()[:5])
    with pytest.raises(ValueError, match="benchmark=NAME"):
        compare_runs(a, a)
    with pytest.raises(ValueError, match="valid choices"):
        compare_runs(a, a, ["benchmark=nope"])


def test_cli_on_run_directories_and_mme_folders(tmp_path):
    recs = pope_answers()
    a = write(tmp_path / "a.jsonl", recs)
    b = write(tmp_path / "b.jsonl", planted_flip(recs))
    for name, path in (("ra", a), ("rb", b)):
        run_in_process(["benchmark=pope", f"answers={path}", f"hydra.run.dir={tmp_path / name}",
                 f"results_store={tmp_path / 'r.jsonl'}"])
        assert (tmp_path / name / "units.json").is_file() and (tmp_path / name / "provenance.json").is_file()
    out = tmp_path / "cmp.json"
    proc = run_in_process(["scripts/compare_runs.py", str(tmp_path / "ra"), str(tmp_path / "rb"), "--json", str(out)])
    assert "pope/coco/random/current/llava: B = rb vs A = ra on 3000 paired items" in proc.stdout
    assert "yes-ratio shift" in proc.stdout
    res = json.loads(out.read_text())
    assert res["metrics"]["accuracy"]["diff"] == pytest.approx(-5.0) and res["metrics"]["accuracy"]["p"] < 0.01
    # an MME eval-tool folder against itself, the benchmark given on the command line
    proc = run_in_process(["scripts/compare_runs.py", str(LAVIN), str(LAVIN), "benchmark=mme", "--metrics", "perception",
                    "existence.acc"])
    assert "perception" in proc.stdout and "+0.00" in proc.stdout and "1.0000" in proc.stdout
    bad = run_cli(["scripts/compare_runs.py", str(a), str(tmp_path / "missing.jsonl"), "benchmark=pope"], check=False)
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr
