"""LLM-as-judge evaluation: a chat-completions client, a reply cache, a request engine and pairwise comparison.

``run_judge(cfg)`` is what ``halluc-bench-judge`` runs; ``cfg`` is its ``judge`` node: the
pairwise keys of ``configs/judge.yaml`` and the judge settings of ``configs/judge/default.yaml``.
Outputs in ``out_dir``: ``judgments.jsonl`` (one record per question and order) and ``scores.json``
(per-system means, overall and per question type).
The judged benchmarks (``hallusionbench``, ``mmhal_bench``, ``object_halbench``) use the same
settings, engine and cache through ``benchmarks.judged.JudgedBenchmark``.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from harness.judge.cache import ReplyCache, cache_key, sha256_text
from harness.judge.client import (ChatClient, Completion, JudgeError, JudgeHTTPError, MissingAPIKeyError,
                                  RetriesExhaustedError, image_data_url, vision_messages)
from harness.judge.engine import (JudgeEngine, JudgeOutcome, JudgeRequest, JudgeUnavailableError, ReplyParseError,
                                  require_some_success, summarise)
from harness.judge.pairwise import (JudgeTask, PairwiseJudge, ScoreParseError, aggregate, build_tasks,
                                    parse_scores)
from harness.judge.settings import JudgeSettings, Prompt

__all__ = ["ChatClient", "Completion", "JudgeError", "JudgeHTTPError", "MissingAPIKeyError",
           "RetriesExhaustedError", "ReplyCache", "cache_key", "image_data_url", "vision_messages", "JudgeEngine",
           "JudgeOutcome", "JudgeRequest", "JudgeUnavailableError", "ReplyParseError", "require_some_success",
           "summarise", "JudgeTask", "PairwiseJudge", "ScoreParseError", "aggregate", "build_tasks", "parse_scores",
           "JudgeSettings", "Prompt", "make_engine", "run_judge"]

log = logging.getLogger(__name__)

#: the pairwise comparison's own keys (the rest of the judge node is JudgeSettings)
PAIRWISE_KEYS: dict[str, Any] = {
    "answers_a": None, "answers_b": None, "out_dir": None, "names": ["a", "b"], "image_root": None,
    "question_file": "gpt4v_aided/gpt4v.jsonl", "prompt_file": "gpt4v_aided/gpt4v_judge_prompt.txt",
    "both_orders": True,
}
#: DAMRO's judge request (OPERA used gpt-4-vision-preview)
PAIRWISE_PUBLISHED = {"model": "gpt-4o-2024-05-13", "max_tokens": 300, "temperature": 0.0}


def make_engine(settings: JudgeSettings) -> JudgeEngine:
    """A JudgeEngine for the settings: their client, reply cache, re-asks and concurrency."""
    return JudgeEngine(settings.client(), ReplyCache(settings.cache_dir), settings.parse_retries,
                       settings.concurrency, settings.progress, settings.max_failures_in_a_row)


def _write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run_judge(cfg: Mapping[str, Any]) -> dict:
    """Judge two answer files pairwise and write ``judgments.jsonl`` and ``scores.json`` to ``out_dir``.

    ``cfg`` is the ``judge`` node: the pairwise keys (``answers_a``, ``answers_b``, ``out_dir`` are
    required) and JudgeSettings. Returns the scores dict. Raises on mismatched answer files,
    missing images, a missing API key or a fatal HTTP status (401/403/404), and
    JudgeUnavailableError when every request failed (after writing the outputs); other
    per-question failures are reported, not raised.
    """
    from benchmarks.gpt4v_aided import GPT4VAided, load_judge_prompt

    given = dict(cfg)
    c = {k: (given.pop(k) if given.get(k) is not None else v) for k, v in PAIRWISE_KEYS.items()}
    for k in ("answers_a", "answers_b", "out_dir"):
        given.pop(k, None)
        if not c.get(k):
            raise ValueError(f"judge.{k} must be set")
    settings = JudgeSettings.from_config(given, PAIRWISE_PUBLISHED)
    names = [str(n) for n in c["names"]]
    bench = GPT4VAided({"question_file": c["question_file"], "image_root": c["image_root"]})
    answers = [bench.load_answers(c["answers_a"]), bench.load_answers(c["answers_b"])]
    tasks = build_tasks(bench.items(), answers[0], answers[1], names, c["image_root"], bool(c["both_orders"]),
                        sources=(str(c["answers_a"]), str(c["answers_b"])))
    template = load_judge_prompt(settings.prompt or c["prompt_file"])
    engine = make_engine(settings)
    log.info("judging %d questions (%d judgments) with %s", len(tasks) // (2 if c["both_orders"] else 1),
             len(tasks), settings.judge_id())
    records = PairwiseJudge(engine, template).run(tasks)
    scores = aggregate(records, names, bool(c["both_orders"]))
    scores["judge"] = {**settings.record(), "prompt_sha256": sha256_text(template)}
    scores["config"] = {k: c[k] for k in ("answers_a", "answers_b", "image_root", "both_orders")}
    out = Path(c["out_dir"])
    _write_atomic(out / "judgments.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_atomic(out / "scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    for f in scores["failures"]:
        log.warning("judge failure: question %s order %s: %s: %s", f["question_id"], f["order"], f["status"],
                    f["reason"])
    for n in names:
        log.info("%s: accuracy %s, detailedness %s", n, scores["overall"][n]["accuracy"],
                 scores["overall"][n]["detailedness"])
    log.info("judged %d/%d questions (%d parse failures, %d request failures, %d HTTP requests sent); wrote %s",
             scores["n_judged"], scores["n_questions"], scores["parse_failures"], scores["request_failures"],
             scores["api_calls"], out)
    if records and all(r["status"] == "request_failed" for r in records):
        raise JudgeUnavailableError(f"all {len(records)} judge requests failed; first error: {records[0]['reason']}")
    return scores
