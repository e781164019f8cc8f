"""The gpt4v_aided benchmark and the pairwise judge, against a real local chat-completions server."""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.base import AnswerMismatchError
from benchmarks.gpt4v_aided import GPT4VAided, load_judge_prompt
from harness.judge import (ChatClient, JudgeHTTPError, RetriesExhaustedError, parse_scores, run_judge)
from harness.judge.pairwise import ScoreParseError

from fake_judge import KEY, KEY_ENV, FakeServer

ROOT = Path(__file__).resolve().parents[1]
IMG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\x00\x01\x02"  # any bytes: the server only checks the base64


def prompt_of(body: dict) -> str:
    return body["messages"][0]["content"][0]["text"]


def assistants(body: dict) -> tuple[str, str]:
    p = prompt_of(body)
    return (re.search(r"\[Assistant 1\]\n(.*)\n\[End of Assistant 1\]", p, re.S).group(1),
            re.search(r"\[Assistant 2\]\n(.*)\n\[End of Assistant 2\]", p, re.S).group(1))


# Base scores (accuracy, detailedness) per system; the fake judge adds +1 to Assistant 1.
BASE = {"alpha": (8, 6), "beta": (5, 7)}
DETAIL_BASE = {"alpha": (4, 9), "beta": (7, 3)}


def base_scores(answer: str) -> tuple[int, int]:
    system, qid = answer.split(" ", 1)
    return (DETAIL_BASE if qid.endswith("_detail") else BASE)[system]


def judge_reply(body: dict, fmt: str = "Accuracy: {} {}\nReason: fine.\n\nDetailedness: {} {}\nReason: ok.") -> str:
    a1, a2 = assistants(body)
    (acc1, det1), (acc2, det2) = base_scores(a1), base_scores(a2)
    text = fmt.format(acc1 + 1, acc2, det1 + 1, det2)
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})


def ok(req, n):
    return 200, {}, judge_reply(req), 0.0


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    s = FakeServer(lambda req, n: (200, {}, judge_reply(req), 0.0)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def items():
    return GPT4VAided({}).items()


def write_answers(path: Path, items, system: str) -> Path:
    path.write_text("".join(json.dumps({"question_id": it.question_id, "answer": f"{system} {it.question_id}"}) + "\n"
                            for it in items))
    return path


@pytest.fixture
def setup(tmp_path, items, server):
    """Six questions (2 images x 3 types), fake images, and a judge config pointed at the server."""
    sub = items[:6]
    imgs = tmp_path / "coco"
    imgs.mkdir()
    for it in sub:
        (imgs / it.meta["image"]).write_bytes(IMG)
    cfg = {"answers_a": str(write_answers(tmp_path / "a.jsonl", sub, "alpha")),
           "answers_b": str(write_answers(tmp_path / "b.jsonl", sub, "beta")),
           "names": ["alpha", "beta"], "image_root": str(imgs), "base_url": server.base_url,
           "api_key_env": KEY_ENV, "timeout_s": 10, "max_retries": 3, "backoff_base_s": 0.01,
           "backoff_max_s": 0.05, "concurrency": 4, "parse_retries": 2, "progress": False,
           "cache_dir": str(tmp_path / "cache"), "out_dir": str(tmp_path / "out")}
    return cfg, sub


def client(server, **kw) -> ChatClient:
    return ChatClient(**{"base_url": server.base_url, "api_key_env": KEY_ENV, "timeout_s": 0.3, "max_retries": 3,
                         "backoff_base_s": 0.01, "backoff_max_s": 0.5, **kw})


MSG = [{"role": "user", "content": [{"type": "text", "text": "[Assistant 1]\nalpha x\n[End of Assistant 1]\n"
                                                               "[Assistant 2]\nbeta x\n[End of Assistant 2]"}]}]


# ---------------------------------------------------------------- benchmark


def test_items_are_90_unique_ids(items):
    ids = [it.question_id for it in items]
    assert len(ids) == 90 and len(set(ids)) == 90
    assert ids[0] == "000000525439_conv"
    assert all(re.fullmatch(r"\d{12}_(conv|detail|complex)", i) for i in ids)
    assert sorted({it.meta["type"] for it in items}) == ["complex", "conv", "detail"]
    assert all(it.image_id == it.meta["image"] and it.image_path is None for it in items)
    rooted = GPT4VAided({"image_root": "/coco/val2014"}).items()
    assert rooted[0].image_path == "/coco/val2014/COCO_val2014_000000525439.jpg"
    assert GPT4VAided({"limit": 5}).items() == items[:5]
    assert GPT4VAided({}).score([{"question_id": ids[0], "answer": "x"}]) == {
        "n": 1, "note": "judge with halluc-bench-judge"}


def test_judge_prompt_verbatim():
    p = load_judge_prompt()
    assert len(p) == 1403 and p.startswith("\nYou are") and p.endswith("Reason: \n")
    assert "hallucinationsshould" in p and p.count("{}") == 2


def test_damro_answer_format(tmp_path, items):
    recs = [{"id": it.question_id.split("_")[0], "prompt": it.prompt, "output": f"o{i}", "image": it.meta["image"]}
            for i, it in enumerate(items[:3])]
    p = tmp_path / "damro.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    got = GPT4VAided({}).load_answers(p)
    assert [r["question_id"] for r in got] == [it.question_id for it in items[:3]]
    assert [r["answer"] for r in got] == ["o0", "o1", "o2"]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text,acc,det", [
    ("Accuracy: 8 7\nReason: x\n\nDetailedness: 6 5\nReason: y", (8, 7), (6, 5)),
    ("**Accuracy:** 8 7\n**Reason:** x\n**Detailedness:** 6 5", (8, 7), (6, 5)),
    ("Accuracy: 8, 7\nDetailedness: 10, 9", (8, 7), (10, 9)),
    ("**Accuracy**: 8/10 7/10\nReason:\n**Detailedness**: 6.5 5", (8, 7), (6.5, 5)),
    ("accuracy: 3 and 4\ndetailedness: [2, 1]", (3, 4), (2, 1)),
])
def test_parse_scores_tolerant(text, acc, det):
    assert parse_scores(text) == {"accuracy": acc, "detailedness": det}


@pytest.mark.parametrize("text", ["I cannot see the image.", "Accuracy: 8\nDetailedness: 6 5",
                                  "Accuracy: 87\nDetailedness: 6 5", "Accuracy: 0 11\nDetailedness: 6 5",
                                  "Accuracy: 8 7\nDetailedness: 6 5\nAccuracy: 2 3", ""])
def test_parse_scores_rejects(text):
    with pytest.raises(ScoreParseError):
        parse_scores(text)


# ---------------------------------------------------------------- client


def test_client_retries_429_with_and_without_retry_after(server):
    waits = []
    script = [(429, {"Retry-After": "0.07"}), (429, {}), (429, {"Retry-After": "0"})]
    server.respond = lambda req, n: (*script[n], '{"error": {"message": "slow down"}}', 0.0) if n < 3 else ok(req, n)
    done = client(server, sleep=waits.append).complete(MSG)
    assert done.text.startswith("Accuracy: 9 5") and done.requests == 4
    assert len(server.hits) == 4
    assert waits[0] == pytest.approx(0.07) and waits[2] == 0.0
    assert 0.02 <= waits[1] <= 0.02 * 1.25 + 1e-9  # backoff_base_s * 2**1, plus at most 25% jitter
    h = server.hits[0]
    assert h["path"] == "/v1/chat/completions" and h["headers"]["Authorization"] == f"Bearer {KEY}"
    assert h["body"]["model"] == "gpt-4o-2024-05-13" and h["body"]["max_tokens"] == 300
    assert h["body"]["temperature"] == 0


def test_client_persistent_500_is_bounded(server):
    server.respond = lambda req, n: (500, {}, "internal error", 0.0)
    with pytest.raises(RetriesExhaustedError, match=r"4 attempts.*HTTP 500.*internal error"):
        client(server).complete(MSG)
    assert len(server.hits) == 4  # 1 + max_retries


def test_client_timeout_then_success(server):
    server.respond = lambda req, n: (*ok(req, n)[:3], 1.0 if n == 0 else 0.0)
    t0 = time.monotonic()
    assert "Accuracy" in client(server).complete(MSG).text
    assert len(server.hits) == 2 and time.monotonic() - t0 < 1.0


def test_client_retries_unreadable_200(server):
    server.respond = lambda req, n: (200, {}, "<html>bad gateway</html>", 0.0) if n == 0 else ok(req, n)
    assert "Accuracy" in client(server).complete(MSG).text and len(server.hits) == 2


def test_client_4xx_fails_fast_without_key(server):
    # A server that echoes the key in its error body: the key must still not reach the message.
    # The key sits across the 300-character cut of the message: redaction must come first.
    msg = "bad request" + "." * 280 + f" key {KEY}"
    server.respond = lambda req, n: (400, {}, json.dumps({"error": {"message": msg}}), 0.0)
    with pytest.raises(JudgeHTTPError) as e:
        client(server).complete(MSG)
    assert e.value.status == 400 and "HTTP 400" in str(e.value) and "bad request" in str(e.value)
    assert "sk-test" not in str(e.value) and len(server.hits) == 1


def test_client_connection_refused_is_retried(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(KEY_ENV, KEY)
    waits = []
    c = ChatClient(base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, max_retries=2,
                   backoff_base_s=0.01, sleep=waits.append)
    with pytest.raises(RetriesExhaustedError, match="3 attempts"):
        c.complete(MSG)
    assert len(waits) == 2


# ---------------------------------------------------------------- pairwise runs


def test_scores_averaged_over_both_orders_and_cached(setup, server, monkeypatch):
    cfg, sub = setup
    scores = run_judge(cfg)
    assert len(server.hits) == 12 and scores["api_calls"] == 12
    # Hand-computed: Assistant 1 gets +1; averaging (A,B) and (B,A) adds 0.5 to both systems.
    # conv/complex: alpha (8, 6), beta (5, 7); detail: alpha (4, 9), beta (7, 3); 4 + 2 questions.
    assert scores["by_type"]["conv"] == {"n": 2, "alpha": {"accuracy": 8.5, "detailedness": 6.5},
                                         "beta": {"accuracy": 5.5, "detailedness": 7.5}}
    assert scores["by_type"]["detail"]["alpha"] == {"accuracy": 4.5, "detailedness": 9.5}
    assert scores["overall"]["alpha"]["accuracy"] == pytest.approx((8.5 * 4 + 4.5 * 2) / 6, abs=1e-4)
    assert scores["overall"]["beta"]["detailedness"] == pytest.approx((7.5 * 4 + 3.5 * 2) / 6, abs=1e-4)
    assert scores["first_position_advantage"] == {"accuracy": 1.0, "detailedness": 1.0}
    assert scores["n_judged"] == 6 and scores["parse_failures"] == 0 and scores["failures"] == []
    out = Path(cfg["out_dir"])
    assert json.loads((out / "scores.json").read_text())["overall"] == scores["overall"]
    lines = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["order"]) for r in lines[:2]] == [(sub[0].question_id, "ab"),
                                                                   (sub[0].question_id, "ba")]
    assert lines[0]["raw"] == {"accuracy": [9, 5], "detailedness": [7, 7]} and lines[1]["raw"]["accuracy"] == [6, 8]
    # The image goes inline as a base64 data URL; both orders are asked for every question.
    part = server.hits[0]["body"]["messages"][0]["content"][1]
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == IMG
    q0 = sub[0].question_id
    assert {assistants(h["body"]) for h in server.hits} >= {(f"alpha {q0}", f"beta {q0}"), (f"beta {q0}", f"alpha {q0}")}
    # Rerun: every reply comes from the cache, so no request is made (and no key is needed).
    monkeypatch.delenv(KEY_ENV)
    again = run_judge({**cfg, "out_dir": cfg["out_dir"] + "2"})
    assert len(server.hits) == 12 and again["api_calls"] == 0
    assert again["overall"] == scores["overall"]


def test_persistent_500_fails_one_question_only(setup, server):
    cfg, sub = setup
    bad = sub[2].question_id
    server.respond = lambda req, n: (500, {}, "boom", 0.0) if bad in prompt_of(req) else ok(req, n)
    scores = run_judge(cfg)
    assert server.hits_for(bad) == 2 * (cfg["max_retries"] + 1)
    assert scores["n_questions"] == 6 and scores["n_judged"] == 5 and scores["request_failures"] == 2
    assert {(f["question_id"], f["status"]) for f in scores["failures"]} == {(bad, "request_failed")}
    assert all("HTTP 500" in f["reason"] for f in scores["failures"])
    assert scores["overall"]["alpha"]["accuracy"] == pytest.approx((8.5 * 3 + 4.5 * 2) / 5, abs=1e-4)


def test_malformed_replies_parse_retries_bounded(setup, server):
    cfg, sub = setup
    never, once = sub[0].question_id, sub[1].question_id
    seen: dict = {}

    def respond(req, n):
        p = prompt_of(req)
        if never in p:
            return 200, {}, json.dumps({"choices": [{"message": {"content": "Looks nice!"}}]}), 0.0
        if once in p and not seen.setdefault(assistants(req), False):
            seen[assistants(req)] = True
            return 200, {}, json.dumps({"choices": [{"message": {"content": "Accuracy: good"}}]}), 0.0
        if n % 5 == 0:
            return 200, {}, judge_reply(req, "**Accuracy:** {}, {}\n\n**Detailedness:** {} {}"), 0.0
        return ok(req, n)

    server.respond = respond
    scores = run_judge(cfg)
    assert server.hits_for(never) == 2 * (cfg["parse_retries"] + 1) and server.hits_for(once) == 4
    assert scores["parse_failures"] == 2 and scores["n_judged"] == 5
    assert {f["question_id"] for f in scores["failures"]} == {never}
    assert "Accuracy" in scores["failures"][0]["reason"]
    rec = [json.loads(x) for x in (Path(cfg["out_dir"]) / "judgments.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rec if r["question_id"] == never] == ["parse_failed"] * 2
    # Re-asks are cached too: a rerun reproduces the same outcome with no request.
    n = len(server.hits)
    assert run_judge(cfg)["failures"] == scores["failures"] and len(server.hits) == n


def test_mismatched_answer_files_fail_clearly(setup, server, tmp_path, items):
    cfg, sub = setup
    b = tmp_path / "b_bad.jsonl"
    write_answers(b, sub[1:] + [items[50]], "beta")
    with pytest.raises(AnswerMismatchError) as e:
        run_judge({**cfg, "answers_b": str(b)})
    msg = str(e.value)
    assert f"missing 1: {sub[0].question_id}" in msg and f"unknown 1: {items[50].question_id}" in msg
    assert server.hits == []


def test_fatal_401_stops_the_run(setup, server):
    cfg, _ = setup
    server.respond = lambda req, n: (401, {}, '{"error": {"message": "Incorrect API key"}}', 0.0)
    with pytest.raises(JudgeHTTPError, match="401"):
        run_judge({**cfg, "concurrency": 1})
    assert len(server.hits) == 1


def test_key_never_written_or_logged(setup, server, caplog, capsys):
    cfg, sub = setup
    flaky = sub[3].question_id
    server.respond = lambda req, n: ((429, {"Retry-After": "0"}, KEY, 0.0) if flaky in prompt_of(req) and n % 2
                                     else ok(req, n))
    caplog.set_level(logging.DEBUG)
    run_judge(cfg)
    assert all(h["headers"]["Authorization"] == f"Bearer {KEY}" for h in server.hits)
    files = [p for d in (cfg["out_dir"], cfg["cache_dir"]) for p in Path(d).rglob("*") if p.is_file()]
    assert len(files) > 12
    assert not [p for p in files if KEY in p.read_text(errors="replace")]
    cap = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in cap.out + cap.err


def test_hydra_script_end_to_end(setup, server, tmp_path):
    cfg, _ = setup
    out = tmp_path / "hydra_out"
    args = [f"judge.{k}={v}" for k, v in cfg.items() if k not in ("names", "out_dir")]
    args += ["judge.names=[alpha,beta]", f"hydra.run.dir={out}"]
    env = {**os.environ, KEY_ENV: KEY}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "judge_pairwise.py"), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n_judged"] == 6 and scores["api_calls"] == 12 and len(server.hits) == 12
    assert (out / "judgments.jsonl").exists() and (out / ".hydra" / "config.yaml").exists()
    leaked = [p for p in out.rglob("*") if p.is_file() and KEY in p.read_text(errors="replace")]
    assert not leaked and KEY not in r.stdout + r.stderr
    assert f"output directory: {out}" in r.stdout and "| overall" in r.stdout and "beta - alpha accuracy" in r.stdout
    assert set(scores["statistics"]["ci"]) == {"alpha.accuracy", "alpha.detailedness", "beta.accuracy",
                                               "beta.detailedness"}


def test_pairwise_statistics_ci_and_paired_difference():
    from harness.judge.stats import pairwise_statistics

    per_q = [{"a": {"accuracy": 6.0 + (i % 3), "detailedness": 5.0}, "b": {"accuracy": 8.0 + (i % 3), "detailedness": 5.0}}
             for i in range(30)]
    st = pairwise_statistics(per_q, ["a", "b"], n_resamples=500)
    lo, hi = st["ci"]["a.accuracy"]
    assert lo < 7.0 < hi and st["ci"]["a.detailedness"] == [5.0, 5.0]
    d = st["difference"]
    assert d["of"] == "b - a" and d["accuracy"]["diff"] == pytest.approx(2.0) and d["accuracy"]["ci"] == pytest.approx([2.0, 2.0])
    assert d["accuracy"]["p"] < 0.01 and d["detailedness"]["p"] == 1.0
    assert pairwise_statistics([], ["a", "b"]) == {}
