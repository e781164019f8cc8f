"""MME: rescoring the official tool's worked example and DAMRO's results, pairing by image, formats."""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.base import DATA_DIR, AnswerMismatchError
from benchmarks.mme import COGNITION, HALLUCINATION, MME, PERCEPTION, SUBTASKS
from benchmarks.yes_no import parse_mme
from harness.records import MalformedRecordError
from harness.registry import BENCHMARKS

TEST_DATA = Path(__file__).resolve().parent / "data"
REF = json.loads((TEST_DATA / "reference_values.json").read_text(encoding="utf-8"))["mme"]
LAVIN = TEST_DATA / "mme" / "LaVIN"
DAMRO = TEST_DATA / "mme" / "damro_results"
HALLU_KEY = "hallucination_subset_total(existence+count+position+color)"


def rescore(folder, cfg=None):
    bench = MME(cfg)
    return bench.score(bench.load_answers(folder), str(folder))


@pytest.mark.parametrize("folder,key", [(LAVIN, "mme/eval_tool/LaVIN"), (DAMRO, "mme/damro_results")])
def test_result_folders_match_reference_values(folder, key):
    ref = REF[key]
    s = rescore(folder)
    for subtask in SUBTASKS:
        for metric in ("acc", "acc_plus", "score"):
            assert round(s[subtask][metric], 2) == ref[subtask][metric], (subtask, metric)
    assert round(s["perception"], 2) == ref["perception_total"]
    assert round(s["cognition"], 2) == ref["cognition_total"]
    assert round(s["hallucination_total"], 2) == ref[HALLU_KEY]
    assert s["n"] == 2374 and s["missing_subtasks"] == [] and s["gt_disagreements"] == 0


def test_lavin_matches_published_leaderboard():
    pub = REF["mme/eval_tool/LaVIN"]["published"]
    s = rescore(LAVIN)
    for subtask in SUBTASKS:
        assert abs(s[subtask]["score"] - pub[subtask]) <= 0.01, subtask
    assert abs(s["leaderboard_totals"]["perception"] - pub["perception_total"]) <= 0.01
    assert abs(s["perception"] - pub["perception_total"]) <= 0.015  # 963.611 unrounded
    assert abs(s["cognition"] - pub["cognition_total"]) <= 0.01


def test_pairing_is_by_image_not_line_order(tmp_path):
    rng = random.Random(0)
    broken_pairs = 0
    for f in LAVIN.glob("*.txt"):
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        rng.shuffle(lines)
        broken_pairs += sum(lines[i].split("\t")[0] != lines[i + 1].split("\t")[0] for i in range(0, len(lines), 2))
        (tmp_path / f.name).write_text("".join(lines), encoding="utf-8")
    assert broken_pairs > 0  # line-order pairing would now be wrong
    orig, shuffled = rescore(LAVIN), rescore(tmp_path)
    for subtask in SUBTASKS:
        assert shuffled[subtask] == orig[subtask]
    assert shuffled["perception"] == pytest.approx(orig["perception"])


def test_partial_folders(tmp_path):
    for s in HALLUCINATION:
        shutil.copy(LAVIN / f"{s}.txt", tmp_path)
    s = rescore(tmp_path)
    assert s["subtasks_scored"] == list(HALLUCINATION)
    assert s["missing_subtasks"] == [x for x in SUBTASKS if x not in HALLUCINATION]
    assert round(s["hallucination_total"], 2) == 411.67
    assert s["perception"] is None and s["cognition"] is None  # only 4 of 10 perception subtasks
    assert s["partial_totals"] == {"perception": s["hallucination_total"]}
    assert round(rescore(tmp_path, {"subtasks": list(HALLUCINATION)})["hallucination_total"], 2) == 411.67
    with pytest.raises(AnswerMismatchError, match="missing 40: OCR"):  # a selected subtask is absent
        rescore(tmp_path, {"subtasks": ["existence", "OCR", "count", "position", "color"]})
    # a present subtask must be complete
    lines = (LAVIN / "count.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "count.txt").write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(AnswerMismatchError, match="missing 1"):
        rescore(tmp_path)


def test_result_folder_line_errors(tmp_path):
    lines = (LAVIN / "OCR.txt").read_text(encoding="utf-8").splitlines()
    img, q, gt, _ = lines[2].split("\t")
    lines[2] = "\t".join([img, q, gt])  # 3 columns
    (tmp_path / "OCR.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MalformedRecordError, match=r"OCR\.txt, line 3"):
        MME().load_answers(tmp_path)
    lines[2] = "\t".join([img, q, gt, ""])  # empty prediction: allowed, read as 'other'
    (tmp_path / "OCR.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = rescore(tmp_path, {"subtasks": ["OCR"]})
    assert s["OCR"]["unparsed"] == 1 and s["unparsed"] == 1
    lines[2] = "\t".join([img, q + " (changed)", gt, "yes"])  # a question that is not MME's
    (tmp_path / "OCR.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(AnswerMismatchError, match="unknown 1"):
        MME().load_answers(tmp_path)


def test_parse_mme_like_calculation_py():
    cases = {"Yes": "yes", "no.": "no", "Yes, there is": "yes", "No, yes": "no", " yes": "yes",
             "  yes": "other", "There is no": "other", "nope": "no", "know": "no", "": "other",
             "I don't know": "other", None: "other"}
    for answer, expected in cases.items():
        assert parse_mme(answer) == expected, answer


def test_hand_computed_scores_from_our_jsonl(tmp_path):
    bench = MME({"subtasks": list(HALLUCINATION)})
    items = bench.items()
    first_color = items[[it.meta["subtask"] for it in items].index("color")].question_id
    rows = []
    for it in items:
        sub, label = it.meta["subtask"], it.meta["label"]
        answer = {"existence": label.capitalize(), "count": "Yes", "position": "", "color": label}[sub]
        if it.question_id == first_color:
            answer = "no" if label == "yes" else "yes"
        rows.append({"question_id": it.question_id, "answer": answer})
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    s = bench.score(bench.load_answers(path))
    assert (s["existence"]["acc"], s["existence"]["acc_plus"]) == (100.0, 100.0)
    assert (s["count"]["acc"], s["count"]["acc_plus"]) == (50.0, 0.0)  # one yes and one no per image
    assert (s["position"]["score"], s["position"]["unparsed"]) == (0.0, 60)
    assert s["color"]["acc"] == pytest.approx(100 * 59 / 60)
    assert s["color"]["acc_plus"] == pytest.approx(100 * 29 / 30)
    assert s["hallucination_total"] == pytest.approx(200 + 50 + 0 + 100 * 59 / 60 + 100 * 29 / 30)
    assert s["unparsed"] == 60 and s["n"] == 240
    with pytest.raises(AnswerMismatchError, match="missing 1"):
        bench.score(rows[1:])
    with pytest.raises(ValueError, match="duplicate"):
        bench.score(rows + rows[:1])


def test_items_ids_and_prompts():
    items = MME().items()
    assert len(items) == 2374 and len({it.question_id for it in items}) == 2374
    assert Counter(it.meta["subtask"] for it in items)["posters"] == 294
    assert items[0].question_id == "existence/000000006040.jpg/0"
    # default prompts are LLaVA-1.5's / RITUAL's for the hallucination subset
    ritual = [json.loads(x) for x in (DATA_DIR / "mme" / "ritual_mme_hallucination.jsonl").read_text().splitlines()]
    ours = Counter((it.image_id, it.prompt) for it in items if it.meta["subtask"] in HALLUCINATION)
    assert ours == Counter((r["question_id"], r["text"]) for r in ritual)
    official = MME({"drop_yes_no_instruction": False, "prompt_suffix": ""}).items()
    assert official[0].prompt == "Is there a train in this image? Please answer yes or no."
    assert BENCHMARKS.get("mme") is MME and MME.task == "yes_no"
    assert set(PERCEPTION) | set(COGNITION) == set(SUBTASKS)


def test_image_paths_resolve_either_layout(tmp_path):
    (tmp_path / "existence").mkdir()
    (tmp_path / "existence" / "000000006040.jpg").write_bytes(b"x")
    (tmp_path / "color" / "images").mkdir(parents=True)
    (tmp_path / "color" / "images" / "000000338560.jpg").write_bytes(b"x")
    bench = MME({"root": str(tmp_path)})
    assert bench.image_path("existence", "000000006040.jpg") == str(tmp_path / "existence" / "000000006040.jpg")
    assert bench.image_path("color", "000000338560.jpg") == str(tmp_path / "color" / "images" / "000000338560.jpg")
    assert bench.image_path("artwork", "1.jpg") == str(tmp_path / "artwork" / "images" / "1.jpg")
    assert bench.image_path("OCR", "0001.jpg") == str(tmp_path / "OCR" / "0001.jpg")
    assert MME().image_path("OCR", "0001.jpg") is None


def test_llava_style_answers_are_joined_by_question(tmp_path):
    ritual = [json.loads(x) for x in (DATA_DIR / "mme" / "ritual_mme_hallucination.jsonl").read_text().splitlines()]
    rows = [{"question_id": r["question_id"], "prompt": r["text"], "text": "Yes"} for r in ritual]
    path = tmp_path / "llava_answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bench = MME({"subtasks": list(HALLUCINATION)})
    s = bench.score(bench.load_answers(path))
    assert s["n"] == 240
    for sub in HALLUCINATION:
        assert (s[sub]["acc"], s[sub]["acc_plus"]) == (50.0, 0.0)


def test_llava_full_answer_file_layout_scores_every_subtask(tmp_path):
    """LLaVA's published MME answers: ids "<subtask>/[images/]<image>", prompts with LLaVA's suffix."""
    from benchmarks.mme import IMAGES_SUBDIR, SUBTASKS, read_ground_truth

    rows = []
    for sub in SUBTASKS:
        for image, question, label in read_ground_truth(sub):
            folder = f"{sub}/images" if sub in IMAGES_SUBDIR else sub
            prompt = question.replace(" Please answer yes or no.", "").replace("Please answer yes or no.", "")
            rows.append({"question_id": f"{folder}/{image}",
                         "prompt": prompt.strip() + "\nAnswer the question using a single word or phrase.",
                         "text": label.capitalize(), "model_id": "llava-v1.5-13b", "metadata": {}})
    path = tmp_path / "llava-v1.5-13b.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bench = MME()
    s = bench.score(bench.load_answers(path))
    assert s["n"] == 2374 and s["missing_subtasks"] == []
    assert all(s[sub]["score"] == 200.0 for sub in SUBTASKS)
    assert round(s["perception"], 2) == 2000.0 and round(s["cognition"], 2) == 800.0


def test_subset_scores_a_full_answer_set_and_labels_itself():
    full = MME({"subtasks": list(HALLUCINATION)})
    s = full.score(full.load_answers(LAVIN))
    assert round(s["hallucination_total"], 2) == 411.67 and s["ignored_other_subtasks"] == 2374 - 240
    assert full.label() == "mme/hallucination" and MME().label() == "mme"
    assert MME({"subtasks": ["OCR"]}).label() == "mme/OCR"
