"""POPE: items from every shipped file, the three reference parsers, id joining and answer formats."""
from __future__ import annotations

import json

import pytest

from benchmarks.base import AnswerMismatchError
from benchmarks.pope import POPE, question_file_path, split_llava_combined_id
from benchmarks.yes_no import binary_metrics, parse_llava, parse_startswith, parse_substring
from harness.records import MalformedRecordError
from harness.registry import BENCHMARKS

# (answer, label) with the prediction each reference scorer makes, worked out by hand
HAND = [
    ("Yes", "yes"),
    ("No", "no"),
    ("Yes, there is no dog.", "no"),
    ("There is a dog in the image.", "yes"),
    ("", "no"),
    ("I don't know", "yes"),
    ("NO", "no"),
    ("not sure. yes", "yes"),
    ("  yes  ", "yes"),
    ("Yes\nThere is no cat", "no"),
]
# parser -> (tp, fp, tn, fn, unparsed)
EXPECTED = {
    "llava": (4, 2, 3, 1, 4),  # 'NO' and '' count as yes; 'not sure.' is a no; first sentence only
    "substring": (3, 1, 4, 2, 2),  # 'know' holds 'no'; both-substring answers are always right
    "startswith": (2, 2, 3, 3, 3),  # anything not starting with 'yes' is no
}
PARSE = {"llava": parse_llava, "substring": parse_substring, "startswith": parse_startswith}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def hand_questions(tmp_path):
    rows = [{"question_id": i + 1, "image": f"img{i // 2}.jpg", "text": f"Is there a thing {i}?", "label": lab}
            for i, (_, lab) in enumerate(HAND)]
    return write_jsonl(tmp_path / "hand_pope.jsonl", rows)


@pytest.mark.parametrize("parser", sorted(EXPECTED))
def test_parsers_on_hand_written_answers(parser, hand_questions):
    bench = POPE({"question_file": str(hand_questions), "parser": parser})
    records = [{"question_id": i + 1, "answer": a} for i, (a, _) in enumerate(HAND)]
    s = bench.score(records)
    tp, fp, tn, fn, unparsed = EXPECTED[parser]
    assert (s["tp"], s["fp"], s["tn"], s["fn"], s["unparsed"]) == (tp, fp, tn, fn, unparsed)
    assert s["n"] == len(HAND)
    assert s["accuracy"] == pytest.approx(100 * (tp + tn) / len(HAND))
    assert s["yes_ratio"] == pytest.approx(100 * (tp + fp) / len(HAND))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert s["precision"] == pytest.approx(100 * p)
    assert s["recall"] == pytest.approx(100 * r)
    assert s["f1"] == pytest.approx(100 * 2 * p * r / (p + r))
    if parser == "substring":
        assert s["ambiguous"] == 3  # "Yes, there is no dog.", "not sure. yes", "Yes\nThere is no cat"


def test_parser_details():
    assert parse_llava("Yes, there is no dog.").pred == "no"
    assert parse_llava("No.").pred == "no" and not parse_llava("No.").unparsed
    assert parse_llava("").pred == "yes" and parse_llava("").unparsed
    assert parse_substring("snow", "no").pred == "no"  # substring quirk, as in VCD/DAMRO
    assert parse_substring("maybe", "yes").pred == "no" and parse_substring("maybe", "no").pred == "yes"
    assert parse_startswith("Yes.").pred == "yes" and parse_startswith("No").pred == "no"
    assert parse_startswith("There is").unparsed
    m = binary_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 50.0


COMBOS = [("coco", "current"), ("coco", "2023-08"), ("aokvqa", "current"), ("gqa", "current")]


@pytest.mark.parametrize("dataset,version", COMBOS)
def test_labels_as_answers_score_100_everywhere(dataset, version):
    bench = POPE({"dataset": dataset, "version": version, "split": "all"})
    items = bench.items()
    ids = [it.question_id for it in items]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and "/" in i for i in ids)
    records = [{"question_id": it.question_id, "answer": it.meta["label"].capitalize()} for it in items]
    for parser in ("llava", "substring", "startswith"):
        bench.cfg["parser"] = parser
        s = bench.score(records)
        for split in ("random", "popular", "adversarial"):
            expected_n = 2910 if (version == "2023-08" and split == "random") else 3000
            sp = s[split]
            assert sp["n"] == expected_n and sp["tp"] == 1500 and sp["tn"] == expected_n - 1500
            assert sp["accuracy"] == 100.0 and sp["f1"] == 100.0 and sp["unparsed"] == 0
        assert s["mean_accuracy"] == 100.0 and s["accuracy"] == 100.0
        assert s["n"] == len(items)


def test_single_split_headline_keys_and_items(tmp_path):
    bench = POPE({"split": "popular", "prompt_suffix": "\nAnswer the question using a single word or phrase.",
                  "image_root": str(tmp_path), "limit": 12})
    items = bench.items()
    assert len(items) == 12 and items[0].question_id == 1
    assert items[0].prompt == "Is there a snowboard in the image?\nAnswer the question using a single word or phrase."
    assert items[0].image_path == str(tmp_path / "COCO_val2014_000000310196.jpg")
    assert items[0].meta == {"label": "yes", "split": "popular"}
    s = bench.score([{"question_id": it.question_id, "answer": "Yes"} for it in items])
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert key in s
    assert s["yes_ratio"] == 100.0
    assert POPE().items()[0].image_path is None
    assert BENCHMARKS.get("pope") is POPE and POPE.task == "yes_no"


def test_missing_unknown_and_duplicate_ids(hand_questions):
    bench = POPE({"question_file": str(hand_questions)})
    records = [{"question_id": i + 1, "answer": "yes"} for i in range(len(HAND))]
    with pytest.raises(AnswerMismatchError, match="missing 1: 4"):
        bench.score(records[:3] + records[4:])
    with pytest.raises(AnswerMismatchError, match="unknown 1: 99"):
        bench.score(records + [{"question_id": 99, "answer": "no"}])
    with pytest.raises(ValueError, match="duplicate"):
        bench.score(records + [{"question_id": "2", "answer": "no"}])
    assert bench.score([{**r, "question_id": str(r["question_id"])} for r in records])["n"] == len(HAND)


def test_malformed_answer_line_names_line(tmp_path, hand_questions):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": \n', encoding="utf-8")
    with pytest.raises(MalformedRecordError, match="line 2"):
        POPE({"question_file": str(hand_questions)}).load_answers(path)


@pytest.mark.parametrize("key", ["answer", "text", "output", "response"])  # ours, LLaVA/VCD, DAMRO, LVLM-LP
def test_other_tools_answer_files(tmp_path, hand_questions, key):
    rows = [{"question_id": i + 1, key: lab.capitalize(), "prompt": "Is there ...?"}
            for i, (_, lab) in enumerate(HAND)]
    bench = POPE({"question_file": str(hand_questions)})
    s = bench.score(bench.load_answers(write_jsonl(tmp_path / "a.jsonl", rows)))
    assert s["accuracy"] == 100.0


def test_split_all_id_mappings():
    bench = POPE({"split": "all", "version": "2023-08", "limit": 6})
    items = bench.items()
    # LVLM-LP style: raw ids plus a category field
    lvlm = [{"question_id": int(it.question_id.split("/")[1]), "category": it.meta["split"],
             "answer": it.meta["label"]} for it in items]
    assert bench.score(lvlm)["accuracy"] == 100.0
    # LLaVA's combined llava_pope_test.jsonl ids
    offset = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
    llava = [{"question_id": offset[it.meta["split"]] + int(it.question_id.split("/")[1]),
              "answer": it.meta["label"]} for it in items]
    combined = POPE({"split": "all", "version": "2023-08", "limit": 6, "llava_combined_ids": True})
    assert combined.score(llava)["accuracy"] == 100.0
    one = POPE({"split": "random", "version": "2023-08", "limit": 6, "llava_combined_ids": True})
    assert one.score(llava)["n"] == 6  # the other splits' answers are ignored
    assert split_llava_combined_id(20000011) == ("popular", 11)
    with pytest.raises(ValueError):
        split_llava_combined_id(30000001)


def test_config_validation():
    with pytest.raises(ValueError, match="only for dataset coco"):
        POPE({"dataset": "gqa", "version": "2023-08"})
    with pytest.raises(ValueError, match="benchmark.parser: expected one of llava, .*got 'regex'"):
        POPE({"parser": "regex"})
    with pytest.raises(ValueError, match="benchmark.split: expected one of .*got 'hard'"):
        POPE({"split": "hard"})
    assert question_file_path("aokvqa", "random").exists()


def test_mismatch_hints_name_the_fitting_version_and_combined_ids():
    import json as _json

    from benchmarks.base import AnswerMismatchError, DATA_DIR as _D
    from benchmarks.pope import POPE as _POPE

    rows = [_json.loads(l) for l in (_D / "pope/coco_2023-08_llava_opera/coco_pope_random.json").read_text().splitlines()]
    recs = [{"question_id": r["question_id"], "answer": "Yes"} for r in rows]
    with pytest.raises(AnswerMismatchError, match="benchmark.version=2023-08"):
        _POPE({"split": "random"}).score(recs)
    combined = [{"question_id": 10_000_000 + r["question_id"], "answer": "Yes"} for r in rows]
    with pytest.raises(AnswerMismatchError, match="llava_combined_ids=true"):
        _POPE({"split": "random", "version": "2023-08", "llava_combined_ids": False}).score(combined)
    auto = _POPE({"split": "random", "version": "2023-08"}).score(combined)  # auto-detected
    assert auto["n"] == 2910 and auto["id_format"] == "llava_combined"
    with pytest.raises(AnswerMismatchError, match="benchmark.version=2023-08"):
        _POPE({"split": "random"}).score(combined)  # LLaVA's file answers the 2023-08 questions
    other = [{"question_id": r["question_id"], "answer": "No", "category": "popular"} for r in rows]
    got = _POPE({"split": "random", "version": "2023-08"}).score(recs + other)
    assert got["n"] == 2910 and got["yes_ratio"] == 100.0
