"""Object HalBench: vocabulary, object lists, and metrics from a fake judge's extractions, computed by hand."""
from __future__ import annotations

import hashlib
import re

import pytest

from benchmarks.base import AnswerMismatchError, DATA_DIR
from benchmarks.object_halbench import ObjectHalBench
from benchmarks.object_halbench_metric import object_vocab, objects_from_list, parse_object_list
from fake_judge import KEY, KEY_ENV, FakeServer, chat_reply, prompt_text

# What the fake judge extracts per response marker; None: never a JSON list.
EXTRACTED = {0: '["toilet", "sink", "bathtub", "towel", "toilet seat"]',
             1: 'Objects:\n["man", "skis", "dog", "snow"]',
             2: '["woman", "girl", "sandwich", "cake", "table"]',
             3: None}
TEXTS = {0: "[r0] A clean bathroom with a toilet, a sink and a bathtub.",
         1: "[r1] A man skis down a snowy slope with a dog.",
         2: "[r2] Two women eat a sandwich and cake at a table.",
         3: "[r3] Surfers fly kites on the beach today.",
         4: "Assistant: A beach.  "}  # <= 3 words once "Assistant:" is removed: no request


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)

    def respond(req, n):
        i = int(re.search(r"\[r(\d)\]", prompt_text(req)).group(1))
        return 200, {}, chat_reply(EXTRACTED[i] or "I cannot list objects."), 0.0

    s = FakeServer(respond).start()
    yield s
    s.stop()


def bench(server=None, tmp_path=None, **kw):
    judge = ({"base_url": server.base_url, "api_key_env": KEY_ENV, "progress": False, "parse_retries": 1,
              "cache_dir": str(tmp_path / "cache")} if server else {})
    return ObjectHalBench({"limit": 5, "judge": judge, **kw})


def answers():
    return [{"question_id": i, "answer": t} for i, t in TEXTS.items()]


def test_items_vocab_and_prompt(tmp_path):
    items = ObjectHalBench({}).items()
    assert len(items) == 300 and [it.question_id for it in items[:2]] == [0, 1]
    assert len({it.meta["image_id"] for it in items}) == 300
    (tmp_path / "COCO_train2014_000000339761.jpg").write_bytes(b"x")
    rooted = ObjectHalBench({"image_root": str(tmp_path), "limit": 2}).items()
    assert rooted[0].image_path == str(tmp_path / "COCO_train2014_000000339761.jpg")  # the existing split wins
    assert rooted[1].image_path == str(tmp_path / "COCO_val2014_000000431256.jpg")
    v = object_vocab("refine")
    assert len(set(v.inverse_synonym_dict.values())) == 80 and v.double_word_dict["toilet seat"] == "toilet"
    assert v.inverse_synonym_dict["coffee table"] == "dining table"  # a refine-only synonym
    text = (DATA_DIR / "object_halbench" / "gpt_object_extraction_prompt.txt").read_bytes()
    assert hashlib.sha256(text).hexdigest().startswith("9d732f9b73a3cc96")  # == the reference's prompt_template


def test_object_lists():
    v = object_vocab("refine")
    assert objects_from_list(["red car", "coffee cup", "hot dog"], v) == [("car", "car"), ("hot dog", "hot dog")]
    assert objects_from_list(["toilet", "seat", "toilet seat"], v) == [("toilet", "toilet")]
    assert objects_from_list(["man", "woman", "dogs", "man"], v) == [("man", "person"), ("woman", "person"),
                                                                     ("dog", "dog")]
    assert parse_object_list('["a", "b"]') == ["a", "b"]
    assert parse_object_list('Sure:\n["cat"]') == ["cat"]
    for bad in ("cat, dog", '{"a": 1}', "[1, 2"):
        with pytest.raises(ValueError):
            parse_object_list(bad)


def test_judge_extraction_hand_computed_and_cached(server, tmp_path):
    s = bench(server, tmp_path).score(answers())
    # r0: toilet, sink (GT 6 objects) | r1: person, skis, dog* (GT 3) | r2: person x2, sandwich, cake*, dining
    # table (GT 6) | r3: never parsed, left out | r4: short, no objects (GT 7 objects)
    assert (s["n"], s["n_with_objects"], s["n_mentions"], s["n_hallucinated"], s["n_gt_objects"]) == (4, 3, 10, 2, 22)
    assert s["response_hall"] == pytest.approx(200 / 3) and s["object_hall"] == pytest.approx(20.0)
    assert s["object_recall"] == pytest.approx(100 * 7 / 22) and s["CHAIRs"] == pytest.approx(50.0)
    assert s["object_f1"] == pytest.approx(2 * (700 / 22) * 80 / (700 / 22 + 80))
    j = s["judge"]
    assert (j["requests"], j["api_calls"], j["parse_failures"]) == (4, 5, 1)  # r3 asked twice, r4 never
    body = next(h["body"] for h in server.hits if "[r0]" in prompt_text(h["body"]))
    assert body["messages"][0]["role"] == "system" and body["model"] == "gpt-3.5-turbo-0613"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 1.0, 512)
    assert ("<image> Provide a thorough description of the given image.\n\n[End of Question]\n\n"
            "[Start of Examiner's Answer]\n\n[r0] A clean bathroom") in body["messages"][0]["content"]
    again = bench(server, tmp_path).score(answers())
    assert again["judge"]["api_calls"] == 0 and again["object_recall"] == s["object_recall"]
    assert len(server.hits) == 5


def test_chair_extractor_needs_no_judge(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    b = bench(extractor="chair", limit=2)
    s = b.score([{"question_id": 0, "answer": "A toilet next to a sink and a dog."},
                 {"question_id": 1, "answer": "A man on skis."}])
    # toilet, sink, dog* (GT 6) | person, skis (GT 3)
    assert (s["n_mentions"], s["n_hallucinated"]) == (5, 1)
    assert s["response_hall"] == 50.0 and s["object_hall"] == 20.0 and s["object_recall"] == pytest.approx(400 / 9)
    assert s["judge"]["requests"] == 0 and b.label() == "object_halbench/lemma_pos/refine/extractor=chair"


def test_answer_files_by_image_id(tmp_path):
    b = bench(extractor="chair", limit=2)
    f = tmp_path / "a.jsonl"
    f.write_text('{"metainfos": {"image_id": 431256}, "answer": "A man."}\n{"image_id": 339761, "text": "A sink."}\n')
    got = b.load_answers(f)
    assert [(r["question_id"], r["answer"]) for r in got] == [(1, "A man."), (0, "A sink.")]
    f.write_text('{"image_id": 12345, "text": "x"}\n')
    with pytest.raises(AnswerMismatchError, match="unknown 1: 12345"):
        b.load_answers(f)
