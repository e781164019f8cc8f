"""Object HalBench (Yu et al., RLHF-V / RLAIF-V): detailed descriptions of 300 COCO images, object hallucination.

Questions: ``benchmarks/data/object_halbench/obj_halbench_300_questions.reconstructed.jsonl``. The
official file (``obj_halbench_300_with_image.jsonl``) is not public in a reachable form; this list was
**reconstructed** from two independent public answer files that ran on it (see
``benchmarks/data/SOURCES.md``) and has not been checked against it. ``benchmark.question_file``
takes the official file (its base64 ``image`` is used) or any other. Item ids are ``idx`` (0..299).
Images: ``<image_root>/<first existing of image_files>`` (val2014 names, then train2014: the split of
the 300 images is not recorded).

Objects of a response (``extractor``): ``judge`` asks the judge (the reference's prompt as a system
message, gpt-3.5-turbo-0613, temperature 0.2, max_tokens 512) for a JSON list of objects; responses
of <= 3 words get none without a request, as in the reference. ``chair`` finds them with our CHAIR
extraction (``benchmarks.chair_metric``, no judge). Responses are first stripped of "Assistant:" and
surrounding space, as the reference's loader does. Ground truth: our CHAIR ground-truth files
(``ground_truth: lemma_pos | singularize | path``), built from COCO instances + captions with the
original CHAIR synonyms; the reference rebuilds it from the COCO annotation files with its refined
synonyms and lemmatisation without POS, so object sets can differ slightly. Metrics:
``benchmarks.object_halbench_metric``. A response whose extraction failed (no reply, or no JSON list
after ``judge.parse_retries`` re-asks; the reference re-asks up to 100 times, then crashes) is left out
of the metrics and counted in ``judge.request_failures`` / ``judge.parse_failures``.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Mapping

from benchmarks.base import AnswerMismatchError, Item, embedded_image, index_by_id, match_ids
from benchmarks.chair_metric import load_ground_truth
from benchmarks.judged import JudgedBenchmark
from benchmarks.loading import load_question_records
from benchmarks.object_halbench_metric import (object_halbench_scores, object_vocab, objects_from_list,
                                               objects_from_text, parse_object_list)
from harness.judge.engine import JudgeRequest, ReplyParseError
from harness.records import normalise_record, read_jsonl
from harness.registry import BENCHMARKS

QUESTION_FILE = "object_halbench/obj_halbench_300_questions.reconstructed.jsonl"


def clean_response(text: object) -> str:
    """A response as the reference's loader reads it: "Assistant:" removed, surrounding space stripped."""
    return str(text if text is not None else "").replace("Assistant:", "").strip()


def _parse(reply: str) -> list[str]:
    try:
        return parse_object_list(reply)
    except ValueError as e:
        raise ReplyParseError(str(e)) from None


def _inline_image(value: Any) -> Any:
    """A PIL image from a dataset cell, including the official file's base64 string."""
    img = embedded_image(value)
    if img is None and isinstance(value, str) and len(value) > 256:
        from PIL import Image

        img = Image.open(io.BytesIO(base64.b64decode(value)))
    return img


@BENCHMARKS.register("object_halbench")
class ObjectHalBench(JudgedBenchmark):
    """Response- and object-level hallucination rates and object recall of descriptions."""

    name = "object_halbench"
    task = "open"
    headline_metrics = ("response_hall", "object_hall", "object_recall")
    label_keys = ("ground_truth", "synonyms")
    published_judge = {"model": "gpt-3.5-turbo-0613", "temperature": 0.2, "top_p": 1.0, "max_tokens": 512}
    prompt_file = "object_halbench/gpt_object_extraction_prompt.txt"
    prompt_fields = ("question", "answer")

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        if self.cfg["extractor"] not in ("judge", "chair"):
            raise ValueError(f"benchmark.extractor: unknown {self.cfg['extractor']!r}; valid: judge, chair")
        self.vocab = object_vocab(str(self.cfg["synonyms"]))
        self._items: list[Item] | None = None

    def uses_judge(self) -> bool:
        """False with the CHAIR extractor."""
        return self.cfg["extractor"] == "judge"

    def label(self) -> str:
        """``object_halbench/<ground truth>/<synonyms>/`` + the judge, or ``extractor=chair``."""
        return super().label() if self.uses_judge() else f"{super().label()}/extractor=chair"

    def items(self) -> list[Item]:
        """The questions in file order (the first ``limit`` when set); ids are ``idx``."""
        if self._items is not None:
            return self._items
        c = self.cfg
        source = c["question_file"] or QUESTION_FILE
        rows = load_question_records(source, c["split"])
        root = Path(c["image_root"]).expanduser() if c["image_root"] else None
        gt = load_ground_truth(str(c["ground_truth"]))
        out, seen = [], set()
        for i, r in enumerate(rows):
            if r.get("image_id") is None or r.get("question") is None:
                raise ValueError(f"{source}, record {i + 1}: needs image_id and question; keys: {sorted(r)}")
            qid = r.get("idx") if r.get("idx") is not None else i
            if str(qid) in seen:
                raise ValueError(f"{source}, record {i + 1}: duplicate idx {qid!r}")
            seen.add(str(qid))
            imid = int(r["image_id"])
            if imid not in gt:
                raise ValueError(f"{source}, record {i + 1}: COCO image {imid} is not in the CHAIR ground truth")
            names = [str(p).format(image_id=imid) for p in c["image_files"]]
            inline, path = _inline_image(r.get("image")), None
            if root is not None and inline is None:
                path = str(next((root / n for n in names if (root / n).is_file()), root / names[0]))
            out.append(Item(qid, str(r["question"]), path, names[0], {"image_id": imid}, inline))
        if c["limit"] is not None:
            out = out[: int(c["limit"])]
        self._items = out
        return out

    def load_answers(self, path: str | Path) -> list[dict]:
        """Our answers JSONL, or any file keyed by ``question_id``, ``idx`` or COCO ``image_id`` (also in ``metainfos``)."""
        by_image = {it.meta["image_id"]: it.question_id for it in self.items()}
        out = []
        for i, r in enumerate(read_jsonl(path), start=1):
            where = f"{path}, record {i}"
            if "question_id" not in r:
                imid = r.get("image_id", (r.get("metainfos") or {}).get("image_id"))
                if r.get("idx") is not None:
                    r = {**r, "question_id": r["idx"]}
                elif imid is not None and int(imid) in by_image:
                    r = {**r, "question_id": by_image[int(imid)]}
                elif imid is not None:
                    raise AnswerMismatchError(str(path), [], [imid], len(by_image))
            out.append(normalise_record(r, self.cfg["answer_key"], "question_id" if "question_id" in r else None, where))
        return out

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Response / object hallucination rates and object recall, with each response's objects."""
        items = self.items()
        records = [r if "answer" in r and "question_id" in r else
                   normalise_record(r, self.cfg["answer_key"], None, f"{source}, record {i + 1}")
                   for i, r in enumerate(records)]
        by_id = index_by_id(records, source)
        match_ids([it.question_id for it in items], by_id, source)
        gt = load_ground_truth(str(self.cfg["ground_truth"]))
        texts = {str(it.question_id): clean_response(by_id[str(it.question_id)]["answer"]) for it in items}
        outcomes = {}
        if self.uses_judge():
            prompt = self.load_prompt()
            reqs = [JudgeRequest(str(it.question_id), prompt.render(question=it.prompt, answer=texts[str(it.question_id)]),
                                 _parse, role="system", meta={"question_id": it.question_id})
                    for it in items if len(texts[str(it.question_id)].split()) > 3]
            outcomes = {o.id: o for o in self.engine().run(reqs, desc="object_halbench judge")}
        triples, details = [], []
        for it in items:
            qid, text = str(it.question_id), texts[str(it.question_id)]
            objects = gt[it.meta["image_id"]]
            o = outcomes.get(qid)
            if not self.uses_judge():
                found, names = objects_from_text(text, self.vocab), None
            elif o is None:  # a short answer: no objects, no request
                found, names = [], []
            elif o.status != "ok":
                details.append({"question_id": it.question_id, "status": o.status, "reason": o.reason,
                                "reply": o.reply})
                continue
            else:
                names = o.value
                found = objects_from_list(names, self.vocab)
            triples.append((text, found, objects))
            details.append({"question_id": it.question_id, "image_id": it.meta["image_id"], "extracted": names,
                            "mentions": [list(m) for m in found],
                            "hallucinated": sorted({obj for _, obj in found if obj not in objects}),
                            "status": o.status if o else "ok"})
        scores = object_halbench_scores(triples)
        scores["n_answers"] = len(items)
        scores["judge"] = self.judge_summary(list(outcomes.values()))
        scores["judgments"] = details
        return scores
