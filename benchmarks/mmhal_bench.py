"""MMHal-Bench (Sun et al., 2023, LLaVA-RLHF): 96 open questions on OpenImages photos, rated 0-6 by a judge.

Questions: ``benchmarks/data/mmhal_bench/response_template.json`` (the 96 records of the HF dataset
Shengcao1006/MMHal-Bench), or ``benchmark.question_file`` (a local file or a hub id). Item ids are
the record's position 0..95 (the reference scores by position: type = index % 8). Images are
``<image_root>/<basename of image_src>`` (the dataset's ``images/`` folder), or embedded ones.

Scoring (``eval_gpt_mmhal.py`` of llava-rlhf/LLaVA-RLHF): the judge reads the image contents, the
question, the human answer and the response (text only, no image) and rates it; the rating is the
single s in 0..6 for which "rating: s" occurs in the lower-cased reply. A reply with none or
several is re-asked (``judge.parse_retries``) and, if it stays unreadable, counted in
``parse_failures`` and rated as ``unparsed_rating`` (0, as the reference; null leaves it out). The
reference does not re-ask: ``judge.parse_retries=0`` reproduces it exactly.
Metrics: ``average_score``, ``hallucination_rate`` (share rated < 3, a fraction as the reference
prints it), the average per question type, and RLAIF-V's ``informativeness``
(mean of s-3 if s >= 3 else s, / 3 x 100).
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any, Mapping

from benchmarks.base import Item, embedded_image, index_by_id, match_ids
from benchmarks.judged import JudgedBenchmark
from benchmarks.loading import load_question_records
from harness.judge.engine import JudgeRequest, ReplyParseError
from harness.records import normalise_record, read_jsonl
from harness.registry import BENCHMARKS

QUESTION_FILE = "mmhal_bench/response_template.json"
TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")


def parse_rating(reply: str) -> int:
    """The single s in 0..6 with "rating: s" in the lower-cased reply (ReplyParseError for none or several)."""
    text = reply.lower()
    found = [s for s in range(7) if f"rating: {s}" in text]
    if len(found) != 1:
        raise ReplyParseError(f"{'several' if found else 'no'} 'rating: <0-6>' in the reply: {found}")
    return found[0]


def mmhal_scores(ratings: list[int], types: list[str]) -> dict:
    """Average score, hallucination rate (share < 3), per-type averages and informativeness of ratings."""
    if not ratings:
        return {"n": 0}
    per_type = {t: mean(r for r, tt in zip(ratings, types) if tt == t) for t in TYPES if t in types}
    return {"average_score": mean(ratings), "hallucination_rate": sum(r < 3 for r in ratings) / len(ratings),
            "informativeness": 100.0 * mean((r - 3 if r >= 3 else r) for r in ratings) / 3,
            "by_type": per_type, "n": len(ratings)}


@BENCHMARKS.register("mmhal_bench")
class MMHalBench(JudgedBenchmark):
    """MMHal-Bench 0-6 judge ratings."""

    name = "mmhal_bench"
    task = "open"
    headline_metrics = ("average_score", "hallucination_rate")
    # LLaVA-RLHF eval_gpt_mmhal.py: gpt-4-0314 at temperature 0 (RLAIF-V: gpt-4-1106-preview)
    published_judge = {"model": "gpt-4-0314", "temperature": 0.0}
    prompt_file = "mmhal_bench/judge_prompt.txt"
    prompt_fields = ("image_content", "question", "gt_answer", "model_answer")

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        self._items: list[Item] | None = None

    def items(self) -> list[Item]:
        """The 96 questions in file order (the first ``limit`` when set); ids 0..95."""
        if self._items is not None:
            return self._items
        c = self.cfg
        source = c["question_file"] or QUESTION_FILE
        rows = load_question_records(source, c["split"])
        root = Path(c["image_root"]).expanduser() if c["image_root"] else None
        out = []
        for i, r in enumerate(rows):
            missing = [k for k in ("question_type", "image_content", "question", "gt_answer") if r.get(k) is None]
            if missing:
                raise ValueError(f"{source}, record {i + 1}: missing {', '.join(missing)}")
            inline = embedded_image(r.get("image"))
            name = str(r.get("image_src") or r.get("image_id") or "").rsplit("/", 1)[-1] or None
            path = str(root / name) if root is not None and inline is None and name else None
            content = r["image_content"]
            meta = {"question_type": str(r["question_type"]), "question_topic": r.get("question_topic"),
                    "image_content": list(content) if not isinstance(content, str) else [content],
                    "gt_answer": str(r["gt_answer"])}
            out.append(Item(i, str(r["question"]), path, name, meta, inline))
        if c["limit"] is not None:
            out = out[: int(c["limit"])]
        self._items = out
        return out

    def load_answers(self, path: str | Path) -> list[dict]:
        """Our answers JSONL, any id/answer file, or the reference's response JSON (records in template order)."""
        raw = read_jsonl(path)
        if raw and all("model_answer" in r and "question_id" not in r for r in raw):
            questions = {it.question_id: it.prompt for it in self.items()}
            out = []
            for i, r in enumerate(raw):
                if i in questions and r.get("question") not in (None, questions[i]):
                    raise ValueError(f"{path}, record {i + 1}: question {str(r.get('question'))[:60]!r} is not "
                                     f"question {i} of the benchmark; response files must keep the template order")
                out.append({**r, "question_id": i, "answer": r["model_answer"] or ""})
            return out
        return [normalise_record(r, self.cfg["answer_key"], None, f"{path}, record {i + 1}")
                for i, r in enumerate(raw)]

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Judge ratings of every answer, and their average, hallucination rate and per-type averages."""
        items = self.items()
        records = [r if "answer" in r and "question_id" in r else
                   normalise_record(r, self.cfg["answer_key"], None, f"{source}, record {i + 1}")
                   for i, r in enumerate(records)]
        by_id = index_by_id(records, source)
        match_ids([it.question_id for it in items], by_id, source)
        prompt = self.load_prompt()
        reqs = []
        for it in items:
            ans = by_id[str(it.question_id)]["answer"]
            text = str(ans if ans is not None else "")
            reqs.append(JudgeRequest(str(it.question_id), prompt.render(
                image_content=", ".join(it.meta["image_content"]), question=it.prompt,
                gt_answer=it.meta["gt_answer"], model_answer=text), parse_rating,
                meta={"question_id": it.question_id, "question_type": it.meta["question_type"]}))
        outcomes = self.engine().run(reqs, desc="mmhal_bench judge")
        fallback = self.cfg["unparsed_rating"]
        ratings, types, details = [], [], []
        for o in outcomes:
            rating = o.value if o.status == "ok" else (fallback if o.status == "parse_failed" else None)
            details.append({"question_id": o.meta["question_id"], "rating": rating, "status": o.status,
                            "reply": o.reply, "reason": o.reason})
            if rating is not None:
                ratings.append(int(rating))
                types.append(o.meta["question_type"])
        scores = mmhal_scores(ratings, types)
        scores["n_answers"] = len(items)
        scores["judge"] = self.judge_summary(outcomes)
        scores["judgments"] = details
        return scores
