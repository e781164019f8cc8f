"""The benchmark contract: items to answer, and a scorer over answer records."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # numpy is imported lazily: building a benchmark stays cheap
    import numpy as np

    from harness.stats import Units

from harness.errors import HarnessError

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass
class Item:
    """One thing a model must answer: a prompt about an image."""

    question_id: Any  # unique within the benchmark; joined to answers by str(question_id)
    prompt: str  # the question or instruction, before the model's chat template
    image_path: str | None  # absolute path to the image file (None for text-only items)
    image_id: str | None = None  # the benchmark's own image identifier (e.g. a COCO file name)
    meta: dict = field(default_factory=dict)  # label, category, type, ... copied into the answer record
    image: Any = None  # an in-memory image (e.g. from a hub dataset) used when image_path is None


def embedded_image(value: Any) -> Any:
    """A PIL image from a dataset cell holding one (a PIL image or a {"bytes": ...} dict), else None."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        import io

        return Image.open(io.BytesIO(value["bytes"]))
    return None


class AnswerMismatchError(HarnessError, ValueError):
    """Answers whose ids do not match the benchmark: lists missing and unknown ids."""

    def __init__(self, source: str, missing: list, unknown: list, n_expected: int):
        self.missing, self.unknown = missing, unknown

        def show(ids: list) -> str:
            head = ", ".join(map(str, ids[:10]))
            return head + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")

        parts = [f"answers in {source} do not match the benchmark ({n_expected} expected ids)"]
        if missing:
            parts.append(f"missing {len(missing)}: {show(missing)}")
        if unknown:
            parts.append(f"unknown {len(unknown)}: {show(unknown)}")
        super().__init__("; ".join(parts))


def match_ids(expected: Iterable[Any], got: Iterable[Any], source: str, allow_missing: bool = False) -> None:
    """Raise AnswerMismatchError unless `got` covers exactly the `expected` ids (compared as strings)."""
    exp = [str(x) for x in expected]
    got_s = [str(x) for x in got]
    exp_set, got_set = set(exp), set(got_s)
    missing = [x for x in exp if x not in got_set]
    unknown = [x for x in got_s if x not in exp_set]
    if unknown or (missing and not allow_missing):
        raise AnswerMismatchError(source, [] if allow_missing else missing, unknown, len(exp_set))


class DuplicateAnswerError(HarnessError, ValueError):
    """Several answers for the same item: scoring would count it more than once."""


def index_by_id(records: Iterable[dict], source: str, key: Any = None) -> dict[str, dict]:
    """Records keyed by str(key(record)) (default: question_id); None keys are skipped, duplicates raise."""
    out: dict[str, dict] = {}
    dups: list[str] = []
    for rec in records:
        k = key(rec) if key is not None else rec["question_id"]
        if k is None:
            continue
        k = str(k)
        if k in out:
            dups.append(k)
        out[k] = rec
    if dups:
        raise DuplicateAnswerError(f"{source}: {len(dups)} duplicate answers, e.g. ids {', '.join(dups[:10])}")
    return out


class Benchmark(ABC):
    """A named benchmark built from its config node (a plain dict)."""

    name: str = "benchmark"
    #: metrics shown in the leaderboard, in order
    headline_metrics: tuple[str, ...] = ()
    #: the kind of task; some interventions (first_token_probe) only apply to "yes_no"
    task: str = "open"

    #: config keys whose values distinguish variants of this benchmark in leaderboards
    label_keys: tuple[str, ...] = ()
    #: the `configs/benchmark/<choice>.yaml` whose values a config given in code starts from (default: name)
    config_choice: str | None = None

    #: "higher" or "lower" is better, per metric (leaderboard arrows); unlisted metrics have no direction
    metric_directions: Mapping[str, str] = {}

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        from harness.config import typed_node

        values = dict(cfg or {})
        judge = values.pop("judge", None)  # judged benchmarks: the judge node travels beside the benchmark's
        # the choice's YAML values under the given ones, type- and range-checked (configs/benchmark/<name>.yaml)
        self.cfg = typed_node("benchmark", {"name": self.name, **values}, choice=self.config_choice or self.name)
        if judge is not None:
            self.cfg["judge"] = judge
        if self.cfg.get("split_role") is not None:  # one side of the fixed tune/test split (benchmarks/split.py)
            from benchmarks.split import split_items

            full = self.items
            self.items = lambda: split_items(full(), self.cfg["split_role"], int(self.cfg["split_seed"]),  # type: ignore
                                             float(self.cfg["tune_fraction"]))

    def label(self) -> str:
        """The benchmark's name plus the config values that distinguish its variants (e.g. pope/coco/random).

        A split run ends in its role (`pope/coco/random/tune`), so tuning scores never share a leaderboard
        row with reported ones."""
        parts = [str(self.cfg.get(k)) for k in self.label_keys if self.cfg.get(k) is not None]
        if self.cfg.get("split_role") is not None:
            parts.append(str(self.cfg["split_role"]))
        return "/".join([self.name] + parts)

    def in_split(self, records: list[dict]) -> list[dict]:
        """The answer records of this run's side of the tune/test split (all of them without a split)."""
        if self.cfg.get("split_role") is None:
            return records
        keep = {str(it.question_id) for it in self.items()}
        return [r for r in records if str(r.get("question_id")) in keep]

    @abstractmethod
    def items(self) -> list[Item]:
        """The items to answer, in a fixed order."""

    @abstractmethod
    def score(self, records: list[dict], source: str = "answers") -> dict:
        """Metrics (a flat JSON-able dict) for answer records that carry `question_id` and `answer`."""

    def restrict_to(self, question_ids: Iterable[Any]) -> None:
        """Score only these items from now on (a `run.limit` run or skipped items): items() is filtered."""
        self._only = {str(q) for q in question_ids}
        if not getattr(self, "_items_wrapped", False):
            full = self.items
            self.items = lambda: [it for it in full() if str(it.question_id) in self._only]  # type: ignore
            self._items_wrapped = True

    def load_answers(self, path: str | Path) -> list[dict]:
        """Answer records from a file: the harness's answers JSONL (subclasses accept more formats)."""
        from harness.records import read_answers

        return read_answers(path)

    # -- statistics (optional; see harness/stats.py) -----------------------------------------------------------
    def units(self, records: list[dict], source: str = "answers") -> "Units | None":
        """Per-unit additive statistics of scored records (None: this benchmark reports no CIs).

        Implement together with `metrics_from_sums`; the metrics of all units must equal `score`'s.
        """
        return None

    def metrics_from_sums(self, sums: "np.ndarray") -> dict[str, "np.ndarray"]:
        """Metrics (dotted keys as in the flattened scores) from (resamples, strata, columns) unit sums."""
        raise NotImplementedError(f"benchmark {self.name!r} has no per-unit statistics")

    def confidence_intervals(self, records: list[dict], source: str = "answers",
                             units: "Units | None" = None) -> dict[str, list[float]]:
        """{metric: [low, high]}: 95% percentile bootstrap over units (`bootstrap` resamples, 0: none)."""
        from harness.stats import bootstrap_ci

        n = int(self.cfg["bootstrap"])
        units = units if units is not None else (self.units(records, source) if n > 0 else None)
        if n <= 0 or units is None:
            return {}
        return bootstrap_ci(self.metrics_from_sums, units, n, int(self.cfg["bootstrap_seed"]))

    # -- provenance ----------------------------------------------------------------------------------------------
    def data_files(self) -> list[Path]:
        """The local files this benchmark's items and ground truth come from (hashed into result provenance)."""
        return []

    def judge_model(self) -> str | None:
        """The judge model id for judged benchmarks (None for rule-based scorers)."""
        judge = self.cfg.get("judge")
        if isinstance(judge, Mapping):
            return judge.get("model")
        return self.cfg.get("judge_model")
