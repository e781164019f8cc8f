"""AMBER's metrics (Wang et al., 2023) as computed by ``inference.py`` of junyangwang0410/AMBER.

Generative task, per description (the reference's steps, in its order):

1. nouns: ``nltk.word_tokenize`` of the text as written (no lower-casing: a capitalised "Dog" never
   matches), ``nltk.pos_tag``, every ``NN*`` token lemmatised by ``WordNetLemmatizer`` (noun POS);
   only nouns in the ``relation.json`` vocabulary (its keys and their associated words) are
   candidates, repeats included;
2. a candidate in ``safe_words.txt`` is skipped: neither safe nor hallucinated, but still counted
   in CHAIR's denominator;
3. a candidate equal to a truth object or one of its associated words covers that truth object
   (the first match in the reference's list order: all associated words, then the objects) and is safe;
4. otherwise, a candidate equal to a ``hallu`` object or associated word covers that hallu object,
   and so does the first hallu entry spaCy finds similar (``nlp(a).similarity(nlp(b)) > 0.8``);
5. then the first truth entry it is similar to covers that truth object and makes it safe; a
   candidate still not safe is hallucinated.

CHAIR = hallucinated candidates / candidates; Cover = covered truth objects / truth objects; Hal =
share of descriptions with a hallucinated candidate; Cog = covered hallu objects / hallu objects.

Discriminative task: an answer counts as "Yes" / "No" only when it is exactly that string (the
reference's rule, ``answer_rule: exact``); any other answer is wrong for both labels. "No" is the
positive class: Precision = right "No" / answered "No", Recall = right "No" / label no, Accuracy =
right / all, per group: existence (``discriminative-hallucination``), attribute (state, number,
action), relation (``discriminative-relation`` and ``relation``), and overall.

``rounding: reference`` (default) reproduces the printed numbers: each denominator starts at 0.001
(``metrics.txt``), percentages are rounded to one decimal, and F1 is computed from the *rounded*
P and R as 2PR / (P + R + 1e-4) (1e-3 for existence). ``rounding: none`` gives exact percentages
(a zero denominator gives 0) and F1 = 2PR / (P + R). The AMBER score (paper, README table) is
(100 - CHAIR + F1) / 2 with the overall discriminative F1; with reference rounding it is rounded
half up to one decimal, as the published table is.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

from benchmarks.chair_text import word_tokenize
from benchmarks.nltk_setup import get_tagger, lemmatize

#: annotation type -> discriminative group (AMBER's de / da / dr dimensions; attribute has three kinds)
TYPE_GROUP = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-relation": "relation",
    "relation": "relation",
}
ATTRIBUTE_KINDS = ("state", "number", "action")
DIMENSIONS = ("existence", "attribute", "relation")
ROUNDINGS = ("reference", "none")
ANSWER_RULES = ("exact", "normalised")
REF_OFFSET = 0.001  # every *_num counter of the reference's metrics.txt starts here


@dataclass(frozen=True, eq=False)
class AmberVocab:
    """relation.json (object -> associated words) and the global safe words."""

    association: dict[str, list[str]]
    safe_words: frozenset[str]

    @functools.cached_property
    def words(self) -> frozenset[str]:
        """The candidate vocabulary: objects and associated words."""
        return frozenset(self.association) | frozenset(w for ws in self.association.values() for w in ws)


@functools.lru_cache(maxsize=4)
def load_vocab(relation_file: str, safe_words_file: str) -> AmberVocab:
    """The association lists and safe words of AMBER's data files (lines of safe_words.txt kept as written)."""
    association = json.loads(Path(relation_file).read_text(encoding="utf-8"))
    text = Path(safe_words_file).read_text(encoding="utf-8")
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return AmberVocab({k: list(v) for k, v in association.items()}, frozenset(lines))


@functools.lru_cache(maxsize=65536)
def extract_nouns(text: str) -> tuple[str, ...]:
    """The reference's ``extract_nouns``: lemmas of the NN* tokens of the text, in order."""
    tagged = get_tagger().tag(word_tokenize(text))  # exactly nltk.word_tokenize (benchmarks/chair_text.py)
    return tuple(lemmatize(word, "n") for word, pos in tagged if pos.startswith("NN"))


# ------------------------------------------------------------------ generative
@dataclass
class Description:
    """What one description mentions: candidate nouns, the hallucinated ones, covered objects."""

    candidates: list[str]
    hallucinated: list[str]
    truth_covered: list[str]
    hallu_covered: list[str]
    n_truth: int
    n_hallu: int


def _entries(objects: list[str], association: dict[str, list[str]], where: str) -> list[tuple[str, int]]:
    """(word, object index): every object's associated words, then the objects (the reference's order)."""
    missing = [o for o in objects if o not in association]
    if missing:
        raise ValueError(f"{where}: objects not in relation.json: {', '.join(missing)}")
    return [(w, i) for i, o in enumerate(objects) for w in association[o]] + [(o, i) for i, o in enumerate(objects)]


def analyse_description(text: str, truth: list[str], hallu: list[str], vocab: AmberVocab,
                        similar: Callable[[str, str], bool], where: str = "") -> Description:
    """The reference's generative bookkeeping for one description (see the module docstring)."""
    candidates = [n for n in extract_nouns(str(text or "")) if n in vocab.words]
    safe_e, ha_e = _entries(truth, vocab.association, where), _entries(hallu, vocab.association, where)
    safe_cov, ha_cov, hallucinated = [0] * len(truth), [0] * len(hallu), []
    for noun in candidates:
        if noun in vocab.safe_words:
            continue
        j = next((k for k, (w, _) in enumerate(safe_e) if w == noun), None)
        if j is not None:
            safe_cov[safe_e[j][1]] = 1
            continue
        j = next((k for k, (w, _) in enumerate(ha_e) if w == noun), None)
        if j is not None:
            ha_cov[ha_e[j][1]] = 1
        j = next((k for k, (w, _) in enumerate(ha_e) if similar(noun, w)), None)
        if j is not None:
            ha_cov[ha_e[j][1]] = 1
        j = next((k for k, (w, _) in enumerate(safe_e) if similar(noun, w)), None)
        if j is not None:
            safe_cov[safe_e[j][1]] = 1
            continue
        hallucinated.append(noun)
    return Description(candidates, hallucinated, [o for o, c in zip(truth, safe_cov) if c],
                       [o for o, c in zip(hallu, ha_cov) if c], len(truth), len(hallu))


@dataclass
class Tally:
    """A count as both an int and the reference's float counter (0.001 plus each increment, in order)."""

    n: int = 0
    ref: float = REF_OFFSET

    def add(self, k: int) -> None:
        """Add k to both counts."""
        self.n += k
        self.ref += k


def percent(num: int, den: Tally | Iterable[Tally], rounding: str) -> float:
    """num / den in percent: the reference's rounded value (float denominator) or the exact one."""
    dens = [den] if isinstance(den, Tally) else list(den)
    if rounding == "reference":
        return round(num / sum(d.ref for d in dens) * 100, 1)
    total = sum(d.n for d in dens)
    return 100.0 * num / total if total else 0.0


def f1_score(p: float, r: float, rounding: str, eps: float = 1e-4) -> float:
    """F1 in percent from P and R in percent: the reference's 2PR/(P+R+eps), rounded, or exact."""
    if rounding == "reference":
        return round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100, 1)
    return 2 * p * r / (p + r) if p + r else 0.0


def amber_score(chair: float, f1: float, rounding: str = "reference") -> float:
    """(100 - CHAIR + F1) / 2; rounded half up to one decimal under reference rounding."""
    value = (100 - chair + f1) / 2
    if rounding == "reference":
        return float(Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    return value


def generative_scores(descriptions: Iterable[Description], rounding: str = "reference") -> dict:
    """CHAIR, Cover, Hal, Cog (percent) and their counts over descriptions, in the reference's order."""
    cand, truth, hallu, total = Tally(), Tally(), Tally(), Tally()
    n_hal_words = n_truth_cov = n_hallu_cov = clean = 0
    for d in descriptions:
        cand.add(len(d.candidates))
        truth.add(d.n_truth)
        hallu.add(d.n_hallu)
        total.add(1)
        n_hal_words += len(d.hallucinated)
        n_truth_cov += len(d.truth_covered)
        n_hallu_cov += len(d.hallu_covered)
        clean += not d.hallucinated
    if rounding == "reference":
        hal = round(100 - clean / total.ref * 100, 1)
    else:
        hal = 100.0 * (total.n - clean) / total.n if total.n else 0.0
    return {"CHAIR": percent(n_hal_words, cand, rounding), "Cover": percent(n_truth_cov, truth, rounding),
            "Hal": hal, "Cog": percent(n_hallu_cov, hallu, rounding),
            "n_descriptions": total.n, "n_candidate_nouns": cand.n, "n_hallucinated_nouns": n_hal_words,
            "n_truth_objects": truth.n, "n_truth_covered": n_truth_cov, "n_hallu_objects": hallu.n,
            "n_hallu_covered": n_hallu_cov, "n_with_hallucination": total.n - clean}


# ------------------------------------------------------------------ discriminative
def read_answer(response: Any, rule: str = "exact") -> str | None:
    """"Yes", "No" or None (neither): exact strings (reference) or, with `normalised`, case, surrounding
    space and a final '.' ignored."""
    if rule == "exact":
        return response if response in ("Yes", "No") else None
    if rule != "normalised":
        raise ValueError(f"unknown AMBER answer_rule {rule!r}; valid choices: {', '.join(ANSWER_RULES)}")
    text = str(response or "").strip().rstrip(".").strip().lower()
    return {"yes": "Yes", "no": "No"}.get(text)


@dataclass
class Confusion:
    """One group's reference counters: all answers, right ones, label no, answered No, right No."""

    total: Tally = field(default_factory=Tally)
    label_no: Tally = field(default_factory=Tally)
    answered_no: Tally = field(default_factory=Tally)
    correct: int = 0
    true_no: int = 0

    def add(self, label: str, answer: str | None) -> None:
        """Count one answer to a question with label 'yes' or 'no'."""
        self.total.add(1)
        self.label_no.add(label == "no")
        self.answered_no.add(answer == "No")
        self.correct += (answer == "Yes") if label == "yes" else (answer == "No")
        self.true_no += label == "no" and answer == "No"


def group_metrics(groups: list[Confusion], rounding: str, eps: float = 1e-4) -> dict:
    """Accuracy, precision, recall, F1 (percent, "No" positive) and counts over the summed groups."""
    correct, true_no = sum(g.correct for g in groups), sum(g.true_no for g in groups)
    p = percent(true_no, [g.answered_no for g in groups], rounding)
    r = percent(true_no, [g.label_no for g in groups], rounding)
    return {"accuracy": percent(correct, [g.total for g in groups], rounding), "precision": p, "recall": r,
            "f1": f1_score(p, r, rounding, eps), "n": sum(g.total.n for g in groups), "correct": correct,
            "label_no": sum(g.label_no.n for g in groups), "answered_no": sum(g.answered_no.n for g in groups),
            "true_no": true_no}


def discriminative_scores(answers: Iterable[tuple[str, str, str | None]], rounding: str = "reference") -> dict:
    """Metrics per group present and, when all three dimensions are, overall (top-level keys).

    ``answers`` are (annotation type, label, read answer) triples in the reference's order.
    """
    overall, kinds = Confusion(), {}
    for kind, label, answer in answers:
        group = TYPE_GROUP[kind]
        overall.add(label, answer)
        kinds.setdefault(group, Confusion()).add(label, answer)
    out: dict[str, Any] = {}
    if "existence" in kinds:
        out["existence"] = group_metrics([kinds["existence"]], rounding, eps=1e-3)
    if any(k in kinds for k in ATTRIBUTE_KINDS):  # absent kinds add their 0.001 too, as in the reference
        out["attribute"] = group_metrics([kinds.get(k, Confusion()) for k in ATTRIBUTE_KINDS], rounding)
        out.update({k: group_metrics([kinds[k]], rounding) for k in ATTRIBUTE_KINDS if k in kinds})
    if "relation" in kinds:
        out["relation"] = group_metrics([kinds["relation"]], rounding)
    if all(d in out for d in DIMENSIONS):
        out.update(group_metrics([overall], rounding))
    return out
