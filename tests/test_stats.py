"""Confidence intervals: units reproduce the scores, CIs contain the estimate, shrink with n, are seeded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.chair import ChairBenchmark
from benchmarks.mme import MME
from benchmarks.pope import POPE, question_file_path
from harness.results import flatten
from harness.stats import Units, bootstrap_ci, paired_permutation, point_metrics

TEST_DATA = Path(__file__).resolve().parent / "data"
R1 = TEST_DATA / "chair_captions" / "less_is_more_table1" / "r1-llava1.5-7b.jsonl"
R10 = TEST_DATA / "chair_captions" / "less_is_more_table1" / "r10-ours-cap.jsonl"
LAVIN = TEST_DATA / "mme" / "LaVIN"
DAMRO_MME = TEST_DATA / "mme" / "damro_results"


def pope_answers(split: str = "random", accuracy: float = 0.85, seed: int = 0, version: str = "current") -> list[dict]:
    """Synthetic answers to a shipped POPE split (no published POPE answers ship): right with prob `accuracy`."""
    rows = [json.loads(x) for x in question_file_path("coco", split, version).read_text().splitlines() if x.strip()]
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        right = rng.random() < accuracy
        yes = (r["label"] == "yes") == right
        out.append({"question_id": r["question_id"], "answer": "Yes" if yes else "No", "category": split})
    return out


def chair_records(path: Path, n: int | None = None) -> list[dict]:
    bench = ChairBenchmark({"ground_truth": "lemma_pos"})
    recs = bench.load_answers(path)
    return recs[:n] if n else recs


def _check_units_equal_scores(bench, records):
    scores = flatten(bench.score(records))
    point = point_metrics(bench.metrics_from_sums, bench.units(records))
    assert point, "no metrics from units"
    for k, v in point.items():
        assert k in scores, k
        assert v == pytest.approx(scores[k], abs=1e-9), k
    return scores, point


def test_units_reproduce_the_scores_exactly():
    _check_units_equal_scores(ChairBenchmark({"ground_truth": "lemma_pos"}), chair_records(R1))
    for folder in (LAVIN, DAMRO_MME):
        bench = MME({})
        _, point = _check_units_equal_scores(bench, bench.load_answers(folder))
        assert {"perception", "cognition", "hallucination_total", "OCR.acc_plus"} <= set(point)
    hall = MME({"subtasks": ["existence", "count", "position", "color"]})
    _, point = _check_units_equal_scores(hall, hall.load_answers(LAVIN))
    assert "hallucination_total" in point and "perception" not in point  # a partial total is no total
    for split in ("random", "all"):
        bench = POPE({"split": split})
        recs = pope_answers("random") if split == "random" else [
            r for s in ("random", "popular", "adversarial") for r in pope_answers(s, seed=len(s))]
        _, point = _check_units_equal_scores(bench, recs)
        assert "yes_ratio" in point
        if split == "all":
            assert {"random.f1", "adversarial.yes_ratio", "mean_f1", "f1"} <= set(point)


@pytest.mark.parametrize("kind", ["chair", "pope", "mme"])
def test_ci_contains_the_estimate_and_is_seeded(kind):
    if kind == "chair":
        bench, recs, key = ChairBenchmark({"ground_truth": "lemma_pos"}), chair_records(R1), "CHAIRs"
    elif kind == "pope":
        bench, recs, key = POPE({}), pope_answers(), "accuracy"
    else:
        bench = MME({})
        recs, key = bench.load_answers(LAVIN), "perception"
    scores = flatten(bench.score(recs))
    ci = bench.confidence_intervals(recs)
    assert set(point_metrics(bench.metrics_from_sums, bench.units(recs))) == set(ci)
    for m, (lo, hi) in ci.items():
        assert lo <= scores[m] <= hi, (m, lo, scores[m], hi)
    assert ci[key][1] - ci[key][0] > 0
    assert bench.confidence_intervals(recs) == ci  # seeded: identical
    other = type(bench)({**bench.cfg, "bootstrap_seed": 1}).confidence_intervals(recs)
    assert other[key] != ci[key]
    assert type(bench)({**bench.cfg, "bootstrap": 0}).confidence_intervals(recs) == {}


def test_ci_width_shrinks_as_n_grows():
    bench = ChairBenchmark({"ground_truth": "lemma_pos"})
    w = {n: (lambda c: c["CHAIRs"][1] - c["CHAIRs"][0])(bench.confidence_intervals(chair_records(R1, n)))
         for n in (50, 500)}
    assert w[500] < 0.6 * w[50]
    pope_w = {}
    for n in (300, 3000):
        b = POPE({"limit": n})
        ci = b.confidence_intervals(pope_answers()[:n])
        pope_w[n] = ci["accuracy"][1] - ci["accuracy"][0]
    assert pope_w[3000] < 0.5 * pope_w[300]
    # known binomial width: 2 * 1.96 * sqrt(p(1-p)/n) percent for accuracy p ~ 0.85 on 3,000 questions
    assert pope_w[3000] == pytest.approx(2 * 1.96 * 100 * np.sqrt(0.85 * 0.15 / 3000), rel=0.15)


def test_mme_resamples_images_within_subtasks():
    bench = MME({"subtasks": ["existence"]})
    recs = bench.load_answers(LAVIN)
    units = bench.units(recs)
    assert len(units) == 30 and units.columns == ("questions", "correct", "all_correct", "images")
    assert units.values[:, 0].tolist() == [2.0] * 30  # two questions per image
    ci = bench.confidence_intervals(recs)
    assert ci["existence.acc"][0] <= 95.0 <= ci["existence.acc"][1]


def test_units_round_trip_and_pairing_errors(tmp_path):
    bench = POPE({})
    u = bench.units(pope_answers())
    back = Units.load(u.save(tmp_path / "u.json"))
    assert back.ids == u.ids and np.array_equal(back.values, u.values) and back.stratum_names == u.stratum_names
    with pytest.raises(ValueError, match="different items"):
        paired_permutation(bench.metrics_from_sums, u, POPE({"limit": 100}).units(pope_answers()[:100]))


def test_bootstrap_of_a_constant_metric_is_degenerate():
    # every answer right: accuracy is 100 in every resample
    rows = [json.loads(x) for x in question_file_path("coco", "random").read_text().splitlines() if x.strip()]
    recs = [{"question_id": r["question_id"], "answer": r["label"]} for r in rows]
    ci = POPE({}).confidence_intervals(recs)
    assert ci["accuracy"] == [100.0, 100.0]
    assert bootstrap_ci(POPE({}).metrics_from_sums, POPE({}).units(recs), 0) == {}
