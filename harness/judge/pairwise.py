"""Pairwise LLM judging of two systems' answers (GPT-4V-aided evaluation, after OPERA and DAMRO).

Each question is judged in both orders, (A, B) and (B, A), and each system's scores are
averaged over the two to cancel the judge's position bias. Only questions whose every order
parsed enter the means; the others are listed as failures with their reasons.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Sequence

from benchmarks.base import AnswerMismatchError, Item, index_by_id, match_ids
from harness.judge.engine import JudgeEngine, JudgeOutcome, JudgeRequest, ReplyParseError
from harness.judge.stats import pairwise_statistics

CRITERIA = ("accuracy", "detailedness")

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


def pairwise_request(task: JudgeTask, template: str) -> JudgeRequest:
    """The judge request of one task: the verbatim template with the two answers, and the image."""

    def parse(reply: str) -> dict:
        try:
            return {k: list(v) for k, v in parse_scores(reply).items()}
        except ScoreParseError as e:
            raise ReplyParseError(str(e)) from None

    return JudgeRequest(f"{task.question_id}/{task.order}", template.format(task.answer1, task.answer2), parse,
                        task.image_path, meta={"question_id": task.question_id, "type": task.qtype,
                                               "order": task.order, "assistant1": task.assistant1,
                                               "assistant2": task.assistant2})


def judgment_record(task: JudgeTask, outcome: JudgeOutcome) -> dict:
    """The judgment record of a task: raw and per-system scores, or the failure and its reason."""
    raw = outcome.value if outcome.status == "ok" else None
    scores = None
    if raw is not None:
        scores = {task.assistant1: {k: v[0] for k, v in raw.items()},
                  task.assistant2: {k: v[1] for k, v in raw.items()}}
    return {"question_id": task.question_id, "type": task.qtype, "order": task.order,
            "assistant1": task.assistant1, "assistant2": task.assistant2, "status": outcome.status,
            "raw": raw, "scores": scores, "reason": outcome.reason, "attempts": outcome.attempts,
            "api_calls": outcome.api_calls, "reply": outcome.reply}


class PairwiseJudge:
    """Asks the judge model about JudgeTasks through a JudgeEngine (cache, re-asks, thread pool)."""

    def __init__(self, engine: JudgeEngine, template: str):
        self.engine, self.template = engine, template

    def run(self, tasks: Sequence[JudgeTask]) -> list[dict]:
        """Judgment records for all tasks, in task order."""
        outcomes = self.engine.run([pairwise_request(t, self.template) for t in tasks], desc="judge")
        return [judgment_record(t, o) for t, o in zip(tasks, outcomes)]


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
