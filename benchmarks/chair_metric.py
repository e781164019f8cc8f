"""CHAIR (Rohrbach et al., 2018) as computed by the ``chair.py`` of OPERA / less-is-more / DAMRO.

Pipeline for one caption (the reference's ``caption_to_words``):

1. ``caption.lower()`` -> ``nltk.word_tokenize`` -> ``nltk.pos_tag`` -> ``WordNetLemmatizer().lemmatize``
   with the tag's POS (J->ADJ, V->VERB, N->NOUN, R->ADV, anything else NOUN);
2. left-to-right merge of two-word phrases found in ``double_word_dict`` (the pair is replaced by its
   mapped word and both tokens are consumed, even when the result is not an object word: "train
   track", "home plate", "baby animal" only block their parts);
3. when "toilet" is among the merged words, every "seat" is dropped;
4. words in ``mscoco_objects`` are kept and mapped to their MSCOCO object by ``inverse_synonym_dict``.

Scores over captions (the reference's ``compute_chair``): CHAIRs = captions with >= 1 object not in
the image's ground truth / captions; CHAIRi = such mentions / all mentions (repeats counted);
Recall = sum |distinct mentioned GT objects| / sum |GT objects|; Len = mean number of merged words.
Precision and F1 are NOT in the reference: here Precision = 1 - CHAIRi and F1 = 2PR / (P + R).

Known quirks of the reference, kept by default (``fix_vocab_quirks=False``): the synonym list yields
" motor bike" and " cheesecake" with a leading space and "iPhone" with capitals, so the lower-cased,
tokenized captions never match them ("motor bike" is merged and then dropped); "stove top oven" has
three words and never merges. The reference's per-caption ``hallucination_idxs`` shift after a
dropped "seat"; ``Mention.token_index`` here is always the token position of the mention.
Maxlinn's CHAIR-metric-standalone (whose ``outputs.json`` is a test vector) normalises generated
captions with ``pattern.en.singularize`` instead: its ``words`` differ ("ha", "is", "proces"), while
its object words agree on that example; OPERA / less-is-more / DAMRO use lemma_pos as here.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from benchmarks.base import DATA_DIR
from benchmarks.chair_text import lemmatize, word_tokenize
from benchmarks.lazy_json import read_object
from benchmarks.nltk_setup import get_tagger

CHAIR_DIR = DATA_DIR / "chair"
VOCAB_FILE = CHAIR_DIR / "chair_vocab.json"
GROUND_TRUTH_FILES = {
    "lemma_pos": CHAIR_DIR / "imid_to_objects_lemma_pos.json",
    "singularize": CHAIR_DIR / "imid_to_objects_singularize.json",
}


@dataclass(frozen=True, eq=False)  # hashed by identity: load_vocab caches instances
class ChairVocab:
    """The CHAIR word lists: synonym -> MSCOCO object, and two-word phrase -> word."""

    inverse_synonym_dict: Mapping[str, str]
    double_word_dict: Mapping[str, str]

    @property
    def mscoco_objects(self) -> frozenset[str]:
        """All synonyms (the words that count as object mentions)."""
        return frozenset(self.inverse_synonym_dict)


@functools.lru_cache(maxsize=4)
def load_vocab(fix_vocab_quirks: bool = False, path: str | None = None) -> ChairVocab:
    """The shipped CHAIR vocabulary; with ``fix_vocab_quirks`` synonyms are stripped and lower-cased."""
    data = json.loads(Path(path or VOCAB_FILE).read_text(encoding="utf-8"))
    inverse = dict(data["inverse_synonym_dict"])
    if fix_vocab_quirks:
        inverse = {k.strip().lower(): v for k, v in inverse.items()}
    return ChairVocab(inverse, dict(data["double_word_dict"]))


# ------------------------------------------------------------------ NLTK normalisation (lemma_pos)
_POS = {"J": "a", "V": "v", "N": "n", "R": "r"}  # wordnet.ADJ, VERB, NOUN, ADV


def lemma_pos(caption: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, lemmas) of a caption: lower-case, word_tokenize, pos_tag, lemmatize with the POS (uncached).

    The tokenizer and lemmatizer are the exact equivalents of ``benchmarks/chair_text.py``; the tagger is
    ``get_tagger()`` (== ``nltk.pos_tag``)."""
    tokens = word_tokenize(caption.lower())
    tagged = get_tagger().tag(tokens)
    return tuple(tokens), tuple(lemmatize(w, _POS.get(tag[:1], "n")) for w, tag in tagged)


@functools.lru_cache(maxsize=4096)
def lemma_pos_tokens(caption: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``lemma_pos(caption)``, cached for the most recent distinct captions."""
    return lemma_pos(caption)


# ------------------------------------------------------------------ object mentions
@dataclass(frozen=True)
class Mention:
    """One MSCOCO object word found in a caption."""

    word: str  # the matched CHAIR word (lemma, or merged phrase), as the reference's ``words``
    obj: str  # its MSCOCO object (the reference's node word)
    token_index: int  # position of its (first) token in the tokenized caption
    surface: str | None  # the caption text it covers, as written (None when it could not be located)
    start: int | None  # character offsets of ``surface`` in the caption
    end: int | None


@dataclass(frozen=True)
class CaptionAnalysis:
    """The merged word list (what Len counts) and the object mentions of one caption."""

    words: tuple[str, ...]
    mentions: tuple[Mention, ...]


@functools.lru_cache(maxsize=4096)
def _token_spans(caption: str, tokens: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
    """Character spans of lower-cased tokens in the original caption (None for tokens not found)."""
    text = caption.lower()
    where = None  # original index of each lower-cased char, when lower() changes the length
    if len(text) != len(caption):
        where = [i for i, ch in enumerate(caption) for _ in ch.lower()]
    pos, spans = 0, []
    for tok in tokens:
        cands = (tok, '"') if tok in ("``", "''") else (tok,)
        hits = [(i, c) for i, c in ((text.find(c, pos), c) for c in cands) if i >= 0]
        if not hits:
            spans.append(None)
            continue
        i, c = min(hits)
        j = i + len(c)
        spans.append((i, j) if where is None else (where[i], where[j - 1] + 1))
        pos = j
    return tuple(spans)


def analyse_words(words: Iterable[str], vocab: ChairVocab) -> tuple[list[tuple[str, int]], list[tuple[str, str, int, int]]]:
    """The reference's merging/filtering on normalised words.

    Returns the merged words with the index of their first token, and the mentions as
    (word, object, first token index, last token index).
    """
    words = list(words)
    merged, spans, i = [], [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in vocab.double_word_dict:
            merged.append(vocab.double_word_dict[pair])
            spans.append((i, i + 1))
            i += 2
        else:
            merged.append(words[i])
            spans.append((i, i))
            i += 1
    drop_seat = "toilet" in merged and "seat" in merged
    objects = vocab.inverse_synonym_dict
    mentions = [(w, objects[w], a, b) for w, (a, b) in zip(merged, spans)
                if w in objects and not (drop_seat and w == "seat")]
    return [(w, a) for w, (a, _) in zip(merged, spans)], mentions


def analyse_caption(caption: str, vocab: ChairVocab | None = None) -> CaptionAnalysis:
    """Merged words and object mentions of a caption (lemma_pos normalisation; cached per caption)."""
    return _analyse_caption(caption, vocab or load_vocab())


@functools.lru_cache(maxsize=4096)
def _analyse_caption(caption: str, vocab: ChairVocab) -> CaptionAnalysis:
    tokens, lemmas = lemma_pos_tokens(caption)
    merged, found = analyse_words(lemmas, vocab)
    spans = _token_spans(caption, tokens) if found else []
    mentions = []
    for w, obj, a, b in found:
        sa, sb = spans[a], spans[b]
        start, end = (sa[0], sb[1]) if sa and sb else (None, None)
        mentions.append(Mention(w, obj, a, caption[start:end] if start is not None else None, start, end))
    return CaptionAnalysis(tuple(w for w, _ in merged), tuple(mentions))


def caption_objects(caption: str, vocab: ChairVocab | None = None) -> list[tuple[str, str]]:
    """(text as written in the caption, MSCOCO object) for every object mention, in caption order."""
    return [(m.surface if m.surface is not None else m.word, m.obj) for m in analyse_caption(caption, vocab).mentions]


# ------------------------------------------------------------------ ground truth and scoring
def coco_image_id(value: object) -> int:
    """The COCO image id of an int, "COCO_val2014_000000002239.jpg", "000000002239.jpg" or "2239"."""
    if isinstance(value, bool):
        raise ValueError(f"not a COCO image id: {value!r}")
    if isinstance(value, int):
        return value
    s = str(value).strip().rsplit("/", 1)[-1]
    s = s.replace("COCO_val2014_", "").replace("COCO_train2014_", "")
    s = s[:-4] if s.lower().endswith((".jpg", ".png")) else s
    if not s.isdigit():
        raise ValueError(f"not a COCO image id: {value!r}")
    return int(s)


class GroundTruth(Mapping):
    """image id -> frozenset of MSCOCO objects over the JSON object of an ``imid_to_objects`` file; an entry
    becomes a frozenset when it is first read (building all 123k of them took most of a small run)."""

    def __init__(self, raw: Mapping, where: str):
        self._raw, self._sets, self._where = raw, {}, where

    def __getitem__(self, image_id: int) -> frozenset:
        hit = self._sets.get(image_id)
        if hit is None:
            if type(image_id) is not int:
                raise KeyError(image_id)
            objects = self._raw[str(image_id)]
            if not isinstance(objects, list):
                raise ValueError(f"{self._where}: image {image_id}: expected a list of objects, got {objects!r}")
            hit = self._sets[image_id] = frozenset(objects)
        return hit

    def __contains__(self, image_id: object) -> bool:
        return type(image_id) is int and str(image_id) in self._raw

    def __iter__(self):
        return (int(k) for k in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@functools.lru_cache(maxsize=4)
def load_ground_truth(variant_or_path: str = "lemma_pos") -> GroundTruth:
    """image id -> MSCOCO objects, from a shipped variant ("lemma_pos", "singularize") or a JSON path."""
    path = GROUND_TRUTH_FILES.get(variant_or_path)
    if path is None:
        path = Path(variant_or_path).expanduser()
        if not path.exists():
            raise ValueError(f"unknown CHAIR ground truth {variant_or_path!r}: use one of "
                             f"{sorted(GROUND_TRUTH_FILES)} or an existing imid_to_objects JSON file")
    data = read_object(path)  # the shipped files: keys at once, an image's objects when first read
    if not isinstance(data, Mapping) or not all(k.isdigit() for k in data):
        raise ValueError(f"{path}: expected a JSON object of COCO image id -> list of objects")
    if not all(k[0] != "0" or k == "0" for k in data):  # "0009" -> "9"
        data = {str(int(k)): v for k, v in data.items()}
    return GroundTruth(data, str(path))


def caption_detail(caption: str, gt_objects: Iterable[str], image_id: object = None,
                   vocab: ChairVocab | None = None) -> dict:
    """One caption's CHAIR record, like the reference's ``sentences[i]`` (plus located ``mentions``)."""
    gt = frozenset(gt_objects)
    an = analyse_caption(caption, vocab)
    halluc = [m for m in an.mentions if m.obj not in gt]
    recalled = {m.obj for m in an.mentions if m.obj in gt}
    n = len(an.mentions)
    return {
        "image_id": image_id,
        "caption": caption,
        "mscoco_hallucinated_words": [[m.word, m.obj] for m in halluc],
        "mscoco_gt_words": sorted(gt),
        "mscoco_generated_words": [m.obj for m in an.mentions],
        "hallucination_idxs": [m.token_index for m in halluc],
        "words": list(an.words),
        "mentions": [{"surface": m.surface, "word": m.word, "object": m.obj, "start": m.start, "end": m.end,
                      "token_index": m.token_index, "hallucinated": m.obj not in gt} for m in an.mentions],
        "metrics": {"CHAIRs": int(bool(halluc)), "CHAIRi": len(halluc) / n if n else 0.0,
                    "Recall": len(recalled) / len(gt) if gt else 0.0, "Len": len(an.words)},
    }


def chair_evaluate(captions: Iterable[tuple[object, str]], ground_truth: Mapping[int, Iterable[str]],
                   vocab: ChairVocab | None = None) -> dict:
    """CHAIR over (image id, caption) pairs: ``{"sentences": [...], "overall_metrics": {...}}``.

    Every id must be in ``ground_truth`` (KeyError otherwise; the reference silently used an empty
    set). Overall metrics are those of ``chair_overall`` (fractions like the reference, except Len).
    Scoring without the per-caption records: ``chair_counts`` (benchmarks/chair_counts.py).
    """
    sentences, rows = [], []
    for image_id, caption in captions:
        imid = coco_image_id(image_id)
        d = caption_detail(caption, ground_truth[imid], imid, vocab)
        n, h, g = len(d["mscoco_generated_words"]), len(d["mscoco_hallucinated_words"]), len(d["mscoco_gt_words"])
        r = len({m["object"] for m in d["mentions"] if not m["hallucinated"]})
        rows.append((1, int(h > 0), n, h, r, g, d["metrics"]["Len"]))
        sentences.append(d)
    return {"sentences": sentences, "overall_metrics": chair_overall(rows)}


#: per-caption count columns; their sums give every CHAIR metric
COUNT_COLUMNS = ("captions", "hallucinated_captions", "mentions", "hallucinated_mentions", "recalled",
                 "gt_objects", "words")


def chair_overall(rows: Iterable[tuple[int, ...]]) -> dict:
    """Overall CHAIR metrics from per-caption COUNT_COLUMNS rows.

    Fractions like the reference's ``compute_chair``, except Len, the mean merged-word count (the
    reference stores 0.01 * that). With no mentions at all CHAIRi = 0 and Precision = 0; with no
    ground-truth objects Recall = 0; F1 = 0 when Precision + Recall = 0.
    """
    caps = hcaps = words = hwords = recalled = gts = length = 0
    for c, hc, n, h, r, g, ln in rows:
        caps, hcaps, words, hwords = caps + c, hcaps + hc, words + n, hwords + h
        recalled, gts, length = recalled + r, gts + g, length + ln
    if not caps:
        raise ValueError("no captions to score")
    chair_i = hwords / words if words else 0.0
    precision = 1.0 - chair_i if words else 0.0
    recall = recalled / gts if gts else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"CHAIRs": hcaps / caps, "CHAIRi": chair_i, "Recall": recall, "Precision": precision,
            "F1": f1, "Len": length / caps, "n": caps, "n_mentions": words, "n_hallucinated": hwords}
