"""Pairwise LLM judging of two systems' answers (GPT-4V-aided evaluation, after OPERA and DAMRO).

Each question is judged in both orders, (A, B) and (B, A), and each system's scores are
averaged over the two to cancel the judge's position bias. Only questions whose every order
parsed enter the means; the others are listed as failures with their reasons.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Sequence

from benchmarks.base import AnswerMismatchError, Item, index_by_id, match_ids
from harness.judge.cache import ReplyCache, cache_key, sha256_bytes
from harness.judge.client import (ChatClient, JudgeError, JudgeHTTPError, image_data_url, read_image,
                                  vision_messages)
from harness.judge.stats import pairwise_statistics

CRITERIA = ("accuracy", "detailedness")
FATAL_STATUSES = (401, 403, 404)  # a bad key, model or URL fails every request: stop the run

_NUM = r"(\d+(?:\.\d+)?)(?:\s*/\s*10(?!\d))?"
_SEP = r"(?:\s*(?:[,;|&]|\band\b|\bvs\.?)\s*|\s+)"


def _score_rx(label: str) -> re.Pattern:
    return re.compile(rf"(?<![a-z]){label}[\s*_]*:[\s*_]*[\[(]?\s*{_NUM}{_SEP}{_NUM}(?!\.?\d)", re.I)


_RX = {c: _score_rx(c) for c in CRITERIA}


class ScoreParseError(ValueError):
    """A judge reply without a usable ``Accuracy: s1 s2`` / ``Detailedness: s1 s2`` pair."""


def _num(s: str) -> float | int:
    x = float(s)
    return int(x) if x.is_integer() else x


def parse_scores(reply: str) -> dict[str, tuple[float, float]]:
    """The (assistant 1, assistant 2) score pair per criterion from a judge reply, each in 1-10.

    Accepts ``Accuracy: 8 7``, ``**Accuracy:** 8 7``, ``Accuracy: 8, 7``, ``Accuracy: 8/10 7/10``
    and the like; raises ScoreParseError when a pair is missing, ambiguous or out of range.
    """
    out = {}
    for crit, rx in _RX.items():
        pairs = {(_num(m.group(1)), _num(m.group(2))) for m in rx.finditer(reply or "")}
        if not pairs:
            raise ScoreParseError(f"no '{crit.capitalize()}: <s1> <s2>' line in the reply")
        if len(pairs) > 1:
            raise ScoreParseError(f"ambiguous {crit} scores: {sorted(pairs)}")
        pair = pairs.pop()
        if not all(1 <= s <= 10 for s in pair):
            raise ScoreParseError(f"{crit} scores {pair} outside 1-10")
        out[crit] = pair
    return out


@dataclass(frozen=True)
class JudgeTask:
    """One judge request: a question with the two answers in the order shown to the judge."""

    question_id: str
    qtype: str
    order: str  # "ab": system A is Assistant 1; "ba": system B is Assistant 1
    assistant1: str  # system name shown as Assistant 1
    assistant2: str
    answer1: str
    answer2: str
    image_path: str | None



def build_tasks(items: Sequence[Item], answers_a: list[dict], answers_b: list[dict], names: Sequence[str],
                image_root: str | Path | None = None, both_orders: bool = True,
                sources: Sequence[str] = ("answers_a", "answers_b")) -> list[JudgeTask]:
    """Judge tasks for the questions answered in both files, in benchmark order.

    The two files must hold the same question ids, all known to the benchmark, each once;
    otherwise an AnswerMismatchError (or ValueError for duplicates) lists the offending ids.
    The image is ``image_root/<meta image>`` or, without an image root, the answer record's
    ``image`` path; missing image files raise FileNotFoundError listing them.
    """
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two distinct system names, got {list(names)}")
    a, b = index_by_id(answers_a, sources[0]), index_by_id(answers_b, sources[1])
    match_ids(list(a), list(b), f"{sources[1]} (compared with {sources[0]})")
    by_id = {str(it.question_id): it for it in items}
    match_ids(list(by_id), list(a), sources[0], allow_missing=True)
    if not a:
        raise AnswerMismatchError(sources[0], list(by_id), [], len(by_id))
    tasks, missing = [], []
    for qid, it in by_id.items():
        if qid not in a:
            continue
        ra, rb = a[qid], b[qid]
        if image_root:
            img = str(Path(image_root).expanduser() / (it.meta.get("image") or it.image_id))
        else:
            img = ra.get("image") or rb.get("image") or it.image_path
        if img is None or not Path(img).is_file():
            missing.append(str(img))
        qtype = str(it.meta.get("type", "all"))
        ans_a, ans_b = str(ra.get("answer") or ""), str(rb.get("answer") or "")
        tasks.append(JudgeTask(qid, qtype, "ab", names[0], names[1], ans_a, ans_b, img))
        if both_orders:
            tasks.append(JudgeTask(qid, qtype, "ba", names[1], names[0], ans_b, ans_a, img))
    if missing:
        raise FileNotFoundError(f"{len(missing)} judge images not found (set judge.image_root?): "
                                + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return tasks


class PairwiseJudge:
    """Asks the judge model about JudgeTasks, through the reply cache, re-asking on unparsable replies."""

    def __init__(self, client: ChatClient, cache: ReplyCache, template: str, parse_retries: int = 2):
        self.client, self.cache, self.template = client, cache, template
        self.parse_retries = int(parse_retries)
        self._images: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def _image(self, path: str) -> tuple[bytes, str]:
        with self._lock:
            if path not in self._images:
                data = read_image(path)
                self._images[path] = (data, sha256_bytes(data))
            return self._images[path]

    def judge(self, task: JudgeTask) -> dict:
        """The judgment record of one task: raw and per-system scores, or a failure reason."""
        data, img_sha = self._image(task.image_path) if task.image_path else (b"", None)
        prompt = self.template.format(task.answer1, task.answer2)
        c = self.client
        rec: dict[str, Any] = {"question_id": task.question_id, "type": task.qtype, "order": task.order,
                               "assistant1": task.assistant1, "assistant2": task.assistant2,
                               "status": "ok", "raw": None, "scores": None, "reason": None,
                               "attempts": 0, "api_calls": 0, "reply": None}
        for attempt in range(self.parse_retries + 1):
            key = cache_key(c.model, prompt, img_sha, (task.answer1, task.answer2), c.max_tokens,
                            c.temperature, attempt)
            rec["attempts"] = attempt + 1
            entry = self.cache.get(key)
            if entry is not None:
                reply = entry["reply"]
            else:
                url = image_data_url(data, Path(task.image_path).name) if task.image_path else None
                try:
                    rec["api_calls"] += 1
                    reply = c.complete(vision_messages(prompt, url))
                except JudgeHTTPError as e:
                    if e.status in FATAL_STATUSES:
                        raise
                    return {**rec, "status": "request_failed", "reason": str(e)}
                except JudgeError as e:
                    return {**rec, "status": "request_failed", "reason": str(e)}
                self.cache.put(key, {"model": c.model, "question_id": task.question_id, "order": task.order,
                                     "attempt": attempt, "reply": reply, "created": time.time()})
            rec["reply"] = reply
            try:
                parsed = parse_scores(reply)
            except ScoreParseError as e:
                rec["status"], rec["reason"] = "parse_failed", str(e)
                continue
            rec.update(status="ok", reason=None, raw={k: list(v) for k, v in parsed.items()},
                       scores={task.assistant1: {k: v[0] for k, v in parsed.items()},
                               task.assistant2: {k: v[1] for k, v in parsed.items()}})
            return rec
        return rec

    def run(self, tasks: Sequence[JudgeTask], concurrency: int = 4, progress: bool = True) -> list[dict]:
        """Judgment records for all tasks (in task order), judged on a thread pool."""
        from tqdm import tqdm

        results: list[dict | None] = [None] * len(tasks)
        abort = threading.Event()  # set by a fatal error: queued tasks then make no request

        def guarded(task: JudgeTask) -> dict | None:
            """The task's judgment, or None once the run was aborted."""
            if abort.is_set():
                return None
            try:
                return self.judge(task)
            except BaseException:
                abort.set()
                raise

        pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)))
        try:
            futs = {pool.submit(guarded, t): i for i, t in enumerate(tasks)}
            for fut in tqdm(as_completed(futs), total=len(futs), desc="judge", disable=not progress):
                results[futs[fut]] = fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]


def _means(per_q: list[dict[str, dict[str, float]]], names: Sequence[str]) -> dict:
    return {n: {c: (round(mean(q[n][c] for q in per_q), 4) if per_q else None) for c in CRITERIA} for n in names}


def aggregate(records: list[dict], names: Sequence[str], both_orders: bool = True) -> dict:
    """Mean accuracy and detailedness per system, overall and per question type, plus failures.

    A question counts as judged only when all of its orders parsed; its per-system score is the
    mean over those orders. ``first_position_advantage`` is the mean (Assistant 1 - Assistant 2)
    score over parsed judgments: with both orders, a measure of the judge's position bias.
    """
    n_orders = 2 if both_orders else 1
    by_q: dict[str, list[dict]] = {}
    for r in records:
        by_q.setdefault(r["question_id"], []).append(r)
    per_q, types = [], {}
    for qid, recs in by_q.items():
        if len(recs) == n_orders and all(r["status"] == "ok" for r in recs):
            s = {n: {c: mean(r["scores"][n][c] for r in recs) for c in CRITERIA} for n in names}
            per_q.append(s)
            types.setdefault(recs[0]["type"], []).append(s)
    ok = [r for r in records if r["status"] == "ok"]
    failures = [{"question_id": r["question_id"], "order": r["order"], "status": r["status"], "reason": r["reason"]}
                for r in records if r["status"] != "ok"]
    return {
        "names": list(names),
        "n_questions": len(by_q),
        "n_judged": len(per_q),
        "n_judgments": len(records),
        "parse_failures": sum(r["status"] == "parse_failed" for r in records),
        "request_failures": sum(r["status"] == "request_failed" for r in records),
        "api_calls": sum(r.get("api_calls", 0) for r in records),
        "overall": _means(per_q, names),
        "by_type": {t: {"n": len(v), **_means(v, names)} for t, v in sorted(types.items())},
        "first_position_advantage": {c: (round(mean(r["raw"][c][0] - r["raw"][c][1] for r in ok), 4) if ok else None)
                                     for c in CRITERIA},
        "statistics": pairwise_statistics(per_q, names),
        "failures": failures,
    }
