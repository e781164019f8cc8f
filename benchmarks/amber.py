"""AMBER (Wang et al., 2023): descriptions (generative) and yes/no queries (discriminative) on 1,004 images.

Data (``benchmarks/data/amber/``, from junyangwang0410/AMBER ``data/``): ``query_all.json`` (15,220
``{id, image, query}``; ids 1-1004 "Describe this image.", 1005-15220 yes/no queries),
``annotations.json`` (entry i-1 belongs to id i: ``type``, ``truth`` and, for descriptions,
``hallu``), ``relation.json`` and ``safe_words.txt``. Images (``AMBER_<n>.jpg``) are not shipped:
``image_root`` points at them. ``query_all.json`` asks "computer" for id 13193 where the per-task
``query_discriminative*.json`` files ask "chair"; both are label "no".

``task`` selects items like the reference's ``--evaluation_type``: all (a), generative (g),
discriminative (d), existence (de), attribute (da), relation (dr). Item ids are AMBER ids, so
AMBER's own answer files (``[{id, response}]``), LLaVA-style JSONL (``question_id``, ``text``) and
ours score directly; answers to AMBER ids outside the configured task are ignored and counted
(``ignored_answers``), unknown, missing or duplicate ids are errors.

Metrics (see ``benchmarks.amber_metric``): CHAIR, Cover, Hal, Cog on descriptions (spaCy word
similarity, model ``spacy_model``); accuracy, precision, recall, F1 with "No" positive per
dimension (existence, attribute with state/number/action, relation) and overall; ``amber_score`` =
(100 - CHAIR + F1) / 2 when both tasks are scored. ``unparsed`` counts yes/no answers that are
neither "Yes" nor "No" under ``answer_rule`` (they are wrong, as in the reference).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from benchmarks.amber_metric import (ANSWER_RULES, DIMENSIONS, ROUNDINGS, TYPE_GROUP, amber_score,
                                     analyse_description, discriminative_scores, generative_scores, load_vocab,
                                     read_answer)
from benchmarks.amber_similarity import SpacySimilarity, check_spacy, load_spacy
from benchmarks.base import DATA_DIR, Benchmark, Item, index_by_id, match_ids
from benchmarks.loading import load_question_records
from harness.records import normalise_record, read_answers
from harness.registry import BENCHMARKS

AMBER_DIR = DATA_DIR / "amber"
GENERATIVE = "generative"
#: task -> the item groups it covers (attribute = its three kinds)
TASKS = {
    "all": (GENERATIVE, *DIMENSIONS),
    "generative": (GENERATIVE,),
    "discriminative": DIMENSIONS,
    "existence": ("existence",),
    "attribute": ("attribute",),
    "relation": ("relation",),
}



def dimension(kind: str) -> str:
    """The item group of an annotation type: generative, existence, attribute or relation."""
    if kind == GENERATIVE:
        return GENERATIVE
    if kind not in TYPE_GROUP:
        raise ValueError(f"unknown AMBER annotation type {kind!r}")
    group = TYPE_GROUP[kind]
    return "attribute" if group in ("state", "number", "action") else group


def _field(row: Mapping[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    raise ValueError(f"{where}: row has none of {keys}; keys: {sorted(row)}")


@BENCHMARKS.register("amber")
class Amber(Benchmark):
    """AMBER's generative and/or discriminative items with its reference metrics."""

    name = "amber"
    headline_metrics = ("amber_score", "CHAIR", "Cover", "Hal", "Cog", "accuracy", "f1")
    label_keys = ("task", "answer_rule", "rounding")

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        c = self.cfg
        for key, valid in (("task", tuple(TASKS)), ("rounding", ROUNDINGS), ("answer_rule", ANSWER_RULES)):
            if c[key] not in valid:
                raise ValueError(f"unknown AMBER {key} {c[key]!r}; valid choices: {', '.join(valid)}")
        self.groups = TASKS[c["task"]]
        self.task = "open" if GENERATIVE in self.groups else "yes_no"
        self.max_new_tokens = int(c["max_new_tokens"])
        self._items: list[Item] | None = None
        self._annotations: dict[int, dict] | None = None
        self._similar: SpacySimilarity | None = None

    def _path(self, key: str, shipped: str) -> str:
        return str(Path(self.cfg[key]).expanduser() if self.cfg[key] else AMBER_DIR / shipped)

    @property
    def annotations(self) -> dict[int, dict]:
        """AMBER id -> annotation entry (from the entry's ``id``; the reference reads entry id-1)."""
        if self._annotations is None:
            path = self._path("annotation_file", "annotations.json")
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
            self._annotations = {int(e["id"]): e for e in entries}
        return self._annotations

    def items(self) -> list[Item]:
        """The task's queries in file order (first `limit` when set); generative tasks check spaCy first."""
        if self._items is not None:
            return self._items
        c = self.cfg
        if GENERATIVE in self.groups:
            check_spacy(str(c["spacy_model"]))  # fail before hours of generation, not after
        source = c["question_file"] or AMBER_DIR / "query_all.json"
        root = Path(c["image_root"]).expanduser() if c["image_root"] else None
        out: list[Item] = []
        for i, row in enumerate(load_question_records(source)):
            where = f"AMBER questions {source}, row {i + 1}"
            qid = int(_field(row, ("id", "question_id"), where))
            ann = self.annotations.get(qid)
            if ann is None:
                raise ValueError(f"{where}: id {qid} has no AMBER annotation")
            group = dimension(ann["type"])
            if group not in self.groups:
                continue
            image = str(_field(row, ("image",), where))
            query = str(_field(row, ("query", "text", "question"), where))
            meta: dict[str, Any] = {"type": ann["type"], "dimension": group}
            if group == GENERATIVE:
                query = c["generative_prompt"] or query
            else:
                query += c["discriminative_suffix"] or ""
                meta["label"] = str(ann["truth"]).strip().lower()
            out.append(Item(qid, query, str(root / image) if root else None, image, meta))
        if c["limit"] is not None:
            out = out[: int(c["limit"])]
        if not out:
            raise ValueError(f"AMBER {source}: no questions for task {c['task']!r}")
        self._items = out
        return out

    # -- answers -----------------------------------------------------------------------
    def load_answers(self, path: str | Path) -> list[dict]:
        """Answer records of AMBER (``id``, ``response``), LLaVA (``question_id``, ``text``) or ours."""
        return read_answers(path, self.cfg["answer_key"], self.cfg["id_key"])

    def similarity(self) -> SpacySimilarity:
        """The spaCy near-synonym test (model loaded once)."""
        if self._similar is None:
            self._similar = SpacySimilarity(load_spacy(str(self.cfg["spacy_model"])), self.cfg["similarity_threshold"])
        return self._similar

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """AMBER's metrics for the task's items (flat generative keys, per-dimension dicts, overall yes/no)."""
        c = self.cfg
        recs = []
        for i, rec in enumerate(records):
            if "answer" not in rec or "question_id" not in rec:
                rec = normalise_record(rec, c["answer_key"], c["id_key"], f"{source}, record {i + 1}")
            recs.append(rec)
        by_id = index_by_id(recs, source)
        items = {str(it.question_id): it for it in self.items()}
        known = {str(k) for k in self.annotations}
        ignored = [k for k in by_id if k not in items and k in known]
        match_ids(items, [k for k in by_id if k not in ignored], source)
        order = [k for k in by_id if k in items]  # the answers file's order, as the reference iterates
        out: dict[str, Any] = {}
        gen = [k for k in order if items[k].meta["dimension"] == GENERATIVE]
        if gen:
            similar, vocab = self.similarity(), load_vocab(self._path("relation_file", "relation.json"),
                                                           self._path("safe_words_file", "safe_words.txt"))
            descs = []
            for k in gen:
                ann = self.annotations[int(k)]
                descs.append(analyse_description(by_id[k]["answer"], list(ann["truth"]), list(ann["hallu"]),
                                                 vocab, similar, where=f"AMBER id {k}"))
            out.update(generative_scores(descs, c["rounding"]))
        disc = [k for k in order if items[k].meta["dimension"] != GENERATIVE]
        if disc:
            answers = [(items[k].meta["type"], items[k].meta["label"], read_answer(by_id[k]["answer"], c["answer_rule"]))
                       for k in disc]
            out.update(discriminative_scores(answers, c["rounding"]))
            out["unparsed"] = sum(a is None for _, _, a in answers)
        if "CHAIR" in out and "f1" in out:
            out["amber_score"] = amber_score(out["CHAIR"], out["f1"], c["rounding"])
        out["n"] = len(order)
        out["ignored_answers"] = len(ignored)
        return out
