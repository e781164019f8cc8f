"""Object HalBench scoring (RLHF-V / RLAIF-V ``eval/eval_gpt_obj_halbench.py``): objects of a response vs COCO.

Vocabularies (``synonyms``): ``refine`` is the benchmark's own ``synonyms_refine.txt`` with the
reference's two-word phrases (its multi-word synonyms, "home plate", "train track", "baby/adult
<animal>", "passenger jet/train", "bow tie" -> tie, "toilet seat" -> toilet, "wine glas" -> wine
glass); ``chair`` is the original CHAIR vocabulary of ``benchmarks.chair_metric``.

Objects from the judge's JSON list (``objects_from_list``, the reference's ``get_pred_objs_match`` +
``caption_objects_to_coco_objects``): each name is read as "a <name>"; its lemmas' two-word phrases
are taken if any, else its runs of NN/NNS/NNP/NNPS lemmas; repeats dropped; "seat" dropped when
"toilet" is there; only vocabulary words kept, mapped to their COCO object. The reference lemmatises
and tags with spaCy ``en_core_web_trf`` (not installable from PyPI); here NLTK's tagger and WordNet
lemmatiser (our CHAIR normalisation) stand in, a documented deviation.

Metrics (``compute_chair`` + ``summarize_gpt_obj_halbench_review.py``), in percent:
``response_hall`` (CHAIRs_refine) = responses with a hallucinated object / responses with >= 1 COCO
object; ``object_hall`` (CHAIRi) = hallucinated mentions / all mentions; ``object_recall`` = sum of
distinct correct objects per response / sum of ground-truth objects; ``CHAIRs`` over all responses;
``avg_len`` = mean number of space-separated words.
"""
from __future__ import annotations

import functools
import json
from typing import Iterable, Mapping, Sequence

from benchmarks.base import DATA_DIR
from benchmarks.chair_metric import ChairVocab, analyse_caption, lemma_pos_tokens, load_vocab

REFINE_SYNONYMS = DATA_DIR / "object_halbench" / "synonyms_refine.txt"
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")


@functools.lru_cache(maxsize=2)
def object_vocab(name: str = "refine") -> ChairVocab:
    """The ``refine`` (Object HalBench) or ``chair`` (original CHAIR) vocabulary."""
    if name == "chair":
        return load_vocab()
    if name != "refine":
        raise ValueError(f"benchmark.synonyms: unknown {name!r}; valid: refine, chair")
    inverse: dict[str, str] = {}
    for line in REFINE_SYNONYMS.read_text(encoding="utf-8").splitlines():
        words = [w.strip() for w in line.strip().split(", ")]
        for w in words:
            inverse[w] = words[0]
    double = {w: w for w in inverse if len(w.split(" ")) >= 2}
    double.update({"home plate": "home plate", "train track": "train track"})
    for a in ANIMALS:
        double[f"baby {a}"] = a
        double[f"adult {a}"] = a
    for v in ("jet", "train"):
        double[f"passenger {v}"] = v
    double.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
    return ChairVocab(inverse, double)


def parse_object_list(reply: str) -> list[str]:
    """The reference's reading of an extraction reply: JSON, else the last line when it holds '["'."""
    try:
        value = json.loads(reply)
    except ValueError:
        if '["' not in reply:
            raise ValueError("the reply is not a JSON list") from None
        try:
            value = json.loads(reply.strip().split("\n")[-1])
        except ValueError:
            raise ValueError("the reply is not a JSON list") from None
    if not isinstance(value, list):
        raise ValueError(f"the reply is JSON but not a list: {type(value).__name__}")
    return [str(v) for v in value]


@functools.lru_cache(maxsize=65536)
def _name_words(name: str, vocab: ChairVocab) -> tuple[str, ...]:
    """The words one extracted object name contributes: its two-word phrases, else its noun runs."""
    from benchmarks.nltk_setup import get_tagger

    tokens, lemmas = lemma_pos_tokens(f"a {name}")
    doubles, i = [], 0
    while i < len(lemmas):
        pair = " ".join(lemmas[i:i + 2])
        if pair in vocab.double_word_dict:
            doubles.append(vocab.double_word_dict[pair])
            i += 2
        else:
            i += 1
    if doubles:
        return tuple(doubles)
    runs, run = [], []
    for lemma, (_, tag) in zip(lemmas, get_tagger().tag(list(tokens))):
        if tag in NOUN_TAGS:
            run.append(lemma)
        elif run:
            runs.append(" ".join(run))
            run = []
    if run:
        runs.append(" ".join(run))
    return tuple(runs)


def objects_from_list(names: Iterable[str], vocab: ChairVocab) -> list[tuple[str, str]]:
    """(word, COCO object) mentions of a judge-extracted object list."""
    words: list[str] = []
    for name in names:
        for w in _name_words(name, vocab):
            if w not in words:
                words.append(w)
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    return [(w, vocab.inverse_synonym_dict[w]) for w in words if w in vocab.inverse_synonym_dict]


def objects_from_text(text: str, vocab: ChairVocab) -> list[tuple[str, str]]:
    """(word, COCO object) mentions found in a response by our CHAIR extraction (lemma_pos normalisation)."""
    return [(m.word, m.obj) for m in analyse_caption(text, vocab).mentions]


def object_halbench_scores(responses: Sequence[tuple[str, list[tuple[str, str]], frozenset[str]]]) -> dict:
    """Metrics over (response text, mentions, ground-truth objects) triples."""
    caps = coco_caps = h_caps = mentions = h_mentions = recalled = gt_total = words = 0
    for text, found, gt in responses:
        caps += 1
        words += len(text.strip().split(" "))
        gt_total += len(gt)
        mentions += len(found)
        bad = [obj for _, obj in found if obj not in gt]
        h_mentions += len(bad)
        recalled += len({obj for _, obj in found if obj in gt})
        coco_caps += bool(found)
        h_caps += bool(bad)
    pct = lambda a, b: 100.0 * a / b if b else None  # noqa: E731
    resp, obj, rec = pct(h_caps, coco_caps), pct(h_mentions, mentions), pct(recalled, gt_total)
    obj_correct = None if obj is None else 100.0 - obj
    f1 = (2 * rec * obj_correct / (rec + obj_correct)) if rec is not None and obj_correct and rec + obj_correct else None
    return {"response_hall": resp, "object_hall": obj, "object_recall": rec,
            "response_correct": None if resp is None else 100.0 - resp, "object_correct": obj_correct,
            "object_f1": f1, "CHAIRs": pct(h_caps, caps), "avg_len": words / caps if caps else None,
            "n": caps, "n_with_objects": coco_caps, "n_mentions": mentions, "n_hallucinated": h_mentions,
            "n_gt_objects": gt_total}


def ground_truth_for(image_ids: Iterable[int], ground_truth: Mapping[int, frozenset[str]], where: str) -> dict:
    """The ground-truth objects of each image id; a KeyError names the ids that have none."""
    ids = list(image_ids)
    missing = [i for i in ids if i not in ground_truth]
    if missing:
        raise KeyError(f"{where}: no COCO ground truth for image ids {missing[:10]}")
    return {i: ground_truth[i] for i in ids}

