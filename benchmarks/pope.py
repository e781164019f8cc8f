"""POPE (Li et al., EMNLP 2023): "Is there a <object> in the image?" with yes/no labels.

Question files (shipped in ``benchmarks/data/pope/``, JSON Lines despite the ``.json`` name):

- ``version: current``: RUCAIBox/POPE ``output/coco`` (3,000 questions per split) and the
  SEEM-built A-OKVQA / GQA sets (as shipped by VCD), ``<dataset>/<dataset>_pope_<split>.json``.
- ``version: 2023-08`` (coco only): POPE's original release, byte-identical to OPERA's
  ``pope_coco`` and the files inside LLaVA-1.5's ``llava_pope_test.jsonl``; its random split
  has 2,910 questions, and some questions spell "imange" (fixed in the current files).

Item ids are the files' ``question_id`` (ints). With ``split: all`` the three splits are
items of one benchmark and ids become ``"<split>/<question_id>"`` strings (e.g.
``"random/17"``); answer records that carry a POPE ``category`` field (LVLM-LP, LLaVA's
question file) are mapped to that form, and ``llava_combined_ids`` maps the ids of
LLaVA's combined ``llava_pope_test.jsonl`` (adversarial +0, random +10,000,000,
popular +20,000,000); with one split, answers of the other splits are then ignored.
``llava_combined_ids: auto`` (default) turns this on when an answer id is >= 10,000,000, which no
POPE question file uses; the scores then say ``id_format: llava_combined``.

Scoring joins answers to questions by id (compared as strings, never by line order, unlike
the reference scripts); a missing, unknown or duplicate id is an error. The yes/no parser is
a named option (see ``benchmarks.yes_no``). Metrics are percentages: accuracy, precision,
recall, F1 (yes is the positive class), yes_ratio, plus n, tp/fp/tn/fn and ``unparsed``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from benchmarks.base import (DATA_DIR, AnswerMismatchError, Benchmark, Item, embedded_image, index_by_id,
                             match_ids)
from benchmarks.loading import load_question_records
from benchmarks.yes_no import (BINARY_DIRECTIONS, CONFUSION_COLUMNS, binary_metric_arrays, binary_metrics,
                               confusion_row, get_parser, normalise_label)
from harness.errors import ConfigValueError, NothingToScoreError
from harness.records import MalformedRecordError, normalise_record, read_answers, require_text
from harness.registry import BENCHMARKS

SPLITS = ("random", "popular", "adversarial")
DATASETS = ("coco", "aokvqa", "gqa")
VERSION_DIRS = {"current": "{dataset}", "2023-08": "coco_2023-08_llava_opera"}
LLAVA_COMBINED_OFFSET = 10_000_000
LLAVA_COMBINED_ORDER = ("adversarial", "random", "popular")  # offset 0, 1e7, 2e7
MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")



def question_file_path(dataset: str, split: str, version: str = "current") -> Path:
    """The shipped question file of one POPE dataset, split and version."""
    if dataset not in DATASETS:
        raise ConfigValueError(f"unknown POPE dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigValueError(f"unknown POPE split {split!r}; valid choices: {', '.join(SPLITS)}, all")
    if version not in VERSION_DIRS:
        raise ConfigValueError(f"unknown POPE version {version!r}; valid choices: {', '.join(VERSION_DIRS)}")
    if version != "current" and dataset != "coco":
        raise ConfigValueError(f"POPE version {version!r} exists only for dataset coco, not {dataset!r}")
    folder = VERSION_DIRS[version].format(dataset=dataset)
    return DATA_DIR / "pope" / folder / f"{dataset}_pope_{split}.json"


def split_llava_combined_id(qid: Any) -> tuple[str, int]:
    """(split, POPE question id) of an id from LLaVA's combined ``llava_pope_test.jsonl``."""
    try:
        value = int(qid)
    except (TypeError, ValueError):
        raise ValueError(f"not a LLaVA combined POPE id: {qid!r}") from None
    block, raw = divmod(value, LLAVA_COMBINED_OFFSET)
    if not 0 <= block < len(LLAVA_COMBINED_ORDER) or raw == 0:
        raise ValueError(f"not a LLaVA combined POPE id: {qid!r}")
    return LLAVA_COMBINED_ORDER[block], raw


def _row_field(row: dict, keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise MalformedRecordError(f"{where}: question row has none of {keys}; keys: {sorted(row)}")


@BENCHMARKS.register("pope")
class POPE(Benchmark):
    """POPE yes/no object-existence questions for one dataset and one (or all) split(s)."""

    name = "pope"
    task = "yes_no"
    headline_metrics = ("accuracy", "f1", "yes_ratio")
    label_keys = ("dataset", "split", "version", "parser")
    metric_directions = BINARY_DIRECTIONS

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        c = self.cfg
        split = c["split"]
        self.splits: tuple[str, ...] = SPLITS if split == "all" else (split,)
        if c["question_file"] is None:
            for s in self.splits:
                question_file_path(c["dataset"], s, c["version"])  # validates the combination
        elif split != "all" and split not in SPLITS:
            raise ConfigValueError(f"unknown POPE split {split!r}; valid choices: {', '.join(SPLITS)}, all")
        get_parser(c["parser"])
        self.max_new_tokens = int(c["max_new_tokens"])
        self._items: list[Item] | None = None
        self._combined = self.cfg["llava_combined_ids"] is True

    # -- items -------------------------------------------------------------------------
    def _split_rows(self) -> dict[str, list[dict]]:
        """Question rows per split, from the shipped files or the `question_file` override."""
        c = self.cfg
        qf = c["question_file"]
        if qf is None:
            return {s: load_question_records(question_file_path(c["dataset"], s, c["version"]))
                    for s in self.splits}
        if "{split}" in str(qf):
            return {s: load_question_records(str(qf).format(split=s)) for s in self.splits}
        rows = load_question_records(qf)
        if rows and "category" in rows[0]:
            return {s: [r for r in rows if r.get("category") == s] for s in self.splits}
        if len(self.splits) > 1:
            raise ConfigValueError(f"split=all with question_file {qf!r}: put '{{split}}' in the path "
                             "or use a file whose rows carry a 'category' (random/popular/adversarial)")
        return {self.splits[0]: rows}

    def items(self) -> list[Item]:
        """The questions, split by split in file order (first `limit` per split when set)."""
        if self._items is not None:
            return self._items
        c = self.cfg
        multi = len(self.splits) > 1
        root = Path(c["image_root"]).expanduser() if c["image_root"] else None
        suffix = c["prompt_suffix"] or ""
        out: list[Item] = []
        for split, rows in self._split_rows().items():
            if not rows:
                raise NothingToScoreError(f"POPE split {split!r}: no questions found")
            if c["limit"] is not None:
                rows = rows[: int(c["limit"])]
            where = f"POPE {c['dataset']}/{split}"
            dup = [k for k, v in Counter(str(r.get("question_id")) for r in rows).items() if v > 1]
            if dup:
                raise MalformedRecordError(f"{where}: duplicate question ids: {', '.join(dup[:10])}")
            for i, row in enumerate(rows):
                w = f"{where}, row {i + 1}"
                qid = _row_field(row, ("question_id",), w)
                text = str(_row_field(row, ("text", "question"), w))
                label = normalise_label(_row_field(row, ("label", "answer"), w), w)
                image = _row_field(row, ("image",), w)
                inline = embedded_image(image)  # hub datasets (e.g. lmms-lab/POPE) embed the image
                if inline is None and not isinstance(image, str):
                    raise MalformedRecordError(f"{w}: 'image' must be an image file name or an embedded image, "
                                     f"got {type(image).__name__}")
                name = image if inline is None else str(row.get("image_source") or qid)
                out.append(Item(
                    question_id=f"{split}/{qid}" if multi else qid,
                    prompt=text + suffix,
                    image_path=str(root / image) if root and inline is None else None,
                    image_id=name,
                    meta={"label": label, "split": split},
                    image=inline,
                ))
        self._items = out
        return out

    # -- answers -----------------------------------------------------------------------
    def load_answers(self, path: str | Path) -> list[dict]:
        """Answer records of ours (`answer`), LLaVA/VCD (`text`), DAMRO (`output`) or LVLM-LP (`response`)."""
        return read_answers(path, self.cfg["answer_key"], self.cfg["id_key"])

    def answer_id(self, rec: dict) -> Any:
        """The benchmark id an answer record refers to (None: another split's answer, ignored)."""
        qid = rec["question_id"]
        multi = len(self.splits) > 1
        if self._combined:
            split, raw = split_llava_combined_id(qid)
            if split not in self.splits:
                return None
            return f"{split}/{raw}" if multi else raw
        category = rec.get("category")
        if category in SPLITS and "/" not in str(qid):
            if category not in self.splits:
                return None  # an answer to another split of a combined file
            return f"{category}/{qid}" if multi else qid
        return qid

    def _uses_combined_ids(self, records: list[dict]) -> bool:
        """Whether answer ids are LLaVA combined ids: as configured, or (auto) any id >= 10,000,000."""
        setting = self.cfg["llava_combined_ids"]
        if setting != "auto":
            return bool(setting)
        return any(str(r["question_id"]).isdigit() and int(r["question_id"]) >= LLAVA_COMBINED_OFFSET
                   for r in records)

    def _mismatch_hint(self, got: set[str]) -> str:
        """A suggestion when answer ids fit another reading of the benchmark (combined ids, version)."""
        c = self.cfg
        if not self._combined and any(k.isdigit() and int(k) >= LLAVA_COMBINED_OFFSET for k in got):
            return ("the ids look like LLaVA's combined llava_pope_test.jsonl ids: set "
                    "benchmark.llava_combined_ids=true (and benchmark.version=2023-08)")
        if c["question_file"] is None and c["dataset"] == "coco" and len(self.splits) == 1:
            for version in VERSION_DIRS:
                if version == c["version"]:
                    continue
                rows = load_question_records(question_file_path("coco", self.splits[0], version))
                if got == {str(r["question_id"]) for r in rows}:
                    return f"the ids match the POPE {version} question file: set benchmark.version={version}"
        return ""

    def answers_by_id(self, records: list[dict], source: str) -> tuple[dict[str, dict], dict]:
        """Answer records keyed by item id, checked against the items; plus extra counts for the scores.

        A missing, unknown or duplicate id raises (with a hint when the ids fit another reading).
        """
        def normalised(i: int, rec: dict) -> dict:
            where = f"{source}, record {i + 1}"
            if "answer" not in rec or "question_id" not in rec:
                return normalise_record(rec, self.cfg["answer_key"], self.cfg["id_key"], where)
            require_text(rec["answer"], f"{where} (id {rec['question_id']})")
            return rec

        records = [normalised(i, r) for i, r in enumerate(records)]
        self._combined = self._uses_combined_ids(records)
        by_id = index_by_id(records, source, key=self.answer_id)
        all_ids = set(by_id)
        extra = self.set_aside(by_id)
        try:
            match_ids([it.question_id for it in self.items()], by_id, source)
        except AnswerMismatchError as e:
            hint = self._mismatch_hint(all_ids)
            if hint:
                e.args = (f"{e.args[0]}; hint: {hint}",)
            raise
        return by_id, extra

    def set_aside(self, by_id: dict[str, dict]) -> dict:
        """Remove answers that are known but not scored from `by_id`; returns counts for the scores (none here)."""
        return {}

    def split_metrics(self, split: str, by_id: dict[str, dict]) -> dict:
        """Confusion counts and metrics of one split; answers the parser drops (pred None) are left out."""
        parser_name = self.cfg["parser"]
        parser = get_parser(parser_name)
        preds, labels, unparsed, ambiguous = [], [], 0, 0
        for it in self.items():
            if it.meta["split"] != split:
                continue
            label = it.meta["label"]
            parsed = parser(by_id[str(it.question_id)]["answer"], label)
            unparsed += parsed.unparsed
            ambiguous += parsed.ambiguous
            if parsed.pred is None:
                continue
            preds.append(parsed.pred)
            labels.append(label)
        m = binary_metrics(preds, labels)
        m["unparsed"] = unparsed
        if parser_name == "substring":
            m["ambiguous"] = ambiguous
        return m

    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Per-split confusion counts and metrics (percent); with split=all also their means."""
        by_id, extra = self.answers_by_id(records, source)
        per_split = {split: self.split_metrics(split, by_id) for split in self.splits}
        if len(self.splits) == 1:
            out1 = {**per_split[self.splits[0]], **extra}
            if self._combined:
                out1["id_format"] = "llava_combined"
            return out1
        out: dict[str, Any] = dict(per_split)
        for key in MEAN_KEYS:
            out[f"mean_{key}"] = sum(per_split[s][key] for s in self.splits) / len(self.splits)
            out[key] = out[f"mean_{key}"]
        out["n"] = sum(per_split[s]["n"] for s in self.splits)
        out["unparsed"] = sum(per_split[s]["unparsed"] for s in self.splits)
        out.update(extra)
        if self._combined:
            out["id_format"] = "llava_combined"
        return out

    def _predictions(self, records: list[dict], source: str) -> list[tuple[Item, Any]]:
        """(item, parsed answer) for every scored item, in item order; checks that the answers match the items."""
        by_id, _ = self.answers_by_id(records, source)
        parser = get_parser(self.cfg["parser"])
        return [(it, parser(by_id[str(it.question_id)]["answer"], it.meta["label"])) for it in self.items()]

    # -- statistics --------------------------------------------------------------------------------------------
    def units(self, records: list[dict], source: str = "answers"):
        """One unit per question: its confusion cell (tp, fp, tn, fn); stratum = split."""
        from harness.stats import Units

        predictions = [(it, p) for it, p in self._predictions(records, source) if p.pred is not None]
        return Units([str(it.question_id) for it, _ in predictions],
                     [confusion_row(p.pred, it.meta["label"]) for it, p in predictions], CONFUSION_COLUMNS,
                     [self.splits.index(it.meta["split"]) for it, _ in predictions], self.splits)

    def metrics_from_sums(self, sums):
        """Per-split rates (dotted `<split>.` keys with split=all, plus their means), from confusion sums."""
        from harness.stats import column

        per = {split: binary_metric_arrays(*(column(sums, CONFUSION_COLUMNS, c, i) for c in CONFUSION_COLUMNS))
               for i, split in enumerate(self.splits)}
        if len(self.splits) == 1:
            return per[self.splits[0]]
        out = {f"{split}.{k}": v for split, m in per.items() for k, v in m.items()}
        for key in MEAN_KEYS:
            out[key] = out[f"mean_{key}"] = sum(per[s][key] for s in self.splits) / len(self.splits)
        return out

    def data_files(self) -> list[Path]:
        """The question files of the configured splits (a hub dataset id has no local file)."""
        qf = self.cfg["question_file"]
        if qf is None:
            return [question_file_path(self.cfg["dataset"], s, self.cfg["version"]) for s in self.splits]
        paths = {Path(str(qf).format(split=s)).expanduser() for s in self.splits}
        return sorted(p for p in paths if p.is_file())
