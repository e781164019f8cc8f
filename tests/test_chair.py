"""CHAIR: reference values of 12 published caption logs x 2 ground truths, Maxlinn's test vector,
hand-checked caption rules, id handling, answer formats, and the ground-truth builder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.base import AnswerMismatchError
from benchmarks.chair import ChairBenchmark, DuplicateImageIdError
from benchmarks.chair_metric import (analyse_caption, caption_detail, caption_objects, chair_evaluate,
                                     coco_image_id, lemma_pos_tokens, load_ground_truth, load_vocab)
from harness.registry import BENCHMARKS

DATA = Path(__file__).resolve().parent / "data"
TABLE1 = sorted((DATA / "chair_captions" / "less_is_more_table1").glob("*.jsonl"))
MAXLINN = DATA / "chair_captions" / "maxlinn_example"
REF = json.loads((DATA / "reference_values.json").read_text())["chair"]


@pytest.fixture(scope="module", params=["lemma_pos", "singularize"])
def bench(request):
    return ChairBenchmark({"name": "chair", "ground_truth": request.param})


def test_registered():
    assert BENCHMARKS.get("chair") is ChairBenchmark


@pytest.mark.parametrize("path", TABLE1, ids=lambda p: p.stem)
def test_table1_reference_values(bench, path):
    ref = REF[f"chair_captions/less_is_more_table1/{path.name}"][bench.ground_truth_name]
    res = bench.score(bench.load_answers(path), source=str(path))
    got = {k: round(res[k], 2) for k in ("CHAIRs", "CHAIRi", "Recall", "Len")}
    assert got == {k: ref[k] for k in got}
    assert res["n"] == ref["n"] == 500 and res["n_outside_image_set"] == 0 and res["unparsed"] == 0
    assert res["Precision"] == pytest.approx(100 - res["CHAIRi"])
    p, r = res["Precision"], res["Recall"]
    assert res["F1"] == pytest.approx(2 * p * r / (p + r))


def test_maxlinn_example(bench):
    expected = json.loads((MAXLINN / "outputs.json").read_text())
    recs = bench.load_answers(MAXLINN / "example_inputs.jsonl")
    details = bench.details(recs)
    assert len(details) == len(expected["sentences"]) == 2
    for got, exp in zip(details, expected["sentences"]):
        assert got["image_id"] == exp["image_id"]
        assert got["mscoco_generated_words"] == exp["mscoco_generated_words"]
        assert sorted(got["mscoco_gt_words"]) == sorted(exp["mscoco_gt_words"])
        assert got["mscoco_hallucinated_words"] == exp["mscoco_hallucinated_words"]
        assert got["hallucination_idxs"] == exp["hallucination_idxs"]
        for k in ("CHAIRs", "CHAIRi", "Recall"):
            assert got["metrics"][k] == pytest.approx(exp["metrics"][k])
        # Maxlinn normalised with pattern's singularize ("ha", "proces"): same length, other word forms
        assert len(got["words"]) == len(exp["words"])
    res = bench.score(recs)
    for k, v in expected["overall_metrics"].items():
        assert res[k] == pytest.approx(100 * v)
    assert res["n"] == 2 and res["n_outside_image_set"] == 2  # 1290 and 6871 are not in chair-500
    # the CHAIR output file itself (a JSON object with `sentences`) reads back to the same captions
    again = bench.load_answers(MAXLINN / "outputs.json")
    assert [(r["question_id"], r["answer"]) for r in again] == [(r["question_id"], r["answer"]) for r in recs]


def test_caption_rules_by_hand():
    # double words, 'baby X' -> X (not person), 'toilet seat' -> toilet, surface text kept as written
    cap = "A Man holding two hot dogs next to baby elephants and a toilet seat."
    assert caption_objects(cap) == [("Man", "person"), ("hot dogs", "hot dog"), ("baby elephants", "elephant"),
                                    ("toilet seat", "toilet")]
    # 'seat' is not a chair once 'toilet' is mentioned; otherwise it is
    assert caption_objects("The seat of the toilet is up.") == [("toilet", "toilet")]
    assert caption_objects("A seat near a desk.") == [("seat", "chair"), ("desk", "dining table")]
    # merged phrases that are not objects block their parts ('train track' is no train)
    assert caption_objects("A train track in a field.") == []
    # POS matters: 'Tennis rackets' -> noun lemma; words of a verb are lemmatised as verbs
    assert lemma_pos_tokens("Two dogs are running.")[1] == ("two", "dog", "be", "run", ".")


def test_vocab_quirks_are_an_option():
    cap = "A motor bike next to a cheesecake and an iPhone."
    assert caption_objects(cap) == []  # the reference's synonym list never matches these
    fixed = load_vocab(fix_vocab_quirks=True)
    assert [o for _, o in caption_objects(cap, fixed)] == ["motorcycle", "cake", "cell phone"]
    b = ChairBenchmark({"fix_vocab_quirks": True})
    d = b.details([{"image_id": 2239, "caption": cap}])[0]
    assert d["mscoco_generated_words"] == ["motorcycle", "cake", "cell phone"]


def test_detail_marks_hallucinations():
    d = caption_detail("A girl with a dog and a Tennis Racket.", {"person", "tennis racket"}, 2239)
    assert d["mscoco_generated_words"] == ["person", "dog", "tennis racket"]
    assert d["mscoco_hallucinated_words"] == [["dog", "dog"]]
    hall = [m for m in d["mentions"] if m["hallucinated"]]
    assert [(m["surface"], m["start"], m["end"], m["token_index"]) for m in hall] == [("dog", 14, 17, 4)]
    assert d["mentions"][2]["surface"] == "Tennis Racket"
    assert d["metrics"] == {"CHAIRs": 1, "CHAIRi": pytest.approx(1 / 3), "Recall": 1.0, "Len": 9}  # "tennis racket" is one word


def test_fast_tagger_equals_nltk():
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    from benchmarks.nltk_setup import ensure_nltk_data, get_tagger

    ensure_nltk_data()  # nltk itself reads the shipped data (scoring no longer imports nltk)
    caps = [json.loads(line)["text"] for line in TABLE1[0].read_text().splitlines()[:80]]
    caps += ["A 1990s photo of well-known people: “quoted” text, 3.5 kg, e-mail & can't stop."]
    nltk_tagger = PerceptronTagger()  # what nltk.pos_tag builds on every call
    for cap in caps:
        tokens = nltk.word_tokenize(cap.lower())
        assert get_tagger().tag(tokens) == nltk_tagger.tag(tokens)
    tokens = nltk.word_tokenize(caps[0].lower())
    assert get_tagger().tag(tokens) == nltk.pos_tag(tokens)


def test_unknown_and_duplicate_ids():
    b = ChairBenchmark({})
    with pytest.raises(AnswerMismatchError, match="999999999"):
        b.score([{"image_id": 2239, "caption": "a dog"}, {"image_id": 999999999, "caption": "a dog"}])
    with pytest.raises(AnswerMismatchError, match="not_an_id"):
        b.score([{"image_id": "not_an_id.jpg", "caption": "a dog"}])
    with pytest.raises(DuplicateImageIdError, match="2239"):
        b.score([{"image_id": "000000002239.jpg", "text": "a dog"},
                 {"image_id": "COCO_val2014_000000002239.jpg", "text": "a cat"}])


def test_image_id_forms():
    assert coco_image_id(2239) == coco_image_id("000000002239.jpg") == 2239
    assert coco_image_id("COCO_val2014_000000002239.jpg") == coco_image_id("/x/COCO_val2014_000000002239.jpg") == 2239
    with pytest.raises(ValueError):
        coco_image_id("abc")


def test_items():
    items = ChairBenchmark({}).items()
    ids = [it.question_id for it in items]
    assert len(ids) == len(set(ids)) == 500 and ids[0] == 2239
    assert items[0].image_id == "COCO_val2014_000000002239.jpg" and items[0].image_path is None
    assert items[0].meta == {"coco_id": 2239} and items[0].prompt == "Please describe this image in detail."
    gt = load_ground_truth("lemma_pos")
    assert all(i in gt for i in ids)
    small = ChairBenchmark({"image_set": "damro500", "image_root": "/coco/val2014", "limit": 3}).items()
    assert [it.question_id for it in small] == [310196, 210789, 429109]
    assert small[0].image_path == "/coco/val2014/COCO_val2014_000000310196.jpg"
    with pytest.raises(ValueError, match="chair500"):
        ChairBenchmark({"image_set": "nope"}).items()


def test_answer_formats(tmp_path):
    b = ChairBenchmark({"image_set": "damro500"})
    runner = [{"question_id": 310196, "image_id": "COCO_val2014_000000310196.jpg", "answer": "A dog on a couch."},
              {"question_id": 210789, "image_id": None, "answer": "A man.", "skipped": False},
              {"question_id": 429109, "image_id": "COCO_val2014_000000429109.jpg", "answer": "", "skipped": True}]
    arr = tmp_path / "caps.json"
    arr.write_text(json.dumps([{"image_id": 310196, "caption": "A dog on a couch."},
                               {"image_id": 210789, "caption": "A man."}]))
    res_runner, res_arr = b.score(runner), b.score(b.load_answers(arr))
    assert res_runner == {**res_arr, "n_skipped": 1} and res_arr["n"] == 2 and res_arr["n_outside_image_set"] == 0
    custom = tmp_path / "custom.jsonl"
    custom.write_text(json.dumps({"img": "COCO_val2014_000000310196.jpg", "desc": "A dog on a couch."}) + "\n")
    bc = ChairBenchmark({"image_set": "damro500", "id_key": "img", "caption_key": "desc"})
    recs = bc.load_answers(custom)
    assert recs[0]["question_id"] == 310196 and recs[0]["answer"] == "A dog on a couch."
    assert bc.score(recs)["n"] == 1


def test_chair_evaluate_counts():
    gt = {1: {"dog", "person"}, 2: {"cat"}}
    out = chair_evaluate([(1, "A dog and a dog and a cat."), (2, "Nothing here.")], gt)["overall_metrics"]
    # mentions: dog, dog, cat (hallucinated) -> CHAIRi 1/3; CHAIRs 1/2; recall |{dog}| / (2 + 1)
    assert (out["CHAIRs"], out["CHAIRi"], out["Recall"], out["n_mentions"]) == (0.5, pytest.approx(1 / 3), 1 / 3, 3)
    assert analyse_caption("Nothing here.").words == ("nothing", "here", ".")


# ------------------------------------------------------------------ ground-truth builder
def _load_builder():
    import harness.cli.build_chair_gt as mod

    return mod


@pytest.fixture
def tiny_coco(tmp_path):
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 58, "name": "hot dog"},
            {"id": 70, "name": "toilet"}]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 18},
            {"id": 3, "image_id": 2, "category_id": 58}]
    caps = ["A man walks two dogs past a fire hydrant.", "Two puppies sitting at a table.",
            "Hot dogs on a plate next to a cup of coffee.", "The seat of the toilet is up.",
            "A baby elephant in a zoo."]
    capanns = [{"id": 10 + k, "image_id": 1 if k < 2 else 2, "caption": c} for k, c in enumerate(caps)]
    inst, capf = tmp_path / "instances_val2014.json", tmp_path / "captions_val2014.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    capf.write_text(json.dumps({"images": images[:2], "annotations": capanns}))
    return inst, capf


def test_build_chair_gt_lemma_pos(tiny_coco, tmp_path):
    inst, capf = tiny_coco
    out = tmp_path / "gt.json"
    assert _load_builder().main(["--instances", str(inst), "--captions", str(capf), "--out", str(out)]) == 0
    gt = json.loads(out.read_text())
    # man -> person, dogs/puppies -> dog, 'fire hydrant' merged, table -> dining table; 'hot dogs' merged;
    # 'seat' dropped next to 'toilet' (no chair); 'baby elephant' -> elephant (no person); image 3: nothing
    assert gt == {"1": ["dining table", "dog", "fire hydrant", "person"],
                  "2": ["cup", "elephant", "hot dog", "toilet"], "3": []}
    b = ChairBenchmark({"ground_truth": str(out), "image_set": "damro500"})
    res = b.score([{"image_id": 2, "caption": "A hot dog and a person."}])
    assert res["CHAIRs"] == 100.0 and res["CHAIRi"] == 50.0 and res["n_outside_image_set"] == 1


def test_build_chair_gt_singularize(tiny_coco, monkeypatch):
    inst, capf = tiny_coco
    mod = _load_builder()
    naive = lambda w: w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w  # noqa: E731
    gt = mod.build_ground_truth([inst], [capf], "singularize", singularize=naive)
    # 'puppies' -> 'puppie' matches nothing, 'dogs' -> 'dog' still does
    assert gt == {1: ["dining table", "dog", "fire hydrant", "person"], 2: ["cup", "elephant", "hot dog", "toilet"],
                  3: []}
    monkeypatch.setitem(sys.modules, "pattern", None)
    monkeypatch.setitem(sys.modules, "pattern.en", None)
    monkeypatch.setitem(sys.modules, "inflect", None)
    with pytest.raises(SystemExit, match="pattern"):
        mod.main(["--instances", str(inst), "--captions", str(capf), "--variant", "singularize", "--out", "x.json"])
