"""RePOPE (Neuhaus & Hein, 2025): COCO POPE with corrected labels and ambiguous questions removed.

RePOPE (YanNeu/RePOPE ``annotations/coco_repope_<split>.json``, shipped in ``benchmarks/data/repope/``)
keeps 2,774 / 2,727 / 2,684 of the 3,000 current COCO POPE questions of the random / popular /
adversarial split, with the same ``question_id``, image and text, and flips 144 / 178 / 172 labels.

Items are the kept POPE questions, in POPE file order, with RePOPE's label (``meta.label``; POPE's
label is kept as ``meta.pope_label``). Answers are joined by POPE question id, so a POPE answers file
scores directly; answers to the questions RePOPE removed are ignored and counted
(``removed_answers_ignored``). Everything else about ids works as in ``benchmarks.pope`` (``split: all``
ids ``"<split>/<id>"``, ``category`` fields, LLaVA's combined ids).

``version: 2023-08`` reads answers keyed by the ids of POPE's original release (LLaVA-1.5 and OPERA
evaluate it). Its popular and adversarial files are the current ones (same ids; "imange" typos fixed
since); its random file has 2,910 questions with other ids. RePOPE questions are matched to it by
image and question text (typo fixed); the 87 RePOPE random questions that release lacks are left
out (``not_in_version``).

The answer rule is RePOPE's (``parser: repope``, see ``benchmarks.yes_no``): an answer with neither
'yes' nor 'no' in it drops out of every metric and is counted in ``unparsed``. Metrics are POPE's:
accuracy, precision, recall, F1, yes ratio (percent, yes is the positive class) per split; RePOPE's
reference reports the same quantities as fractions.
"""
from __future__ import annotations

from typing import Any, Mapping

from benchmarks.base import DATA_DIR, Item
from benchmarks.loading import load_question_records
from benchmarks.pope import POPE, SPLITS, question_file_path
from harness.errors import ConfigValueError
from harness.registry import BENCHMARKS

REPOPE_DIR = DATA_DIR / "repope"


def repope_file(split: str):
    """The shipped RePOPE annotation file of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown RePOPE split {split!r}; valid choices: {', '.join(SPLITS)}, all")
    return REPOPE_DIR / f"coco_repope_{split}.json"


def content_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """(image, question text) of a POPE row, with the 2023-08 release's "imange" typo fixed."""
    return str(row["image"]), " ".join(str(row["text"]).replace("imange", "image").split())


def relabel(pope_rows: list[dict], repope_rows: list[dict], by_content: bool, where: str) -> tuple[list[dict], set[str], int]:
    """POPE rows kept by RePOPE (with RePOPE's label, POPE's as ``pope_label``), the ids of the removed
    ones, and the number of RePOPE questions these POPE rows lack.

    Rows are matched by question id (checking image and text agree), or by content when ``by_content``.
    """
    key = content_key if by_content else (lambda r: r["question_id"])
    relabelled = {key(r): r for r in repope_rows}
    kept, removed, used = [], set(), 0
    for row in pope_rows:
        match = relabelled.get(key(row))
        if match is None:
            removed.add(str(row["question_id"]))
            continue
        if not by_content and content_key(match) != content_key(row):
            raise ValueError(f"{where}: RePOPE question {row['question_id']} is not POPE's "
                             f"({content_key(match)} vs {content_key(row)})")
        used += 1
        kept.append({**row, "label": match["label"], "pope_label": row["label"]})
    return kept, removed, len(relabelled) - used


@BENCHMARKS.register("repope")
class RePOPE(POPE):
    """RePOPE labels over the COCO POPE questions of one split or all three."""

    name = "repope"
    label_keys = ("split", "version", "parser")

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        if self.cfg["dataset"] != "coco":
            raise ConfigValueError(f"benchmark.dataset: RePOPE relabels COCO POPE only; got {self.cfg['dataset']!r}")
        self._removed: dict[str, set[str]] = {}
        self.not_in_version: dict[str, int] = {}

    def _split_rows(self) -> dict[str, list[dict]]:
        """Relabelled POPE rows per split (or the `question_file` override's rows, as in POPE)."""
        c = self.cfg
        out = {}
        for s in self.splits:
            where = f"RePOPE {s} ({c['version']})"
            pope_rows = load_question_records(question_file_path("coco", s, c["version"]))
            kept, removed, lacking = relabel(pope_rows, load_question_records(repope_file(s)),
                                             by_content=c["version"] != "current", where=where)
            out[s], self._removed[s], self.not_in_version[s] = kept, removed, lacking
        if c["question_file"] is not None:
            out = super()._split_rows()
        self._rows = out
        return out

    def items(self) -> list[Item]:
        """The kept questions with RePOPE's label (and POPE's as ``meta.pope_label`` when known)."""
        if self._items is not None:
            return self._items
        items = super().items()  # reads _split_rows() once
        multi = len(self.splits) > 1
        pope = {(s, str(r["question_id"])): r.get("pope_label") for s, rs in self._rows.items() for r in rs}
        for it in items:
            raw = str(it.question_id).split("/", 1)[1] if multi else str(it.question_id)
            label = pope.get((it.meta["split"], raw))
            if label is not None:
                it.meta["pope_label"] = label
        return items

    def _removed_ids(self) -> set[str]:
        """Benchmark-form ids of the POPE questions RePOPE removed (``split/id`` with split=all)."""
        if not self._removed:
            self.items()
        multi = len(self.splits) > 1
        return {f"{s}/{q}" if multi else q for s, ids in self._removed.items() for q in ids}

    def set_aside(self, by_id: dict[str, dict]) -> dict:
        """Drop answers to the questions RePOPE removed; returns their count (and, for 2023-08, the questions it lacks)."""
        removed = self._removed_ids() - {str(it.question_id) for it in self.items()}
        dropped = [k for k in list(by_id) if k in removed]
        for k in dropped:
            del by_id[k]
        out: dict[str, Any] = {"removed_answers_ignored": len(dropped)}
        if self.cfg["question_file"] is None and self.cfg["version"] != "current":
            out["not_in_version"] = sum(self.not_in_version.values())
        return out
