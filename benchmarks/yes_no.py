"""Yes/no answer parsing as the reference tools do it, and binary (POPE-style) metrics.

Every parser mirrors one public scorer exactly, including its quirks; each is a named option
so that a score can be compared with the paper that used that scorer. All parsers strip
surrounding whitespace first: the reference tools score answers that their own generation
scripts had already stripped (LLaVA ``model_vqa_loader.py``, VCD/DAMRO ``.strip()`` in the
scorer, LVLM-LP ``tokenizer.decode(...).strip()``), so on their files this changes nothing.

POPE parsers (``POPE_PARSERS``), each ``parser(answer, label) -> Parsed``:

- ``llava``: LLaVA ``llava/eval/eval_pope.py`` == RUCAIBox/POPE ``evaluate.py``. Keep the
  text before the first '.', drop commas, split on single spaces; any of the words 'No',
  'not', 'no' -> no, else yes. It never fails: an answer with neither a negation word nor
  'yes' (e.g. an empty answer, "There is a dog") is counted as **yes**, as the reference
  does, and flagged ``unparsed``. Quirks kept: "Yes, there is no dog." -> no; "NO" -> yes;
  "Nope" -> yes; a negation after the first '.' is ignored.
- ``substring``: VCD ``experiments/eval/eval_pope.py`` == DAMRO ``evaluation/eval_pope/
  eval_pope.py``. Lower-case; when the label is yes, the answer is right iff 'yes' is a
  substring; when the label is no, it is right iff 'no' is a substring ("not", "nothing",
  "know", "snow" all match). The decision depends on the label, as in the reference:
  an answer with neither substring (``unparsed``) is always wrong (yes-label -> FN,
  no-label -> FP, i.e. counted as a yes answer); one with both (``ambiguous``, e.g.
  "yes, there is no dog") is always right.
- ``startswith``: LVLM-LP ``Task5_POPE_eval.ipynb``: yes iff the lower-cased answer starts
  with 'yes', else no. An answer starting with neither 'yes' nor 'no' is counted as **no**,
  as the reference does, and flagged ``unparsed``.
- ``repope``: RePOPE ``src/eval_utils.py`` ``compute_answer``: lower-case; 'yes' is a
  substring -> yes; else 'no' is a substring -> no (its further 'not' test can never fire,
  'not' holds 'no'); else **no prediction** (``pred`` None): the answer falls in no cell of
  the confusion matrix, so it drops out of every metric; it is flagged ``unparsed`` and
  counted. "Yes, there is no dog" -> yes; "I don't know" and "nothing" -> no.

MME (``parse_mme``): the official eval tool's ``calculation.py``: lower-case; exactly 'yes'
or 'no' is taken as is; otherwise 'yes' if the first 4 characters contain "yes", else 'no'
if they contain "no", else 'other' (always wrong).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable
from harness.errors import ConfigValueError
from harness.records import MalformedRecordError

YES, NO = "yes", "no"


@dataclass(frozen=True)
class Parsed:
    """A parsed yes/no answer: the prediction the reference tool scores, and diagnostics."""

    pred: str | None  # "yes" or "no", as the reference scorer counts it; None: the reference drops it
    unparsed: bool = False  # the answer gave neither a yes nor a no signal to this parser
    ambiguous: bool = False  # the answer gave both signals (substring parser only)


def normalise_label(label: object, where: str = "") -> str:
    """A ground-truth label as 'yes' or 'no' (case and surrounding space ignored)."""
    text = str(label).strip().lower()
    if text not in (YES, NO):
        raise MalformedRecordError(f"{where}: label must be yes or no, got {label!r}")
    return text


def _text(answer: object) -> str:
    return "" if answer is None else str(answer).strip()


def parse_llava(answer: object, label: str | None = None) -> Parsed:
    """LLaVA / POPE ``eval_pope``: a negation word in the first sentence -> no, else yes."""
    text = _text(answer)
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "not" in words or "no" in words:
        return Parsed(NO)
    has_yes = any(w.lower().startswith(YES) for w in words)
    return Parsed(YES, unparsed=not has_yes)


def parse_substring(answer: object, label: str) -> Parsed:
    """VCD / DAMRO ``eval_pope``: right iff the label's word is a substring of the answer."""
    text = _text(answer).lower()
    has_yes, has_no = YES in text, NO in text
    if label == YES:
        pred = YES if has_yes else NO
    else:
        pred = NO if has_no else YES
    return Parsed(pred, unparsed=not (has_yes or has_no), ambiguous=has_yes and has_no)


def parse_startswith(answer: object, label: str | None = None) -> Parsed:
    """LVLM-LP: yes iff the lower-cased answer starts with 'yes', else no."""
    text = _text(answer).lower()
    if text.startswith(YES):
        return Parsed(YES)
    return Parsed(NO, unparsed=not text.startswith(NO))


def parse_repope(answer: object, label: str | None = None) -> Parsed:
    """RePOPE ``compute_answer``: 'yes' substring -> yes, else 'no' substring -> no, else dropped."""
    text = _text(answer).lower()
    if YES in text:
        return Parsed(YES)
    if NO in text:  # also covers the reference's 'not' branch
        return Parsed(NO)
    return Parsed(None, unparsed=True)


POPE_PARSERS: dict[str, Callable[[object, str], Parsed]] = {
    "llava": parse_llava,
    "substring": parse_substring,
    "startswith": parse_startswith,
    "repope": parse_repope,
}


def get_parser(name: str) -> Callable[[object, str], Parsed]:
    """The POPE parser registered under `name`; a ValueError lists the valid names."""
    if name not in POPE_PARSERS:
        raise ConfigValueError(f"unknown yes/no parser {name!r}; valid choices: {', '.join(POPE_PARSERS)}")
    return POPE_PARSERS[name]


def parse_mme(answer: object) -> str:
    """The MME eval tool's reading of a prediction: 'yes', 'no' or 'other'."""
    text = ("" if answer is None else str(answer)).lower()
    if text in (YES, NO):
        return text
    prefix = text[:4]
    if YES in prefix:
        return YES
    if NO in prefix:
        return NO
    return "other"


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def binary_metrics(preds: Iterable[str], labels: Iterable[str]) -> dict:
    """Confusion counts and accuracy, precision, recall, F1 and yes ratio (percent) with yes positive.

    A zero denominator gives 0.0 (the reference scripts would raise ZeroDivisionError). Every
    prediction must be 'yes' or 'no': answers a parser dropped are left out by the caller.
    """
    tp = fp = tn = fn = 0
    for pred, label in zip(preds, labels, strict=True):
        if pred not in (YES, NO):
            raise ValueError(f"binary_metrics: prediction must be 'yes' or 'no', got {pred!r}")
        if pred == YES:
            tp, fp = (tp + 1, fp) if label == YES else (tp, fp + 1)
        else:
            fn, tn = (fn + 1, tn) if label == YES else (fn, tn + 1)
    n = tp + fp + tn + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {
        "accuracy": 100 * _ratio(tp + tn, n),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": 100 * _ratio(tp + fp, n),
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


#: per-question unit columns of yes/no benchmarks: confusion-cell indicators (yes is the positive class)
CONFUSION_COLUMNS = ("tp", "fp", "tn", "fn")


def confusion_row(pred: str, label: str) -> tuple[int, int, int, int]:
    """One question's (tp, fp, tn, fn) indicators."""
    if pred == YES:
        return (1, 0, 0, 0) if label == YES else (0, 1, 0, 0)
    return (0, 0, 0, 1) if label == YES else (0, 0, 1, 0)


def binary_metric_arrays(tp, fp, tn, fn) -> dict:
    """`binary_metrics`' rates (percent) from confusion counts given as arrays (one value per resample)."""
    from harness.stats import ratio

    n = tp + fp + tn + fn
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": 100 * ratio(tp + tn, n), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * ratio(2 * precision * recall, precision + recall), "yes_ratio": 100 * ratio(tp + fp, n)}


#: what is better for the binary metrics (yes_ratio has no better side: 50% on balanced sets is the target)
BINARY_DIRECTIONS = {"accuracy": "higher", "precision": "higher", "recall": "higher", "f1": "higher"}
