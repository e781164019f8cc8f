"""The judge layer: client deadlines and request counting, redaction, settings, prompts, engine and cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_judge import KEY, KEY_ENV, FakeServer, chat_reply, prompt_text
from harness.judge import (ChatClient, JudgeEngine, JudgeRequest, JudgeSettings, JudgeUnavailableError, Prompt,
                           ReplyCache, ReplyParseError, RetriesExhaustedError, run_judge)

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "Rate this."}]


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    s = FakeServer().start()
    yield s
    s.stop()


def client(server, **kw) -> ChatClient:
    return ChatClient(**{"base_url": server.base_url, "api_key_env": KEY_ENV, "timeout_s": 0.5, "max_retries": 2,
                         "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw})


def number(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ReplyParseError(f"not a number: {text!r}") from None


# ---------------------------------------------------------------- client


def test_trickling_server_cannot_hold_a_request_past_the_deadline(server):
    # Headers at once, then one byte every 0.2 s: a per-read timeout never fires; the total deadline does.
    server.respond = lambda req, n: (200, {}, chat_reply("x" * 40), 0.0, 0.2)
    c = client(server, timeout_s=0.6, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(RetriesExhaustedError, match="0.6 s deadline") as e:
        c.complete(MSG)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, elapsed  # 2 attempts x 0.6 s (+ backoff), not 40 bytes x 0.2 s x 2
    assert len(server.hits) == 2 and e.value.requests == 2 and c.requests_sent == 2


def test_requests_counted_with_retries(server):
    server.respond = lambda req, n: (503, {"Retry-After": "0"}, "busy", 0.0) if n < 2 else (200, {}, chat_reply("7"), 0.0)
    c = client(server)
    done = c.complete(MSG)
    assert done.text == "7" and done.requests == 3 and c.requests_sent == 3 == len(server.hits)


def test_no_key_sent_to_a_local_server_without_one(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    c = ChatClient(base_url=server.base_url, api_key_env=None, model="local", max_tokens=None, temperature=None)
    assert c.complete(MSG).text == "ok"
    hit = server.hits[0]
    assert "Authorization" not in hit["headers"]
    assert hit["body"] == {"model": "local", "messages": MSG}  # null sampling fields are not sent


def test_redirect_not_followed(server):
    server.respond = lambda req, n: (307, {"Location": "http://example.invalid/steal"}, "", 0.0)
    with pytest.raises(Exception, match="HTTP 307"):
        client(server).complete(MSG)
    assert len(server.hits) == 1


# ---------------------------------------------------------------- engine + cache


def test_engine_caches_redacted_replies_and_reruns_send_nothing(server, tmp_path):
    # The server echoes the key in its reply: it must be redacted before it is cached or returned.
    server.respond = lambda req, n: (200, {}, chat_reply(f"{prompt_text(req)[-1]} (key {KEY})"), 0.0)
    reqs = [JudgeRequest(f"q{i}", f"number {i}", lambda r: r.split(" ")[0]) for i in range(5)]
    engine = JudgeEngine(client(server), ReplyCache(tmp_path / "cache"), parse_retries=0, progress=False)
    out = engine.run(reqs)
    assert [o.value for o in out] == ["0", "1", "2", "3", "4"] and sum(o.api_calls for o in out) == 5
    assert all("***" in o.reply and KEY not in o.reply for o in out)
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5 and not [f for f in files if KEY in f.read_text()]
    again = JudgeEngine(client(server), ReplyCache(tmp_path / "cache"), parse_retries=0, progress=False).run(reqs)
    assert [o.value for o in again] == [o.value for o in out] and sum(o.api_calls for o in again) == 0
    assert len(server.hits) == 5


def test_engine_reasks_unparsable_and_counts_parse_failures(server, tmp_path):
    server.respond = lambda req, n: (200, {}, chat_reply("3" if "good" in prompt_text(req) and n >= 1 else "hmm"), 0.0)
    engine = JudgeEngine(client(server), ReplyCache(tmp_path / "c"), parse_retries=2, concurrency=1, progress=False)
    good, bad = engine.run([JudgeRequest("good", "good", number), JudgeRequest("bad", "bad", number)])
    assert (good.status, good.value, good.attempts, good.api_calls) == ("ok", 3, 2, 2)
    assert (bad.status, bad.value, bad.attempts, bad.api_calls) == ("parse_failed", None, 3, 3)
    assert "not a number" in bad.reason


# ---------------------------------------------------------------- settings and prompts


def test_settings_published_defaults_overrides_and_errors():
    pub = {"model": "gpt-4-0314", "temperature": 0.0}
    s = JudgeSettings.from_config({"model": None, "temperature": None, "timeout_s": "5"}, pub)
    assert (s.model, s.temperature, s.timeout_s, s.api_key_env) == ("gpt-4-0314", 0.0, 5.0, "OPENAI_API_KEY")
    local = JudgeSettings.from_config({"model": "qwen", "base_url": "http://gpu1:8000/v1", "api_key_env": None}, pub)
    assert local.judge_id() == "qwen@gpu1:8000" and local.api_key_env is None and s.judge_id() == "gpt-4-0314"
    with pytest.raises(ValueError, match="judge.modle"):
        JudgeSettings.from_config({"modle": "x"}, pub)
    with pytest.raises(ValueError, match="judge.max_retries: expected int, got 'many'"):
        JudgeSettings.from_config({"max_retries": "many"}, pub)
    with pytest.raises(ValueError, match="judge.model must be set"):
        JudgeSettings.from_config({}, {})


def test_yaml_defaults_equal_the_schema():
    import yaml

    node = yaml.safe_load((ROOT / "configs" / "judge" / "default.yaml").read_text())
    assert JudgeSettings.from_config(node, {"model": "m"}) == JudgeSettings(model="m")


def test_prompt_render_is_single_pass(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("Q: {question}\nA: {answer}\n{literal}", encoding="utf-8")
    prompt = Prompt.load(p, ("question", "answer"))
    assert prompt.render(question="is {answer} here?", answer="no") == "Q: is {answer} here?\nA: no\n{literal}"
    with pytest.raises(ValueError, match=r"lacks the placeholder\(s\) \{image\}"):
        Prompt.load(p, ("question", "image"))


# ---------------------------------------------------------------- pairwise: all requests fail


def test_pairwise_all_requests_failed_exits_nonzero(server, tmp_path):
    from benchmarks.gpt4v_aided import GPT4VAided

    server.respond = lambda req, n: (500, {}, "down", 0.0)
    items = GPT4VAided({}).items()[:2]
    imgs = tmp_path / "img"
    imgs.mkdir()
    for it in items:
        (imgs / it.meta["image"]).write_bytes(b"\xff\xd8fake")
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"question_id": it.question_id, "answer": f"{name} says"}) + "\n" for it in items))
    cfg = {"answers_a": str(tmp_path / "a.jsonl"), "answers_b": str(tmp_path / "b.jsonl"), "image_root": str(imgs),
           "base_url": server.base_url, "api_key_env": KEY_ENV, "max_retries": 1, "backoff_base_s": 0.01,
           "progress": False, "cache_dir": str(tmp_path / "cache"), "out_dir": str(tmp_path / "out")}
    with pytest.raises(JudgeUnavailableError, match="all 4 judge requests failed"):
        run_judge(cfg)
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["api_calls"] == 8  # written before failing
    args = [f"judge.{k}={v}" for k, v in cfg.items() if k != "out_dir"] + [f"hydra.run.dir={tmp_path / 'h'}"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "judge_pairwise.py"), *args], cwd=ROOT,
                       env={**os.environ, KEY_ENV: KEY}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "all 4 judge requests failed" in r.stdout + r.stderr
    assert KEY not in r.stdout + r.stderr


def test_server_down_stops_sending_after_failures_in_a_row(server, tmp_path):
    server.respond = lambda req, n: (200, {}, chat_reply("4"), 0.0) if n == 0 else (502, {}, "bad gateway", 0.0)
    engine = JudgeEngine(client(server, max_retries=0), ReplyCache(None), concurrency=1, progress=False,
                         max_failures_in_a_row=3)
    out = engine.run([JudgeRequest(f"q{i}", f"q{i}", number) for i in range(20)])
    assert out[0].value == 4 and [o.status for o in out[1:]] == ["request_failed"] * 19
    assert len(server.hits) == 4 and sum("not sent" in o.reason for o in out[1:]) == 16
