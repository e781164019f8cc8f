"""LLM-as-judge evaluation: a chat-completions client, a reply cache and pairwise comparison.

``run_judge(cfg)`` is what ``scripts/judge_pairwise.py`` runs; ``cfg`` holds the keys of
``configs/judge/default.yaml``. Outputs in ``out_dir``: ``judgments.jsonl`` (one record per
question and order) and ``scores.json`` (per-system means, overall and per question type).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from harness.judge.cache import ReplyCache, cache_key
from harness.judge.client import (ChatClient, JudgeError, JudgeHTTPError, MissingAPIKeyError,
                                  RetriesExhaustedError, image_data_url, vision_messages)
from harness.judge.pairwise import (JudgeTask, PairwiseJudge, ScoreParseError, aggregate, build_tasks,
                                    parse_scores)

__all__ = ["ChatClient", "JudgeError", "JudgeHTTPError", "MissingAPIKeyError", "RetriesExhaustedError",
           "ReplyCache", "cache_key", "image_data_url", "vision_messages", "JudgeTask", "PairwiseJudge",
           "ScoreParseError", "aggregate", "build_tasks", "parse_scores", "run_judge"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "question_file": "gpt4v_aided/gpt4v.jsonl", "prompt_file": "gpt4v_aided/gpt4v_judge_prompt.txt",
    "names": ["a", "b"], "image_root": None, "base_url": "https://api.openai.com/v1",
    "model": "gpt-4o-2024-05-13", "api_key_env": "OPENAI_API_KEY", "max_tokens": 300, "temperature": 0.0,
    "timeout_s": 60.0, "max_retries": 5, "backoff_base_s": 1.0, "backoff_max_s": 60.0, "concurrency": 4,
    "both_orders": True, "parse_retries": 2, "cache_dir": "outputs/judge_cache", "progress": True,
}


def _write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run_judge(cfg: Mapping[str, Any]) -> dict:
    """Judge two answer files pairwise and write ``judgments.jsonl`` and ``scores.json`` to ``out_dir``.

    Required keys: ``answers_a``, ``answers_b``, ``out_dir``; the rest default to DEFAULTS.
    Returns the scores dict. Raises on mismatched answer files, missing images, a missing API
    key or a fatal HTTP status (401/403/404); per-question failures are reported, not raised.
    """
    from benchmarks.gpt4v_aided import GPT4VAided, load_judge_prompt

    c = {**DEFAULTS, **{k: v for k, v in dict(cfg).items()}}
    for k in ("answers_a", "answers_b", "out_dir"):
        if not c.get(k):
            raise ValueError(f"judge.{k} must be set")
    names = [str(n) for n in c["names"]]
    bench = GPT4VAided({"question_file": c["question_file"], "image_root": c["image_root"]})
    answers = [bench.load_answers(c["answers_a"]), bench.load_answers(c["answers_b"])]
    tasks = build_tasks(bench.items(), answers[0], answers[1], names, c["image_root"], bool(c["both_orders"]),
                        sources=(str(c["answers_a"]), str(c["answers_b"])))
    client = ChatClient(base_url=c["base_url"], model=c["model"], api_key_env=c["api_key_env"],
                        max_tokens=int(c["max_tokens"]), temperature=float(c["temperature"]),
                        timeout_s=float(c["timeout_s"]), max_retries=int(c["max_retries"]),
                        backoff_base_s=float(c["backoff_base_s"]), backoff_max_s=float(c["backoff_max_s"]))
    judge = PairwiseJudge(client, ReplyCache(c["cache_dir"]), load_judge_prompt(c["prompt_file"]),
                          int(c["parse_retries"]))
    log.info("judging %d questions (%d requests) with %s at %s", len(tasks) // (2 if c["both_orders"] else 1),
             len(tasks), client.model, client.base_url)
    records = judge.run(tasks, int(c["concurrency"]), bool(c["progress"]))
    scores = aggregate(records, names, bool(c["both_orders"]))
    scores["config"] = {k: c[k] for k in ("answers_a", "answers_b", "image_root", "base_url", "model",
                                          "max_tokens", "temperature", "both_orders", "parse_retries")}
    out = Path(c["out_dir"])
    _write_atomic(out / "judgments.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_atomic(out / "scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    for f in scores["failures"]:
        log.warning("judge failure: question %s order %s: %s: %s", f["question_id"], f["order"], f["status"],
                    f["reason"])
    for n in names:
        log.info("%s: accuracy %s, detailedness %s", n, scores["overall"][n]["accuracy"],
                 scores["overall"][n]["detailedness"])
    log.info("judged %d/%d questions (%d parse failures, %d request failures, %d requests sent); wrote %s",
             scores["n_judged"], scores["n_questions"], scores["parse_failures"], scores["request_failures"],
             scores["api_calls"], out)
    return scores
