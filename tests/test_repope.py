"""RePOPE: relabelled POPE items, RePOPE's answer rule, removed questions, published LLaVA answers, run.py."""
from __future__ import annotations

import json

import pytest

from benchmarks.base import DATA_DIR, AnswerMismatchError
from benchmarks.pope import POPE, SPLITS
from benchmarks.repope import RePOPE
from benchmarks.yes_no import parse_repope
from conftest import TEST_DATA, run_in_process

# LLaVA-1.5-7B answers to LLaVA's llava_pope_test.jsonl (POPE 2023-08, combined ids; adversarial complete,
# random 2,712 of 2,910, no popular), published with its POPE scores (see benchmarks/data/SOURCES.md)
LLAVA7B = TEST_DATA / "pope_answers" / "llava-v1.5-7b_vlm-benchmarks.jsonl"
# that repo's POPE_results.txt for the adversarial split (LLaVA's eval_pope.py): TP FP TN FN
PUBLISHED_POPE_ADVERSARIAL = (1187, 133, 1367, 313)


def jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def repope_rule(response: str):
    """RePOPE src/eval_utils.py compute_answer, written out independently."""
    low = response.lower()
    return "yes" if "yes" in low else "no" if "no" in low else "no" if "not" in low else None


def test_parser_follows_repope_rule_and_drops_the_rest():
    cases = ["Yes", "No", "Yes, there is no dog.", "I don't know", "nothing", "There is a cat.", "", "  yes ",
             "Not at all", "NO", "yesterday"]
    for text in cases:
        got = parse_repope(text)
        assert got.pred == repope_rule(text), text
        assert got.unparsed == (repope_rule(text) is None)


def test_items_are_kept_questions_with_repope_labels():
    for split in SPLITS:
        pope = {r["question_id"]: r for r in jsonl(DATA_DIR / "pope" / "coco" / f"coco_pope_{split}.json")}
        rep = {r["question_id"]: r for r in jsonl(DATA_DIR / "repope" / f"coco_repope_{split}.json")}
        items = RePOPE({"split": split}).items()
        assert [it.question_id for it in items] == [q for q in pope if q in rep]  # POPE order
        for it in items:
            r, p = rep[it.question_id], pope[it.question_id]
            assert it.prompt == r["text"] == p["text"] and it.image_id == r["image"]
            assert it.meta == {"label": r["label"], "split": split, "pope_label": p["label"]}
    # the RePOPE paper's relabelling: removed and flipped per split
    for split, removed, flipped in (("random", 226, 144), ("popular", 273, 178), ("adversarial", 316, 172)):
        items = RePOPE({"split": split}).items()
        assert 3000 - len(items) == removed
        assert sum(it.meta["label"] != it.meta["pope_label"] for it in items) == flipped


def test_published_llava_answers_against_independent_computation():
    rows = jsonl(LLAVA7B)
    # independent: LLaVA combined id -> (split, POPE id); RePOPE labels by id; RePOPE's rule
    labels = {r["question_id"]: r["label"] for r in jsonl(DATA_DIR / "repope" / "coco_repope_adversarial.json")}
    counts = dict(tp=0, fp=0, tn=0, fn=0)
    removed = dropped = 0
    for r in rows:
        if r["question_id"] >= 10_000_000:
            continue  # random / popular block
        if r["question_id"] not in labels:
            removed += 1
            continue
        pred, label = repope_rule(r["text"]), labels[r["question_id"]]
        if pred is None:
            dropped += 1
            continue
        counts[("t" if pred == label else "f") + ("p" if pred == "yes" else "n")] += 1
    p, rc = counts["tp"] / (counts["tp"] + counts["fp"]), counts["tp"] / (counts["tp"] + counts["fn"])
    bench = RePOPE({"split": "adversarial"})
    s = bench.score(bench.load_answers(LLAVA7B), source=str(LLAVA7B))
    assert {k: s[k] for k in counts} == counts
    assert s["removed_answers_ignored"] == removed == 316 and s["unparsed"] == dropped
    assert s["n"] == sum(counts.values()) == 2684
    assert s["f1"] == pytest.approx(100 * 2 * p * rc / (p + rc), abs=1e-9)
    assert s["accuracy"] == pytest.approx(100 * (counts["tp"] + counts["tn"]) / s["n"], abs=1e-9)
    assert s["id_format"] == "llava_combined"
    # the 2023-08 reading of the same file gives the same (adversarial ids are shared)
    again = RePOPE({"split": "adversarial", "version": "2023-08"}).score(bench.load_answers(LLAVA7B))
    assert {k: again[k] for k in counts} == counts


def test_pope_scorer_reproduces_the_published_scores_of_that_file():
    bench = POPE({"split": "adversarial", "version": "2023-08"})
    s = bench.score(bench.load_answers(LLAVA7B))
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == PUBLISHED_POPE_ADVERSARIAL
    assert round(s["f1"] / 100, 3) == 0.842 and round(s["accuracy"] / 100, 3) == 0.851


def test_unparsable_answers_drop_out_and_are_counted():
    bench = RePOPE({"split": "popular", "limit": 6})
    items = bench.items()
    answers = ["Maybe", "Yes", "no", "", "I cannot tell", "Unsure"]  # "cannot" holds "no": a no
    s = bench.score([{"question_id": it.question_id, "answer": a} for it, a in zip(items, answers)])
    assert s["unparsed"] == 3 and s["n"] == 3 and s["tp"] + s["fp"] + s["tn"] + s["fn"] == 3
    pope = POPE({"split": "popular", "limit": 6, "parser": "repope"})  # RePOPE's POPE column
    p = pope.score([{"question_id": it.question_id, "answer": a} for it, a in zip(pope.items(), answers)])
    assert p["unparsed"] == 3 and p["n"] == 3


def test_removed_answers_are_ignored_unknown_and_missing_are_errors():
    bench = RePOPE({"split": "random"})
    pope_ids = [r["question_id"] for r in jsonl(DATA_DIR / "pope" / "coco" / "coco_pope_random.json")]
    labels = {it.question_id: it.meta["label"] for it in bench.items()}
    records = [{"question_id": q, "text": labels.get(q, "yes").capitalize()} for q in pope_ids]
    s = bench.score(records)
    assert s["accuracy"] == 100.0 and s["removed_answers_ignored"] == 226 and s["n"] == 2774
    with pytest.raises(AnswerMismatchError, match="unknown 1: 99999"):
        bench.score(records + [{"question_id": 99999, "text": "Yes"}])
    kept = next(q for q in pope_ids if q in labels)
    with pytest.raises(AnswerMismatchError, match=f"missing 1: {kept}"):
        bench.score([r for r in records if r["question_id"] != kept])


def test_version_2023_08_matches_by_content_and_hints():
    old = jsonl(DATA_DIR / "pope" / "coco_2023-08_llava_opera" / "coco_pope_random.json")
    bench = RePOPE({"split": "random", "version": "2023-08"})
    items = bench.items()
    assert len(items) == 2774 - 87 and bench.not_in_version == {"random": 87}
    cur = {(it.image_id, it.prompt): it.meta["label"] for it in RePOPE({"split": "random"}).items()}
    for it in items:  # same question (typo aside), RePOPE's label
        assert cur[(it.image_id, it.prompt.replace("imange", "image"))] == it.meta["label"]
    labels = {it.question_id: it.meta["label"] for it in items}
    records = [{"question_id": r["question_id"], "text": labels.get(r["question_id"], "no")} for r in old]
    s = bench.score(records)
    assert s["accuracy"] == 100.0 and s["n"] == 2687 and s["removed_answers_ignored"] == 2910 - 2687
    assert s["not_in_version"] == 87
    with pytest.raises(AnswerMismatchError, match="benchmark.version=2023-08"):
        RePOPE({"split": "random"}).score(records)


def test_split_all_and_configuration_errors():
    bench = RePOPE({"split": "all"})
    items = bench.items()
    assert len(items) == 2774 + 2727 + 2684 and items[0].question_id == f"random/{items[0].question_id.split('/')[1]}"
    s = bench.score([{"question_id": it.question_id, "answer": it.meta["label"]} for it in items])
    assert s["mean_f1"] == 100.0 and s["adversarial"]["n"] == 2684 and s["removed_answers_ignored"] == 0
    with pytest.raises(ValueError, match="COCO POPE only"):
        RePOPE({"dataset": "gqa"})
    assert bench.label() == "repope/all/current/repope"


@pytest.fixture
def small_questions(tmp_path):
    """Four RePOPE questions pointed at the shipped COCO images."""
    images = sorted(p.name for p in (DATA_DIR / "images").glob("*.jpg"))
    rows = jsonl(DATA_DIR / "repope" / "coco_repope_random.json")[:6]
    path = tmp_path / "repope_small.jsonl"
    path.write_text("".join(json.dumps({**r, "image": images[i]}) + "\n" for i, r in enumerate(rows)))
    return path


def test_run_py_generates_and_scores(small_questions, tmp_path):
    run_in_process(["model=tiny_llava", "benchmark=repope", f"benchmark.question_file={small_questions}",
             f"benchmark.image_root={DATA_DIR / 'images'}", "run.limit=4", "run.num_threads=1",
             f"hydra.run.dir={tmp_path / 'run'}", f"results_store={tmp_path / 'r.jsonl'}"])
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["n"] + scores["unparsed"] == 4 and scores["removed_answers_ignored"] == 0
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert row["benchmark"] == "repope/random/current/repope" and row["headline"][0] == "accuracy"


def test_run_py_score_only_on_published_answers(tmp_path):
    proc = run_in_process(["benchmark=repope", "benchmark.split=adversarial", f"answers={LLAVA7B}",
                    f"hydra.run.dir={tmp_path / 'run'}", f"results_store={tmp_path / 'r.jsonl'}"])
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    expected = RePOPE({"split": "adversarial"}).score(RePOPE().load_answers(LLAVA7B))
    ci = scores.pop("ci", {})
    assert scores == expected and "repope/adversarial" in proc.stdout
    assert ci["f1"][0] <= expected["f1"] <= ci["f1"][1]  # confidence intervals over the scored questions
