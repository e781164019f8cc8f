"""MME (Fu et al., 2023): 14 yes/no subtasks, two questions per image, scored as the official tool does.

Questions and ground truth come from the official eval tool's lists, shipped in
``benchmarks/data/mme/ground_truth/<subtask>.txt`` (``image \\t question \\t Yes|No``).
Item ids are ``"<subtask>/<image_name>/<k>"`` with k = 0 or 1, the question's order among
the image's two lines (e.g. ``"existence/000000006040.jpg/1"``).

Prompt: the official question ends in "Please answer yes or no."; with
``drop_yes_no_instruction: true`` (default) that sentence is removed and ``prompt_suffix`` is
appended verbatim, which with the default suffix gives exactly LLaVA-1.5's
``llava_mme.jsonl`` prompts (also RITUAL's). ``drop_yes_no_instruction: false`` with
``prompt_suffix: ""`` gives the official MME prompt.

Scoring (``calculation.py`` of the eval tool, BradyFU/Awesome-Multimodal-Large-Language-Models,
branch Evaluation): predictions are read by ``benchmarks.yes_no.parse_mme`` ('other' is wrong);
per subtask acc = correct / questions, acc+ = images with both questions right / images,
score = 100 acc + 100 acc+; perception = sum over its 10 subtasks, cognition over the other 4,
hallucination_total over existence, count, position, color. Totals are sums of the unrounded
subtask scores, as calculation.py prints them; ``leaderboard_totals`` sums the subtask scores
rounded to 2 decimals, as the MME leaderboard tables do (LaVIN: 963.61 vs published 963.6).
Questions are paired by image, never by line order.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from benchmarks.base import DATA_DIR, AnswerMismatchError, Benchmark, Item, index_by_id, match_ids
from benchmarks.yes_no import NO, YES, normalise_label, parse_mme
from harness.errors import ConfigValueError
from harness.records import MalformedRecordError, normalise_record, read_answers, read_text, require_text
from harness.registry import BENCHMARKS

GT_DIR = DATA_DIR / "mme" / "ground_truth"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
HALLUCINATION = ("existence", "count", "position", "color")
SUBTASKS = PERCEPTION + COGNITION
GROUPS = {"perception": PERCEPTION, "cognition": COGNITION, "hallucination_total": HALLUCINATION}
#: per-image unit columns: the image's questions, how many were right, whether all were, and 1 (the image)
UNIT_COLUMNS = ("questions", "correct", "all_correct", "images")
#: subtasks whose release folder keeps images in `<subtask>/images/` (the others: `<subtask>/`)
IMAGES_SUBDIR = ("artwork", "celebrity", "landmark", "posters", "scene")
YES_NO_INSTRUCTION = re.compile(r"\s*Please answer yes or no\.\s*$")
LLAVA_SUFFIX = "Answer the question using a single word or phrase."



def read_ground_truth(subtask: str, gt_dir: Path = GT_DIR) -> list[tuple[str, str, str]]:
    """(image_name, question, 'yes'|'no') lines of one subtask's official ground-truth list."""
    path = gt_dir / f"{subtask}.txt"
    rows = []
    for i, line in enumerate(read_text(path, "MME ground-truth file").splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise MalformedRecordError(f"{path}, line {i}: expected 3 tab-separated columns, got {len(cols)}")
        rows.append((cols[0], cols[1], normalise_label(cols[2], f"{path}, line {i}")))
    return rows


def read_result_folder(folder: str | Path) -> dict[str, list[dict]]:
    """Lines of an eval-tool result folder (``<subtask>.txt``: image, question, gt, prediction) per subtask.

    Files not named after a subtask are ignored, as are blank lines; any other line without
    exactly 4 tab-separated columns raises MalformedRecordError naming file and line. The
    prediction may be empty.
    """
    folder = Path(folder)
    out: dict[str, list[dict]] = {}
    for subtask in SUBTASKS:
        path = folder / f"{subtask}.txt"
        if not path.is_file():
            continue
        lines = []
        for i, line in enumerate(read_text(path, "MME result file").split("\n"), start=1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 4:
                raise MalformedRecordError(
                    f"{path}, line {i}: expected 4 tab-separated columns "
                    f"(image, question, ground truth, prediction), got {len(cols)}")
            lines.append({"image": cols[0], "question": cols[1], "gt": cols[2], "answer": cols[3],
                          "where": f"{path}, line {i}"})
        out[subtask] = lines
    return out


def core_question(question: str) -> str:
    """A question without the yes/no instruction or LLaVA's suffix, for matching other tools' prompts."""
    q = question.replace(LLAVA_SUFFIX, "").strip()
    return YES_NO_INSTRUCTION.sub("", q).strip()


@BENCHMARKS.register("mme")
class MME(Benchmark):
    """MME yes/no questions for all 14 subtasks or a chosen subset."""

    name = "mme"
    task = "yes_no"
    headline_metrics = ("hallucination_total", "perception", "cognition")
    metric_directions = {"hallucination_total": "higher", "perception": "higher", "cognition": "higher",
                         "acc": "higher", "acc_plus": "higher", "score": "higher"}

    def label(self) -> str:
        """'mme', 'mme/hallucination' for the four hallucination subtasks, else 'mme/<subtasks>'."""
        role = f"/{self.cfg['split_role']}" if self.cfg.get("split_role") is not None else ""
        if not self.explicit_subtasks:
            return "mme" + role
        if set(self.subtasks) == set(HALLUCINATION):
            return "mme/hallucination" + role
        return "mme/" + "+".join(self.subtasks) + role

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        chosen = self.cfg["subtasks"]
        self.explicit_subtasks = chosen is not None
        self.subtasks: tuple[str, ...] = tuple(chosen) if chosen is not None else SUBTASKS
        bad = [s for s in self.subtasks if s not in SUBTASKS]
        if bad or not self.subtasks:
            raise ConfigValueError(f"unknown MME subtasks {bad}; valid choices: {', '.join(SUBTASKS)}")
        self.max_new_tokens = int(self.cfg["max_new_tokens"])
        self._items: list[Item] | None = None

    def image_path(self, subtask: str, image_name: str) -> str | None:
        """The image file in the user's MME release folder: whichever layout exists, else the expected one."""
        if not self.cfg["root"]:
            return None
        base = Path(self.cfg["root"]).expanduser() / subtask
        nested, flat = base / "images" / image_name, base / image_name
        if nested.exists():
            return str(nested)
        if flat.exists():
            return str(flat)
        return str(nested if subtask in IMAGES_SUBDIR else flat)

    def prompt(self, question: str) -> str:
        """The text fed to the model for one official question."""
        if self.cfg["drop_yes_no_instruction"]:
            question = YES_NO_INSTRUCTION.sub("", question)
        return question + (self.cfg["prompt_suffix"] or "")

    def items(self) -> list[Item]:
        """The questions of the chosen subtasks, in ground-truth file order."""
        if self._items is not None:
            return self._items
        out = []
        hub = self._question_file_rows() if self.cfg["question_file"] else None
        for subtask in self.subtasks:
            seen: dict[str, int] = defaultdict(int)
            rows = hub.get(subtask, []) if hub is not None else [
                (image_name, question, label, None) for image_name, question, label in read_ground_truth(subtask)]
            for image_name, question, label, inline in rows:
                k = seen[image_name]
                seen[image_name] += 1
                out.append(Item(
                    question_id=f"{subtask}/{image_name}/{k}",
                    prompt=self.prompt(question),
                    image_path=self.image_path(subtask, image_name) if inline is None else None,
                    image_id=f"{subtask}/{image_name}",
                    meta={"subtask": subtask, "label": label, "image_name": image_name, "question": question},
                    image=inline,
                ))
        self._items = out
        return out

    def _question_file_rows(self) -> dict[str, list[tuple]]:
        """(image_name, question, label, embedded image) per subtask from `question_file`.

        The file (local JSON/JSONL/Parquet, or a hub id such as lmms-lab/MME) has rows with
        `category` (the subtask), `question_id` ("<subtask>/<image>"), `question`, `answer`
        (Yes/No) and `image` (a file name, or an embedded image as hub datasets ship it).
        """
        from benchmarks.base import embedded_image
        from benchmarks.loading import load_question_records

        out: dict[str, list[tuple]] = defaultdict(list)
        for i, row in enumerate(load_question_records(self.cfg["question_file"], split="test")):
            where = f"{self.cfg['question_file']}, row {i + 1}"
            try:
                subtask, qid, question = row["category"], str(row["question_id"]), row["question"]
            except KeyError as e:
                raise MalformedRecordError(f"{where}: MME question rows need category, question_id, question; "
                                 f"missing {e}") from None
            inline = embedded_image(row.get("image"))
            name = qid.split("/")[-1] if inline is not None or not isinstance(row.get("image"), str) else row["image"]
            out[subtask].append((name, question, normalise_label(row.get("answer"), where), inline))
        return out

    def _index(self) -> dict[tuple[str, str, str], str]:
        """(subtask, image, question) -> item id, over all 14 subtasks (questions exact and core)."""
        index = {}
        for subtask in SUBTASKS:
            seen: dict[str, int] = defaultdict(int)
            for image_name, question, _ in read_ground_truth(subtask):
                qid = f"{subtask}/{image_name}/{seen[image_name]}"
                seen[image_name] += 1
                index[(subtask, image_name, question)] = qid
                index[(subtask, image_name, "core:" + core_question(question))] = qid
        return index

    def load_answers(self, path: str | Path) -> list[dict]:
        """Answer records from our answers JSONL, LLaVA-style JSONL (id 'subtask/[images/]image' +
        prompt) or an eval-tool result folder (records then carry the folder's `gt`)."""
        path = Path(path)
        index = self._index()
        if path.is_dir():
            folder = read_result_folder(path)
            if not folder:
                raise FileNotFoundError(f"{path}: no <subtask>.txt result files ({', '.join(SUBTASKS)})")
            records, unknown = [], []
            for subtask, lines in folder.items():
                for ln in lines:
                    qid = index.get((subtask, ln["image"], ln["question"].strip())) or index.get(
                        (subtask, ln["image"], "core:" + core_question(ln["question"])))
                    if qid is None:
                        unknown.append(f"{subtask}/{ln['image']}: {ln['question']!r} ({ln['where']})")
                        continue
                    records.append({"question_id": qid, "answer": ln["answer"], "gt": ln["gt"],
                                    "source_format": "mme_eval_tool", "where": ln["where"]})
            if unknown:
                raise AnswerMismatchError(str(path), [], unknown, len(set(index.values())))
            return records
        records = read_answers(path, self.cfg["answer_key"])
        ours = set(index.values())
        for rec in records:
            qid = str(rec["question_id"])
            if qid in ours:
                continue
            question = rec.get("prompt") or rec.get("question")
            parts = qid.split("/")
            if question is None or len(parts) < 2:
                continue  # left as is: scoring reports it as unknown
            key = (parts[0], parts[-1], "core:" + core_question(str(question)))
            if key in index:
                rec["question_id"] = index[key]
        return records

    def _correctness(self, records: list[dict], source: str) -> dict:
        """Per present subtask: image -> [question right?]; plus the counts `score` reports. Checks the ids."""
        items = self.items()
        def normalised(i: int, rec: dict) -> dict:
            where = f"{source}, record {i + 1}"
            if "answer" not in rec or "question_id" not in rec:
                return normalise_record(rec, self.cfg["answer_key"], None, where)
            require_text(rec["answer"], f"{where} (id {rec['question_id']})")
            return rec

        by_id = index_by_id((normalised(i, r) for i, r in enumerate(records)), source)
        ignored = 0
        if self.explicit_subtasks:  # a full run's answers scored on a subset: the rest is not an error
            keep = {k: v for k, v in by_id.items() if k.split("/")[0] not in SUBTASKS or k.split("/")[0] in self.subtasks}
            ignored, by_id = len(by_id) - len(keep), keep
        present = [s for s in self.subtasks if any(k.startswith(s + "/") for k in by_id)]
        if self.explicit_subtasks or not present:
            expected = [it.question_id for it in items]
        else:
            expected = [it.question_id for it in items if it.meta["subtask"] in present]
        match_ids(expected, by_id, source)

        correct: dict[str, dict[str, list[bool]]] = {s: defaultdict(list) for s in present}
        other: dict[str, int] = {s: 0 for s in present}
        disagreements = 0
        for it in items:
            subtask = it.meta["subtask"]
            if subtask not in correct:
                continue
            rec = by_id[it.question_id]
            gt = it.meta["label"]
            if rec.get("gt") is not None:  # an eval-tool folder is scored with its own gt column
                folder_gt = normalise_label(rec["gt"], rec.get("where", source))
                disagreements += folder_gt != gt
                gt = folder_gt
            pred = parse_mme(rec["answer"])
            other[subtask] += pred not in (YES, NO)
            correct[subtask][it.meta["image_name"]].append(pred == gt)
        return {"correct": correct, "other": other, "present": present, "ignored": ignored,
                "disagreements": disagreements, "missing": [s for s in self.subtasks if s not in present]}

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Per-subtask acc, acc+ and score, and the perception/cognition/hallucination totals."""
        c = self._correctness(records, source)
        per: dict[str, dict] = {}
        for subtask, by_image in c["correct"].items():
            n = sum(len(v) for v in by_image.values())
            acc = 100 * sum(sum(v) for v in by_image.values()) / n
            acc_plus = 100 * sum(all(v) for v in by_image.values()) / len(by_image)
            per[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": n,
                            "unparsed": c["other"][subtask]}

        def total(group: tuple[str, ...], rounded: bool = False, partial: bool = False) -> float | None:
            scored = [s for s in group if s in per]
            if not scored or (len(scored) < len(group) and not partial):
                return None  # a total over part of its subtasks is not that total
            return sum(round(per[s]["score"], 2) if rounded else per[s]["score"] for s in scored)

        out: dict[str, Any] = {key: total(g) for key, g in GROUPS.items()}
        out["leaderboard_totals"] = {key: (None if total(g, True) is None else round(total(g, True), 2))
                                     for key, g in GROUPS.items()}
        out["partial_totals"] = {key: total(g, partial=True) for key, g in GROUPS.items()
                                 if out[key] is None and total(g, partial=True) is not None}
        out.update(per)
        out["n"] = sum(p["n"] for p in per.values())
        out["unparsed"] = sum(c["other"].values())
        out["subtasks_scored"] = c["present"]
        out["missing_subtasks"] = c["missing"]
        out["gt_disagreements"] = c["disagreements"]
        out["ignored_other_subtasks"] = c["ignored"]
        return out

    # -- statistics and provenance --------------------------------------------------------------------------
    def units(self, records: list[dict], source: str = "answers"):
        """One unit per (subtask, image): its question pair's counts (see UNIT_COLUMNS); stratum = subtask."""
        from harness.stats import Units

        c = self._correctness(records, source)
        ids, rows, strata = [], [], []
        for subtask, by_image in c["correct"].items():
            for image, right in by_image.items():
                ids.append(f"{subtask}/{image}")
                rows.append((len(right), sum(right), int(all(right)), 1))
                strata.append(self.subtasks.index(subtask))
        return Units(ids, rows, UNIT_COLUMNS, strata, self.subtasks)

    def metrics_from_sums(self, sums):
        """Per-subtask acc, acc_plus, score (dotted keys) and the complete totals, from per-image sums."""
        from harness.stats import column, ratio

        out, scores = {}, {}
        for i, subtask in enumerate(self.subtasks):
            images = column(sums, UNIT_COLUMNS, "images", i)
            if not images[0]:
                continue  # not answered
            acc = 100 * ratio(column(sums, UNIT_COLUMNS, "correct", i), column(sums, UNIT_COLUMNS, "questions", i))
            acc_plus = 100 * ratio(column(sums, UNIT_COLUMNS, "all_correct", i), images)
            scores[subtask] = acc + acc_plus
            out.update({f"{subtask}.acc": acc, f"{subtask}.acc_plus": acc_plus, f"{subtask}.score": acc + acc_plus})
        for key, group in GROUPS.items():
            if all(s in scores for s in group):
                out[key] = sum(scores[s] for s in group)
        return out

    def data_files(self) -> list[Path]:
        """The official ground-truth lists of the chosen subtasks (or the local question file)."""
        qf = self.cfg["question_file"]
        if qf:
            p = Path(str(qf)).expanduser()
            return [p] if p.is_file() else []
        return [GT_DIR / f"{s}.txt" for s in self.subtasks]
