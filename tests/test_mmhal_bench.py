"""MMHal-Bench: items, the verbatim judge prompt, and ratings from a fake judge against hand-computed metrics."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from benchmarks.base import DATA_DIR
from benchmarks.mmhal_bench import TYPES, MMHalBench, parse_rating
from fake_judge import KEY, KEY_ENV, FakeServer, chat_reply, prompt_text

# Ratings the fake judge gives to the first 16 questions (two of each type); None: never readable.
RATINGS = [6, 2, 5, 0, 4, 3, 1, 6, 5, 5, 2, None, 3, 4, 0, 6]


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)

    def respond(req, n):
        i = int(re.search(r"LMM Response to Evaluate\n\[answer (\d+)\]", prompt_text(req)).group(1))
        r = RATINGS[i]
        text = ("The response says Rating: 2 then rating: 5." if r is None else
                f"The response is fine.\n- Rating: {r}, as explained.")
        return 200, {}, chat_reply(text), 0.0

    s = FakeServer(respond).start()
    yield s
    s.stop()


def bench(server, tmp_path, **kw):
    return MMHalBench({"limit": 16, "judge": {"base_url": server.base_url, "api_key_env": KEY_ENV, "progress": False,
                                              "parse_retries": 1, "cache_dir": str(tmp_path / "cache")}, **kw})


def answers(n=16):
    return [{"question_id": i, "answer": f"[answer {i}] There is a cat."} for i in range(n)]


def test_items_and_prompt():
    items = MMHalBench({"image_root": "/mmhal/images"}).items()
    assert len(items) == 96 and [it.question_id for it in items[:3]] == [0, 1, 2]
    assert [it.meta["question_type"] for it in items] == [TYPES[i % 8] for i in range(96)]
    assert items[0].image_path == "/mmhal/images/7206072054_c53d53b97d_o.jpg"
    # judge_prompt.txt = LLaVA-RLHF's eval_gpt_mmhal.py template with its four {} slots named
    prompt = MMHalBench({}).load_prompt()
    original = prompt.text
    for name in ("image_content", "question", "gt_answer", "model_answer"):
        original = original.replace("{" + name + "}", "{}")
    assert hashlib.sha256(original.encode()).hexdigest().startswith("2c73d8c50f1740d0")
    it = items[0]
    assert prompt.render(image_content="Fire hydrant", question=it.prompt, gt_answer=it.meta["gt_answer"],
                         model_answer="Yellow.") == original.format("Fire hydrant", it.prompt, it.meta["gt_answer"],
                                                                    "Yellow.")


@pytest.mark.parametrize("reply,rating", [("Rating: 6, very informative", 6), ("...\n- rating: 0", 0),
                                          ("RATING: 3", 3)])
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize("reply", ["Rating: 2 and Rating: 4", "Score 5", "Rating: 7", ""])
def test_parse_rating_rejects(reply):
    from harness.judge import ReplyParseError

    with pytest.raises(ReplyParseError):
        parse_rating(reply)


def test_scores_hand_computed_and_cached(server, tmp_path):
    b = bench(server, tmp_path)
    s = b.score(answers())
    # sum 52 / 16; rated < 3: items 1, 3, 6, 10, 11 (unreadable -> 0, as the reference), 14
    assert s["average_score"] == pytest.approx(52 / 16) and s["hallucination_rate"] == pytest.approx(6 / 16)
    assert s["by_type"] == {"attribute": 5.5, "adversarial": 3.5, "comparison": 3.5, "counting": 0.0,
                            "relation": 3.5, "environment": 3.5, "holistic": 0.5, "other": 6.0}
    assert s["informativeness"] == pytest.approx(100 * 22 / 16 / 3)
    j = s["judge"]
    assert (j["requests"], j["api_calls"], j["parse_failures"], j["request_failures"]) == (16, 17, 1, 0)
    assert j["id"].startswith("gpt-4-0314@") and j["prompt_sha256"].startswith("2052a6a8")
    body = server.hits[0]["body"]
    assert body["model"] == "gpt-4-0314" and body["temperature"] == 0.0 and isinstance(body["messages"][0]["content"], str)
    assert [d["rating"] for d in s["judgments"]][:4] == [6, 2, 5, 0]
    again = bench(server, tmp_path).score(answers())
    assert again["judge"]["api_calls"] == 0 and again["average_score"] == s["average_score"] and len(server.hits) == 17


def test_unreadable_left_out_when_configured(server, tmp_path):
    s = bench(server, tmp_path, unparsed_rating=None).score(answers())
    assert s["n"] == 15 and s["average_score"] == pytest.approx(52 / 15)
    assert s["hallucination_rate"] == pytest.approx(5 / 15)


def test_reference_response_file(server, tmp_path):
    rows = json.loads((DATA_DIR / "mmhal_bench" / "response_template.json").read_text())[:16]
    for i, r in enumerate(rows):
        r["model_answer"] = f"[answer {i}] A reply."
    f = tmp_path / "response.json"
    f.write_text(json.dumps(rows))
    b = bench(server, tmp_path)
    assert b.score(b.load_answers(f))["average_score"] == pytest.approx(52 / 16)
    rows[1], rows[2] = rows[2], rows[1]
    f.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="record 2: question .* is not question 1"):
        b.load_answers(f)
