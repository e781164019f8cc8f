import json

import pytest

from harness.records import AnswerWriter, MalformedRecordError, done_ids, read_answers, read_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": \n{"question_id": 3, "text": "no"}\n')
    with pytest.raises(MalformedRecordError) as e:
        read_jsonl(p)
    assert str(p) in str(e.value) and "line 2" in str(e.value)


def test_partial_tail_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"question_id": 1, "answer": "a"}\n{"question_id": 2, "answ')
    assert done_ids(p) == {"1"}
    with pytest.raises(MalformedRecordError):
        read_jsonl(p)  # strict reading still refuses it
    with AnswerWriter(p) as w:  # reopening for append truncates the half line
        w.write_batch([{"question_id": 2, "answer": "b"}])
    assert [r["question_id"] for r in read_jsonl(p)] == [1, 2]


def test_read_answers_normalises_other_formats(tmp_path):
    p = tmp_path / "llava.jsonl"
    p.write_text(json.dumps({"question_id": 7, "prompt": "q", "text": "Yes"}) + "\n")
    assert read_answers(p)[0]["answer"] == "Yes"
    q = tmp_path / "caps.json"
    q.write_text(json.dumps([{"image_id": 42, "caption": "a dog"}]))
    rec = read_answers(q)[0]
    assert rec["question_id"] == 42 and rec["answer"] == "a dog"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1}) + "\n")
    with pytest.raises(MalformedRecordError, match="no answer field"):
        read_answers(bad)
