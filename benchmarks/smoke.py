"""The bundled smoke benchmark: the shipped real COCO images, captioned (CHAIR) and asked yes/no questions (POPE).

Six COCO val2014 images ship with the project. Each gets one captioning item and four
POPE-style questions: two objects from its CHAIR ground truth (label yes) and two
objects absent from it (label no), chosen deterministically from the most frequent COCO
objects. It runs in seconds on a tiny model and exercises both scorers end to end.
"""
from __future__ import annotations

from benchmarks.base import DATA_DIR, Benchmark, Item, index_by_id, match_ids
from benchmarks.chair import CHAIR_DIRECTIONS, UNIT_COLUMNS, chair_metric_arrays
from benchmarks.yes_no import (BINARY_DIRECTIONS, CONFUSION_COLUMNS, binary_metric_arrays, binary_metrics,
                               confusion_row, get_parser)
from harness.records import require_text
from harness.registry import BENCHMARKS

ABSENT_POOL = ("dog", "car", "cat", "bus", "horse", "bicycle", "clock", "umbrella", "laptop", "train")


def _coco_id(file_name: str) -> int:
    return int(file_name.rsplit("_", 1)[-1].split(".")[0])


@BENCHMARKS.register("smoke")
class SmokeBenchmark(Benchmark):
    """Captioning + yes/no existence questions on the shipped COCO images."""

    name = "smoke"
    headline_metrics = ("CHAIRs", "CHAIRi", "pope_accuracy", "pope_f1")
    metric_directions = {**CHAIR_DIRECTIONS, **{f"pope_{k}": v for k, v in BINARY_DIRECTIONS.items()}}
    label_keys = ()

    def _chair(self):
        return BENCHMARKS.get("chair")({"name": "chair", "ground_truth": self.cfg["ground_truth"]})

    def items(self) -> list[Item]:
        """One caption item and four yes/no items per shipped image."""
        from benchmarks.chair_metric import load_ground_truth

        gt = load_ground_truth(self.cfg["ground_truth"])
        out: list[Item] = []
        for path in sorted((DATA_DIR / "images").glob("COCO_val2014_*.jpg")):
            cid = _coco_id(path.name)
            objects = sorted(gt[cid])
            meta = {"kind": "caption", "coco_id": cid}
            out.append(Item(f"caption/{cid}", self.cfg["caption_prompt"],
                            str(path), path.name, meta))
            absent = [o for o in ABSENT_POOL if o not in objects][:2]
            for k, (obj, label) in enumerate([(o, "yes") for o in objects[:2]] + [(o, "no") for o in absent]):
                q = self.cfg["question_template"].format(obj=obj)
                out.append(Item(f"pope/{cid}/{k}", q, str(path), path.name,
                                {"kind": "yes_no", "coco_id": cid, "object": obj, "label": label}))
        return out

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """CHAIR metrics over the captions and POPE metrics (prefixed pope_) over the yes/no answers.

        A duplicated, missing or unknown id, or a non-string answer, is an error naming the record.
        """
        items = {str(it.question_id): it for it in self.items()}
        by_id = index_by_id(records, source)
        match_ids(items, by_id, source)
        for i, r in enumerate(records):
            require_text(r["answer"], f"{source}, record {i + 1} (id {r['question_id']})")
        pairs = [(r, items[str(r["question_id"])].meta) for r in records]
        captions = [{"question_id": meta["coco_id"], "answer": r["answer"]} for r, meta in pairs
                    if meta["kind"] == "caption"]
        scores = dict(self._chair().score(captions, source=source)) if captions else {}
        scores.pop("n_outside_image_set", None)  # the smoke images are not a CHAIR image set
        scores.pop("unparsed", None)  # CHAIR has no parse step
        if "n" in scores:
            scores["chair_n"] = scores.pop("n")
        parser = get_parser(self.cfg["parser"])
        yn = [(parser(r["answer"], meta["label"]), meta["label"]) for r, meta in pairs if meta["kind"] == "yes_no"]
        if yn:
            m = binary_metrics([p.pred for p, _ in yn], [label for _, label in yn])
            scores.update({f"pope_{k}": v for k, v in m.items()})
            scores["pope_unparsed"] = sum(p.unparsed for p, _ in yn)
        scores["n"] = len(records)
        return scores

    def units(self, records: list[dict], source: str = "answers"):
        """Caption units (CHAIR counts, stratum "caption") and question units (confusion cells, "yes_no")."""
        import numpy as np

        from harness.stats import Units

        items = {str(it.question_id): it for it in self.items()}
        match_ids(items, [r["question_id"] for r in records], source)
        width = len(UNIT_COLUMNS) + len(CONFUSION_COLUMNS)
        ids, rows, strata = [], [], []
        captions = [r for r in records if items[str(r["question_id"])].meta["kind"] == "caption"]
        if captions:
            cu = self._chair().units([{"question_id": items[str(r["question_id"])].meta["coco_id"],
                                       "answer": r["answer"]} for r in captions], source)
            for r, vals in zip(captions, cu.values):
                ids.append(str(r["question_id"]))
                rows.append(np.concatenate([vals, np.zeros(len(CONFUSION_COLUMNS))]))
                strata.append(0)
        parser = get_parser(self.cfg["parser"])
        for r in records:
            meta = items[str(r["question_id"])].meta
            if meta["kind"] == "yes_no":
                ids.append(str(r["question_id"]))
                cell = confusion_row(parser(r["answer"], meta["label"]).pred, meta["label"])
                rows.append(np.concatenate([np.zeros(len(UNIT_COLUMNS)), cell]))
                strata.append(1)
        return Units(ids, np.reshape(rows, (len(rows), width)), UNIT_COLUMNS + CONFUSION_COLUMNS, strata,
                     ("caption", "yes_no"))

    def metrics_from_sums(self, sums):
        """The CHAIR metrics of the captions and the pope_ rates of the questions."""
        from harness.stats import column

        cols = UNIT_COLUMNS + CONFUSION_COLUMNS
        out = {}
        if column(sums, cols, "captions", 0)[0]:
            out.update(chair_metric_arrays(sums, cols, 0))
        if column(sums, cols, "tp", 1)[0] + column(sums, cols, "fp", 1)[0] + column(sums, cols, "tn", 1)[0] \
                + column(sums, cols, "fn", 1)[0]:
            out.update({f"pope_{k}": v for k, v in
                        binary_metric_arrays(*(column(sums, cols, c, 1) for c in CONFUSION_COLUMNS)).items()})
        return out

    def data_files(self) -> list:
        """The shipped images and the CHAIR ground truth."""
        from benchmarks.chair_metric import GROUND_TRUTH_FILES

        gt = self.cfg["ground_truth"]
        return sorted((DATA_DIR / "images").glob("COCO_val2014_*.jpg")) + [GROUND_TRUTH_FILES.get(gt, gt)]
