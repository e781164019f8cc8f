"""AMBER: published table, discriminative metrics by hand, generative metric with a tiny spaCy pipeline, run.py."""
from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from benchmarks.amber import Amber
from benchmarks.amber_metric import amber_score, discriminative_scores, extract_nouns, f1_score, read_answer
from benchmarks.base import DATA_DIR, AnswerMismatchError
from conftest import TEST_DATA, run_cli

PUBLISHED = json.loads((TEST_DATA / "amber" / "published_table.json").read_text())
VECTORS = {"dog": [1, 0, 0], "puppy": [0.95, 0.3, 0], "cat": [0, 1, 0], "kitten": [0.1, 1, 0],
           "tree": [0, 0, 1], "pine": [0.2, 0, 1]}


@pytest.fixture(scope="session")
def tiny_spacy(tmp_path_factory):
    """A blank English spaCy pipeline with six 3-d word vectors, saved as a folder spacy.load reads."""
    spacy = pytest.importorskip("spacy")
    import numpy as np

    nlp = spacy.blank("en")
    for word, vec in VECTORS.items():
        nlp.vocab.set_vector(word, np.asarray(vec, dtype="float32"))
    path = tmp_path_factory.mktemp("spacy") / "tiny_vectors"
    nlp.to_disk(path)
    return str(path)


@pytest.mark.parametrize("row", PUBLISHED["rows"], ids=[r[0] for r in PUBLISHED["rows"]])
def test_published_rows_follow_from_their_chair_f1_p_and_r(row):
    rec = dict(zip(PUBLISHED["columns"], row))
    assert amber_score(rec["CHAIR"], rec["F1"]) == rec["AMBER"]
    assert f1_score(rec["P"], rec["R"], "reference") == rec["F1"]  # inference.py's F1 from rounded P, R


def test_amber_score_rounds_half_up_like_the_table():
    # CogVLM: (100 - 5.6 + 72.3) / 2 = 83.35 -> 83.4 in the table; Python's round() would give 83.3
    assert round((100 - 5.6 + 72.3) / 2, 1) == 83.3 and amber_score(5.6, 72.3) == 83.4
    assert amber_score(5.6, 72.3, "none") == pytest.approx(83.35)


def test_items_per_task_match_amber_query_files(tiny_spacy):
    ann = json.loads((DATA_DIR / "amber" / "annotations.json").read_text())
    assert [a["id"] for a in ann] == list(range(1, 15221))
    sizes = {"all": 15220, "generative": 1004, "discriminative": 14216, "existence": 4924,
             "attribute": 7628, "relation": 1664}  # query_<task>.json of the AMBER repo
    for task, n in sizes.items():
        items = Amber({"task": task, "spacy_model": tiny_spacy}).items()
        assert len(items) == n and len({it.question_id for it in items}) == n
    assert [it.question_id for it in Amber({"task": "generative", "spacy_model": tiny_spacy}).items()] == \
        list(range(1, 1005))
    disc = Amber({"task": "discriminative", "discriminative_suffix": " Answer yes or no.", "image_root": "/imgs"})
    it = disc.items()[0]
    assert (it.question_id, it.prompt, it.image_path) == (1005, "Is the sky sunny in this image? Answer yes or no.",
                                                          "/imgs/AMBER_1.jpg")
    assert it.meta == {"type": "discriminative-attribute-state", "dimension": "attribute", "label": "yes"}
    assert disc.task == "yes_no" and Amber({"task": "all"}).task == "open"


def test_discriminative_rules_by_hand():
    answers = [("discriminative-hallucination", "no", read_answer(a)) for a in ("No", "Yes", "no")]
    ref = discriminative_scores(answers)["existence"]
    # 0.001 on every denominator, one decimal, F1 from rounded P and R with +1e-3 (existence)
    assert (ref["accuracy"], ref["precision"], ref["recall"], ref["f1"]) == (33.3, 99.9, 33.3, 49.9)
    exact = discriminative_scores(answers, "none")["existence"]
    assert exact["accuracy"] == pytest.approx(100 / 3) and exact["precision"] == 100.0
    assert exact["f1"] == pytest.approx(50.0)
    norm = discriminative_scores([(k, lab, read_answer(a, "normalised")) for (k, lab, _), a in
                                  zip(answers, ("No", "Yes", " no. "))])["existence"]
    assert (norm["accuracy"], norm["precision"], norm["recall"], norm["f1"]) == (66.6, 100.0, 66.6, 79.9)
    assert read_answer("yes") is None and read_answer("Yes") == "Yes" and read_answer(None) is None
    # no overall numbers unless all three dimensions are present, as in inference.py
    assert "f1" not in discriminative_scores(answers) and "attribute" not in discriminative_scores(answers)


def test_discriminative_benchmark_on_the_shipped_set():
    bench = Amber({"task": "discriminative"})
    items = bench.items()
    ann = {a["id"]: a for a in json.loads((DATA_DIR / "amber" / "annotations.json").read_text())}
    label_no = Counter(ann[it.question_id]["type"] for it in items if ann[it.question_id]["truth"] == "no")
    s = bench.score([{"id": it.question_id, "response": "No"} for it in items])
    n, n_no = len(items), sum(label_no.values())
    assert (s["n"], s["label_no"], s["answered_no"], s["true_no"], s["unparsed"]) == (n, n_no, n, n_no, 0)
    assert s["accuracy"] == round(n_no / (n + 0.001) * 100, 1) and s["recall"] == 100.0
    rel = label_no["relation"] + label_no["discriminative-relation"]
    assert s["relation"]["precision"] == round(rel / (1664 + 0.001) * 100, 1)
    perfect = bench.score([{"id": it.question_id, "response": it.meta["label"].capitalize()} for it in items])
    assert perfect["f1"] == 100.0 and all(perfect[g]["accuracy"] == 100.0 for g in
                                          ("existence", "attribute", "state", "number", "action", "relation"))
    exact = Amber({"task": "discriminative", "rounding": "none"}).score(
        [{"id": it.question_id, "response": "No"} for it in items])
    assert exact["accuracy"] == pytest.approx(100 * n_no / n)


def test_answer_files_and_id_checks(tmp_path):
    bench = Amber({"task": "discriminative"})
    items = bench.items()
    rows = [{"id": i, "response": "Yes"} for i in range(1, 15221)]  # AMBER's own format, query_all answered
    path = tmp_path / "amber_answers.json"
    path.write_text(json.dumps(rows))
    s = bench.score(bench.load_answers(path))
    assert s["ignored_answers"] == 1004 and s["n"] == len(items)
    with pytest.raises(AnswerMismatchError, match="unknown 1: 99999"):
        bench.score(rows + [{"id": 99999, "response": "No"}])
    with pytest.raises(AnswerMismatchError, match="missing 1: 1005"):
        bench.score(rows[1005:])
    with pytest.raises(ValueError, match="duplicate"):
        bench.score(rows + [{"id": 2000, "response": "No"}])
    with pytest.raises(ValueError, match="benchmark.task: expected one of .*got 'captions'"):
        Amber({"task": "captions"})


# ------------------------------------------------------------------ generative, with a tiny spaCy pipeline
DESCRIPTIONS = {
    # candidates: puppy, lawn, kitten, frisbee, light (safe word), dog; "Dogs" is capitalised: no candidate
    1: "Dogs and puppies are on the lawn, and a kitten watches a frisbee in the light. The dog is happy.",
    2: "There is a pine.",  # pine ~ tree (cos 0.98): safe, covers tree
    3: "The puppy is in the vehicle.",  # puppy = hallu dog's word: covers dog, still hallucinated
}


@pytest.fixture
def amber_files(tmp_path):
    rel = {"dog": ["puppy"], "grass": ["lawn"], "cat": ["kitten"], "car": ["vehicle"], "tree": [], "bird": [],
           "frisbee": [], "lamp": ["light"], "pine": []}
    ann = [{"id": 1, "type": "generative", "truth": ["dog", "grass", "tree"], "hallu": ["cat", "car"]},
           {"id": 2, "type": "generative", "truth": ["tree"], "hallu": ["bird"]},
           {"id": 3, "type": "generative", "truth": ["car"], "hallu": ["dog"]}]
    files = {"relation_file": rel, "annotation_file": ann,
             "question_file": [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in (1, 2, 3)]}
    cfg = {"task": "generative"}
    for key, data in files.items():
        (tmp_path / f"{key}.json").write_text(json.dumps(data))
        cfg[key] = str(tmp_path / f"{key}.json")
    (tmp_path / "safe.txt").write_text("light")
    cfg["safe_words_file"] = str(tmp_path / "safe.txt")
    return cfg


def test_generative_metric_by_hand(amber_files, tiny_spacy):
    assert extract_nouns(DESCRIPTIONS[1]) == ("Dogs", "puppy", "lawn", "kitten", "frisbee", "light", "dog")
    records = [{"id": i, "response": t} for i, t in DESCRIPTIONS.items()]
    s = Amber({**amber_files, "spacy_model": tiny_spacy}).score(records)
    # 9 candidates, 3 hallucinated (kitten, frisbee; puppy); truth covered 4/5 (not tree of 1);
    # hallu covered 2/4 (cat by kitten, dog by puppy); descriptions 1 and 3 hallucinate
    assert {k: s[k] for k in ("n_candidate_nouns", "n_hallucinated_nouns", "n_truth_covered", "n_truth_objects",
                              "n_hallu_covered", "n_hallu_objects", "n_with_hallucination")} == {
        "n_candidate_nouns": 9, "n_hallucinated_nouns": 3, "n_truth_covered": 4, "n_truth_objects": 5,
        "n_hallu_covered": 2, "n_hallu_objects": 4, "n_with_hallucination": 2}
    assert (s["CHAIR"], s["Cover"], s["Hal"], s["Cog"]) == (33.3, 80.0, 66.7, 50.0)
    assert "amber_score" not in s and "f1" not in s
    exact = Amber({**amber_files, "spacy_model": tiny_spacy, "rounding": "none"}).score(records)
    assert exact["CHAIR"] == pytest.approx(100 / 3) and exact["Hal"] == pytest.approx(200 / 3)
    strict = Amber({**amber_files, "spacy_model": tiny_spacy, "similarity_threshold": 0.99}).score(records)
    assert strict["n_hallucinated_nouns"] == 4 and strict["n_truth_covered"] == 3  # pine no longer ~ tree


def test_missing_spacy_model_or_package_says_how_to_install(monkeypatch):
    pytest.importorskip("spacy")
    with pytest.raises(OSError, match="python -m spacy download en_core_web_no_such"):
        Amber({"task": "generative", "spacy_model": "en_core_web_no_such"}).items()
    Amber({"task": "existence", "spacy_model": "en_core_web_no_such"}).items()  # no spaCy needed
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(ImportError, match=r"halluc-bench\[amber\]"):
        Amber({"task": "all", "spacy_model": "en_core_web_lg"}).items()


def test_run_py_generates_and_scores(tiny_spacy, tmp_path):
    images = sorted(p.name for p in (DATA_DIR / "images").glob("*.jpg"))
    ids = [1, 1005, 8633, 13557, 2, 1006]  # description, attribute, existence, relation, ...
    questions = json.loads((DATA_DIR / "amber" / "query_all.json").read_text())
    rows = [{**questions[i - 1], "image": images[k]} for k, i in enumerate(ids)]
    qfile = tmp_path / "amber_small.json"
    qfile.write_text(json.dumps(rows))
    run_cli(["model=tiny_llava", "benchmark=amber", f"benchmark.question_file={qfile}",
             f"benchmark.image_root={DATA_DIR / 'images'}", f"benchmark.spacy_model={tiny_spacy}",
             "benchmark.max_new_tokens=24", "run.limit=4", "run.num_threads=1",
             f"hydra.run.dir={tmp_path / 'run'}", f"results_store={tmp_path / 'r.jsonl'}"])
    s = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert s["n"] == 4 and s["n_descriptions"] == 1 and s["existence"]["n"] == 1 and s["relation"]["n"] == 1
    assert s["amber_score"] == amber_score(s["CHAIR"], s["f1"])
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert row["benchmark"] == "amber/all/exact/reference" and row["headline"][0] == "amber_score"
