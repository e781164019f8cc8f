"""HallusionBench (Guan et al., CVPR 2024): yes/no questions on original and edited figures, and without one.

Questions: ``benchmarks/data/hallusionbench/HallusionBench.json`` (1,129, tianyi-lab/HallusionBench),
or ``benchmark.question_file`` (a local file or a hub id such as ``lmms-lab/HallusionBench``,
whose images are embedded). Item ids are the reference's per-question names,
``<category>_<subcategory>_<set_id>_<figure_id>_<question_id>`` (e.g. ``VD_figure_0_1_0``). Images are
``<image_root>/<filename>`` (``VD/figure/0_1.png`` of ``hallusion_bench.zip``). The 178 questions
without a figure (visual_input 0) need text-only generation, which the harness's adapters do not
do: ``no_image: blank`` (default) shows a white image instead, ``skip`` leaves them out; answers
from any tool (``answers=FILE``, e.g. the reference's result JSON) are scored as they are.

Labels (``judge_mode``): ``judge`` asks the judge with the reference's prompt (correct / incorrect /
unclear: "incorrect" in the reply -> 0, else "correct" -> 1, else 2; a reply naming none is re-asked
``judge.parse_retries`` times, which the reference does not do, then counted as unclear as the
reference does); ``rules`` reads yes/no answers by rule (``read_yes_no``: the word "yes" or "no"
with the other absent) and labels them against ``gt_answer``, an answer with neither is "unclear";
``rules_then_judge`` (default) asks the judge only for answers the rule cannot read. The consistency check (``consistency_check``) asks, with
the reference's second prompt, whether each answer agrees with the answer on figure 0 of its pair;
rule-readable pairs are compared by rule outside ``judge`` mode. Metrics: see
``benchmarks.hallusionbench_metrics``.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping

from benchmarks.base import Item, embedded_image, index_by_id, match_ids
from benchmarks.hallusionbench_metrics import CORRECT, INCORRECT, UNCLEAR, hallusion_scores, item_key, pair_key
from benchmarks.judged import JudgedBenchmark
from benchmarks.loading import load_question_records
from harness.judge.engine import JudgeOutcome, JudgeRequest, ReplyParseError
from harness.records import normalise_record, read_jsonl
from harness.registry import BENCHMARKS

QUESTION_FILE = "hallusionbench/HallusionBench.json"
CONSISTENCY_PROMPT = "hallusionbench/judge_consistency.txt"
JUDGE_MODES = ("rules", "judge", "rules_then_judge")
SOURCE_KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id", "visual_input", "gt_answer",
               "question", "gt_answer_details")


@functools.lru_cache(maxsize=1)
def blank_image() -> Any:
    """The white image shown for questions without a figure (one shared instance)."""
    from PIL import Image

    return Image.new("RGB", (336, 336), "white")


def read_yes_no(answer: object) -> str | None:
    """'yes' / 'no' when the answer's words hold exactly one of them (case and punctuation ignored), else None."""
    words = set(re.findall(r"[a-z]+", str(answer or "").lower()))
    if ("yes" in words) == ("no" in words):
        return None
    return "yes" if "yes" in words else "no"


def parse_correctness(reply: str) -> str:
    """The reference's reading of a correctness reply; a reply naming no label at all is a parse failure."""
    text = reply.lower()
    if "incorrect" in text:
        return INCORRECT
    if "correct" in text:
        return CORRECT
    if "unclear" in text:
        return UNCLEAR
    raise ReplyParseError("the reply says neither correct, incorrect nor unclear")


def parse_same(reply: str) -> str:
    """The reference's reading of a consistency reply: 'same' -> '1', 'different' -> '0'."""
    text = reply.lower()
    if "same" in text:
        return "1"
    if "different" in text:
        return "0"
    raise ReplyParseError("the reply says neither same nor different")


@BENCHMARKS.register("hallusionbench")
class HallusionBench(JudgedBenchmark):
    """HallusionBench aAcc / fAcc / qAcc with judge or rule labels."""

    name = "hallusionbench"
    task = "open"
    headline_metrics = ("aAcc", "fAcc", "qAcc", "overall")
    label_keys = ("judge_mode",)
    # utils.py: openai.ChatCompletion(model="gpt-4"), no temperature or max_tokens (API defaults)
    published_judge = {"model": "gpt-4"}
    prompt_file = "hallusionbench/judge_correctness.txt"
    prompt_fields = ("question", "gt_answer_details", "prediction")

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        if self.cfg["judge_mode"] not in JUDGE_MODES:
            raise ValueError(f"benchmark.judge_mode: unknown {self.cfg['judge_mode']!r}; valid: {', '.join(JUDGE_MODES)}")
        if self.cfg["no_image"] not in ("blank", "skip"):
            raise ValueError(f"benchmark.no_image: unknown {self.cfg['no_image']!r}; valid: blank, skip")
        self._items: list[Item] | None = None

    def uses_judge(self) -> bool:
        """False in rules mode: no judge, no key, no requests."""
        return self.cfg["judge_mode"] != "rules"

    # -- items -------------------------------------------------------------------------
    def items(self) -> list[Item]:
        """The questions in file order (the first ``limit`` when set)."""
        if self._items is not None:
            return self._items
        c = self.cfg
        source = c["question_file"] or QUESTION_FILE
        rows = load_question_records(source, c["split"])
        root = Path(c["image_root"]).expanduser() if c["image_root"] else None
        out, seen = [], {}
        for i, r in enumerate(rows, start=1):
            missing = [k for k in SOURCE_KEYS if r.get(k) is None]
            if missing:
                raise ValueError(f"{source}, record {i}: missing {', '.join(missing)}")
            qid = item_key(r)
            if qid in seen:
                raise ValueError(f"{source}: duplicate question {qid!r} at records {seen[qid]} and {i}")
            seen[qid] = i
            meta = {k: str(r[k]) for k in SOURCE_KEYS[:7]}
            inline, path = embedded_image(r.get("image")), None
            if str(r["visual_input"]) == "0" and inline is None:
                if c["no_image"] == "skip":
                    continue
                inline, meta["no_image"] = blank_image(), "blank"
            elif inline is None and root is not None:
                if not r.get("filename"):
                    raise ValueError(f"{source}, record {i}: visual_input {r['visual_input']} but no filename")
                path = str(root / str(r["filename"]).removeprefix("./"))
            out.append(Item(qid, str(r["question"]) + (c["prompt_suffix"] or ""), path,
                            r.get("filename"), meta, inline))
        if c["limit"] is not None:
            out = out[: int(c["limit"])]
        self._items = out
        self._rows = {item_key(r): r for r in rows}
        return out

    # -- answers -----------------------------------------------------------------------
    def load_answers(self, path: str | Path) -> list[dict]:
        """Our answers JSONL, any tool's id/answer file, or the reference's result JSON (``model_prediction``)."""
        raw = read_jsonl(path)
        out = []
        for i, r in enumerate(raw, start=1):
            where = f"{path}, record {i}"
            if all(k in r for k in ("category", "subcategory", "set_id", "figure_id")) and "model_prediction" in r:
                key = self.cfg["answer_key"] or "model_prediction"
                out.append({**r, "question_id": item_key(r), "answer": r.get(key) or ""})
            else:
                out.append(normalise_record(r, self.cfg["answer_key"], None, where))
        return out

    # -- scoring -----------------------------------------------------------------------
    def _requests(self, items: list[Item], answers: dict[str, str], rule: dict[str, str | None]):
        mode, reqs = self.cfg["judge_mode"], []
        if mode == "rules":
            return reqs
        prompt = self.load_prompt()
        for it in items:
            qid = str(it.question_id)
            if mode == "judge" or rule[qid] is None:
                row = self._rows[qid]
                reqs.append(JudgeRequest(f"{qid}/correctness", prompt.render(
                    question=row["question"], gt_answer_details=row["gt_answer_details"], prediction=answers[qid]),
                    parse_correctness, meta={"question_id": qid, "kind": "correctness"}))
        if self.cfg["consistency_check"]:
            same_prompt = self.load_prompt("consistency", self.cfg["consistency_prompt"] or CONSISTENCY_PROMPT,
                                           ("prediction", "prediction_on_figure_0"))
            fig0 = {pair_key(it.meta): str(it.question_id) for it in items if it.meta["figure_id"] == "0"}
            for it in items:
                qid, ref = str(it.question_id), fig0.get(pair_key(it.meta))
                if it.meta["figure_id"] == "0" or ref is None:
                    continue
                if mode == "judge" or rule[qid] is None or rule[ref] is None:
                    reqs.append(JudgeRequest(f"{qid}/consistency", same_prompt.render(
                        prediction=answers[qid], prediction_on_figure_0=answers[ref]), parse_same,
                        meta={"question_id": qid, "kind": "consistency"}))
        return reqs

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """aAcc, fAcc, qAcc (+ easy/hard, per category, consistency analysis), with per-question labels."""
        items = self.items()
        records = [r if "answer" in r and "question_id" in r else
                   normalise_record(r, self.cfg["answer_key"], None, f"{source}, record {i + 1}")
                   for i, r in enumerate(records)]
        by_id = index_by_id(records, source)
        match_ids([it.question_id for it in items], by_id, source)
        answers = {k: str(v["answer"] if v["answer"] is not None else "") for k, v in by_id.items()}
        rule: dict[str, str | None] = {str(it.question_id): read_yes_no(answers[str(it.question_id)]) for it in items}
        outcomes = self.engine().run(self._requests(items, answers, rule), desc="hallusionbench judge") \
            if self.uses_judge() else []
        got: dict[tuple[str, str], JudgeOutcome] = {(o.meta["question_id"], o.meta["kind"]): o for o in outcomes}
        fig0 = {pair_key(it.meta): str(it.question_id) for it in items if it.meta["figure_id"] == "0"}
        rows, details = [], []
        for it in items:
            qid, m = str(it.question_id), it.meta
            gt = "yes" if m["gt_answer"] == "1" else "no"
            o = got.get((qid, "correctness"))
            if o is None:  # labelled by rule
                label = UNCLEAR if rule[qid] is None else (CORRECT if rule[qid] == gt else INCORRECT)
                by = "rule"
            elif o.status == "request_failed":
                details.append({"question_id": qid, "label": None, "by": "judge", "status": o.status, "reason": o.reason})
                continue
            else:  # the reference maps a reply naming no label to "unclear"
                label, by = (o.value if o.status == "ok" else UNCLEAR), "judge"
            same = None
            ref = fig0.get(pair_key(m))
            if self.cfg["consistency_check"] and m["figure_id"] != "0" and ref is not None:
                s = got.get((qid, "consistency"))
                if s is None:
                    same = "1" if rule[qid] is not None and rule[qid] == rule[ref] else "0"
                elif s.status != "request_failed":
                    same = s.value if s.status == "ok" else "0"
            rows.append({**m, "label": label, "same": same})
            details.append({"question_id": qid, "label": label, "by": by, "same": same,
                            "status": o.status if o else "rule", "reply": o.reply if o else None})
        scores = hallusion_scores(rows) if rows else {"n": 0}
        scores["n_answers"] = len(items)
        scores["rule_labelled"] = sum(d["by"] == "rule" for d in details)
        scores["rule_unreadable"] = sum(v is None for v in rule.values())
        scores["judge"] = self.judge_summary(outcomes)
        scores["judgments"] = details
        return scores
