"""The ``chair`` benchmark: detailed captions of COCO val2014 images, scored with CHAIR.

Config node keys (see ``configs/benchmark/chair.yaml``): ``ground_truth`` (lemma_pos | singularize |
path to an imid_to_objects JSON), ``image_set`` (chair500 | damro500 | path to a JSONL/JSON list with
``image`` or ``image_id``), ``image_root``, ``prompt``, ``limit``, ``max_new_tokens``, ``id_key``,
``caption_key``, ``fix_vocab_quirks`` (see ``benchmarks/chair_metric.py``) and ``workers`` (processes that
analyse the distinct captions; null: 1 below 2,000 distinct captions, else half the cores, at most 4).

Scoring is score-only friendly: every caption whose COCO id is in the ground truth is scored, also
when the image is outside the configured image set (published logs use other 500-image samples);
``n_outside_image_set`` says how many were. Unknown and duplicated image ids are errors.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable

from benchmarks.base import AnswerMismatchError, Benchmark, Item
from benchmarks.chair_counts import chair_counts
from benchmarks.chair_metric import (COUNT_COLUMNS, caption_detail, chair_overall, coco_image_id,
                                     load_ground_truth, load_vocab)
from harness.errors import ConfigValueError, NothingToScoreError
from harness.records import MalformedRecordError, normalise_record, read_jsonl, read_text
from harness.registry import BENCHMARKS

#: named image sets: shipped file and the key holding the COCO image (id or file name)
IMAGE_SETS = {
    "chair500": ("chair/chair-500.jsonl", "image"),  # less-is-more CHAIR-eval, 500 val2014 images, seed 0
    "damro500": ("chair/damro_chair_images_500.jsonl", "image_id"),  # DAMRO = the POPE-COCO 500 images
    # the 500 images the middle-layers (head_guide) reference evaluated, in its order
    "middle_layers500": ("chair/middle_layers_llava15_500.jsonl", "image_id"),
}
CHAIR_DIRECTIONS = {"CHAIRs": "lower", "CHAIRi": "lower", "Recall": "higher", "Precision": "higher", "F1": "higher"}
#: per-caption unit columns (sums over captions give every CHAIR metric)
UNIT_COLUMNS = COUNT_COLUMNS
ID_KEYS = ("image_id", "question_id")  # auto-detected id keys, in order
CAPTION_KEYS = ("caption", "text", "answer")  # auto-detected caption keys, in order


@functools.lru_cache(maxsize=8)
def _image_set_ids(image_set: str) -> tuple[int, ...]:
    """COCO ids of a named image set or of a JSON/JSONL file with ``image`` or ``image_id`` rows."""
    from benchmarks.loading import load_question_records

    if image_set in IMAGE_SETS:
        source, key = IMAGE_SETS[image_set]
    else:
        p = Path(image_set).expanduser()
        if not p.exists():
            raise ConfigValueError(f"unknown CHAIR image_set {image_set!r}: use one of {sorted(IMAGE_SETS)} "
                             "or a JSON/JSONL file whose rows have `image` or `image_id`")
        source, key = str(p), None
    rows = load_question_records(source)
    return tuple(coco_image_id(r[key] if key else (r.get("image_id") if r.get("image_id") is not None else r["image"]))
                 for r in rows)


class DuplicateImageIdError(AnswerMismatchError):
    """Several captions for the same COCO image: CHAIR would count that image more than once."""

    def __init__(self, source: str, duplicates: list):
        self.missing, self.unknown, self.duplicates = [], [], duplicates
        head = ", ".join(map(str, duplicates[:10])) + (f", ... ({len(duplicates)} in all)" if len(duplicates) > 10 else "")
        ValueError.__init__(self, f"answers in {source} have several captions for the same image: {head}")


def pick_key(rec: dict, configured: str | None, candidates: tuple[str, ...]) -> str | None:
    """The configured key if present, else the first candidate with a non-null value, else the first present."""
    if configured:
        return configured if configured in rec else None
    present = [k for k in candidates if k in rec]
    return next((k for k in present if rec[k] is not None), present[0] if present else None)


@BENCHMARKS.register("chair")
class ChairBenchmark(Benchmark):
    """CHAIRs / CHAIRi / Recall (+ Precision, F1, Len) of free-form image descriptions."""

    name = "chair"
    headline_metrics = ("CHAIRs", "CHAIRi", "Recall", "F1", "Len")
    metric_directions = CHAIR_DIRECTIONS
    label_keys = ("ground_truth",)
    task = "open"

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        c = self.cfg
        self.ground_truth_name = str(c["ground_truth"])
        self.image_set = str(c["image_set"])
        self.image_root = c["image_root"]
        self.prompt = c["prompt"]
        self.limit = c["limit"]
        self.max_new_tokens = int(c["max_new_tokens"])
        self.id_key, self.caption_key = c["id_key"], c["caption_key"]
        self.vocab = load_vocab(bool(c["fix_vocab_quirks"]))
        self.workers = c.get("workers")
        self._gt = None
        self._counts: tuple[tuple, list] | None = None  # (pairs, their count rows) of the last scoring

    # -------------------------------------------------------------- data
    @property
    def ground_truth(self) -> dict[int, frozenset[str]]:
        """COCO image id -> MSCOCO objects of the configured ground-truth variant (loaded once)."""
        if self._gt is None:
            self._gt = load_ground_truth(self.ground_truth_name)
        return self._gt

    def image_ids(self) -> list[int]:
        """COCO ids of the configured image set, in file order, cut to ``limit``."""
        ids = list(_image_set_ids(self.image_set))
        return ids[: int(self.limit)] if self.limit is not None else ids

    def items(self) -> list[Item]:
        """One description request per image: question_id = COCO id, image_id = val2014 file name."""
        root = Path(self.image_root).expanduser().resolve() if self.image_root else None
        out = []
        for imid in self.image_ids():
            fname = f"COCO_val2014_{imid:012d}.jpg"
            out.append(Item(question_id=imid, prompt=self.prompt, image_path=str(root / fname) if root else None,
                            image_id=fname, meta={"coco_id": imid}))
        return out

    # -------------------------------------------------------------- answers
    def load_answers(self, path: str | Path) -> list[dict]:
        """Caption records of a file (answers JSONL, JSONL/JSON array of captions, or a CHAIR output JSON
        with ``sentences``), each with ``question_id`` = COCO id (when parsable) and ``answer`` = caption."""
        try:
            recs = read_jsonl(path)
        except MalformedRecordError:
            try:
                data = json.loads(read_text(path, "answers file"))
            except json.JSONDecodeError:
                data = None
            if not (isinstance(data, dict) and isinstance(data.get("sentences"), list)):
                raise
            recs = data["sentences"]
        out = []
        for i, rec in enumerate(recs):
            where = f"{path}, record {i + 1}"
            ik, ck = pick_key(rec, self.id_key, ID_KEYS), pick_key(rec, self.caption_key, CAPTION_KEYS)
            out.append(self._normalise(rec, ik, ck, where))
        return out

    def _normalise(self, rec: dict, ik: str | None, ck: str | None, where: str) -> dict:
        if ik is None:
            raise MalformedRecordError(f"{where}: no image id (looked for {self.id_key or ', '.join(ID_KEYS)}); "
                                       f"keys: {sorted(rec)}")
        if ck is None:
            raise MalformedRecordError(f"{where}: no caption (looked for {self.caption_key or ', '.join(CAPTION_KEYS)});"
                                       f" keys: {sorted(rec)}")
        out = normalise_record(rec, answer_key=ck, id_key=ik, where=where)
        try:
            out["question_id"] = coco_image_id(out["question_id"])
        except ValueError:
            pass  # reported as an unknown id by score()
        return out

    def _pairs(self, records: Iterable[dict], source: str) -> tuple[list[tuple[int, str]], int]:
        """(COCO id, caption) of the scorable records, and the number of skipped ones; checks the ids."""
        pairs, unknown, seen, dups, skipped = [], [], set(), [], 0
        for i, rec in enumerate(records):
            if rec.get("skipped"):
                skipped += 1
                continue
            ik, ck = pick_key(rec, self.id_key, ID_KEYS), pick_key(rec, self.caption_key, CAPTION_KEYS)
            r = self._normalise(rec, ik, ck, f"{source}, record {i + 1}")
            imid, caption = r["question_id"], r["answer"]
            if type(imid) is not int or imid not in self.ground_truth:
                unknown.append(imid)
                continue
            if imid in seen:
                dups.append(imid)
            seen.add(imid)
            pairs.append((imid, str(caption)))
        if unknown:
            raise AnswerMismatchError(source, [], unknown, len(self.ground_truth))
        if dups:
            raise DuplicateImageIdError(source, sorted(set(dups)))
        return pairs, skipped

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """CHAIRs, CHAIRi, Recall, Precision, F1 (percent), Len (mean word count) and counts."""
        pairs, skipped = self._pairs(records, source)
        if not pairs:
            raise NothingToScoreError(f"no captions to score in {source}")
        o = chair_overall(self._count_rows(pairs))
        in_set = set(self.image_ids())
        res: dict[str, Any] = {k: 100.0 * o[k] for k in ("CHAIRs", "CHAIRi", "Recall", "Precision", "F1")}
        res.update(Len=o["Len"], n=o["n"], n_outside_image_set=sum(1 for i, _ in pairs if i not in in_set),
                   n_skipped=skipped, n_mentions=o["n_mentions"], n_hallucinated=o["n_hallucinated"], unparsed=0)
        return res

    def _count_rows(self, pairs: list[tuple[int, str]]) -> list[tuple[int, ...]]:
        """COUNT_COLUMNS rows of the pairs (reused when score() and units() see the same captions)."""
        key = tuple(pairs)
        if self._counts is None or self._counts[0] != key:
            self._counts = (key, chair_counts(pairs, self.ground_truth, self.vocab, self.workers))
        return self._counts[1]

    def details(self, records: list[dict], source: str = "answers") -> list[dict]:
        """Per-caption CHAIR records (hallucinated/GT/generated words, located mentions, metrics)."""
        pairs, _ = self._pairs(records, source)
        out = []
        for imid, cap in pairs:
            out.append(caption_detail(cap, self.ground_truth[imid], imid, self.vocab))
        return out

    # -------------------------------------------------------------- statistics and provenance
    def units(self, records: list[dict], source: str = "answers"):
        """One unit per caption: its mention, hallucination, recall and length counts (see UNIT_COLUMNS)."""
        from harness.stats import Units

        pairs, _ = self._pairs(records, source)
        rows = self._count_rows(pairs)
        return Units([str(i) for i, _ in pairs], rows, UNIT_COLUMNS, [0] * len(rows))

    def metrics_from_sums(self, sums):
        """CHAIRs, CHAIRi, Recall, Precision, F1 (percent) and Len from per-caption sums."""
        return chair_metric_arrays(sums, UNIT_COLUMNS)

    def data_files(self) -> list[Path]:
        """The image-set file and the ground-truth JSON."""
        from benchmarks.base import DATA_DIR
        from benchmarks.chair_metric import GROUND_TRUTH_FILES

        files = [DATA_DIR / IMAGE_SETS[self.image_set][0] if self.image_set in IMAGE_SETS else Path(self.image_set)]
        files.append(GROUND_TRUTH_FILES.get(self.ground_truth_name) or Path(self.ground_truth_name))
        return [f.expanduser() for f in files]


def chair_metric_arrays(sums, columns: tuple[str, ...], stratum=slice(None)) -> dict:
    """CHAIR metrics (percent; Len in words) per resample from (B, strata, k) sums of UNIT_COLUMNS."""
    from harness.stats import column, ratio

    def c(name):
        return column(sums, columns, name, stratum)

    mentions = c("mentions")
    chair_i = ratio(c("hallucinated_mentions"), mentions)
    precision = (mentions > 0) * (1.0 - chair_i)
    recall = ratio(c("recalled"), c("gt_objects"))
    return {"CHAIRs": 100 * ratio(c("hallucinated_captions"), c("captions")), "CHAIRi": 100 * chair_i,
            "Recall": 100 * recall, "Precision": 100 * precision,
            "F1": 100 * ratio(2 * precision * recall, precision + recall), "Len": ratio(c("words"), c("captions"))}
