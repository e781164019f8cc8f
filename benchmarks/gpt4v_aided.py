"""GPT-4V-aided evaluation (LLaVA-Bench COCO "qa90", as used by OPERA and DAMRO).

The 90 items are 30 COCO val2014 images x 3 question types (conv, detail, complex). The
source records share their ``id`` (the 12-digit COCO image id) across the three types, so an
item's ``question_id`` is ``"<id>_<type>"``, e.g. ``"000000525439_conv"``.

The benchmark cannot be scored on its own: two systems' answers are compared by an LLM judge
with ``halluc-bench-judge`` (see ``harness.judge``).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.base import Benchmark, Item, match_ids
from benchmarks.loading import load_question_records, resolve_data_path
from harness.errors import InputFileError
from harness.records import MalformedRecordError, read_answers, read_jsonl
from harness.registry import BENCHMARKS

DEFAULT_PROMPT_FILE = "gpt4v_aided/gpt4v_judge_prompt.txt"
TYPES = ("conv", "detail", "complex")


def make_question_id(record_id: str, qtype: str) -> str:
    """The unique item id for a source record: its image id and its question type."""
    return f"{record_id}_{qtype}"


def load_judge_prompt(path: str | Path = DEFAULT_PROMPT_FILE) -> str:
    """The verbatim judge prompt template (two ``{}`` placeholders), newlines kept."""
    p = resolve_data_path(path)
    with open(p, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if text.count("{}") != 2:
        raise InputFileError(f"{p}: a judge prompt needs exactly two '{{}}' placeholders, found {text.count('{}')}")
    return text


@BENCHMARKS.register("gpt4v_aided")
class GPT4VAided(Benchmark):
    """Open-ended questions about COCO images, judged pairwise by a vision LLM."""

    name = "gpt4v_aided"
    headline_metrics = ("n",)
    task = "open"

    def items(self) -> list[Item]:
        """The items in file order (the first ``limit`` when set); ids are ``<id>_<type>``."""
        source = self.cfg["question_file"]
        rows = load_question_records(source)
        root = self.cfg["image_root"]  # the COCO val2014 folder; null: no image paths (as in pope)
        img_dir = Path(root).expanduser().resolve() if root else None
        out, seen = [], {}
        for i, r in enumerate(rows, start=1):
            qid = make_question_id(str(r["id"]), str(r["type"]))
            if qid in seen:
                raise MalformedRecordError(f"{source}: duplicate item {qid!r} at records {seen[qid]} and {i}")
            seen[qid] = i
            path = str(img_dir / r["image"]) if img_dir else None
            out.append(Item(question_id=qid, prompt=r["instruction"], image_path=path, image_id=r["image"],
                            meta={"type": r["type"], "image": r["image"]}))
        limit = self.cfg["limit"]
        return out[: int(limit)] if limit is not None else out

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Only the count: answers are scored by comparing two runs with halluc-bench-judge."""
        match_ids([it.question_id for it in self.items()], [r["question_id"] for r in records],
                  source, allow_missing=True)
        return {"n": len(records), "note": "judge with halluc-bench-judge"}

    def load_answers(self, path: str | Path) -> list[dict]:
        """Answer records from the harness's answers JSONL or DAMRO's ``{"id", "prompt", "output"}`` file.

        DAMRO's ids repeat across the three question types, so such records are matched to
        items by (id, prompt == instruction).
        """
        raw = read_jsonl(path)
        if not raw or all("question_id" in r for r in raw):
            return read_answers(path)
        by_key = {(it.question_id.rsplit("_", 1)[0], it.prompt): it.question_id for it in self.items()}
        out = []
        for i, r in enumerate(raw, start=1):
            if "question_id" in r:
                raise MalformedRecordError(f"{path}, record {i}: mixes harness records (question_id) and DAMRO records")
            qid = by_key.get((str(r.get("id")), r.get("prompt")))
            if qid is None:
                raise MalformedRecordError(f"{path}, record {i}: no item with id {r.get('id')!r} and this prompt "
                                 f"({str(r.get('prompt'))[:60]!r})")
            out.append({**r, "question_id": qid, "answer": r.get("output") or ""})
        return out
