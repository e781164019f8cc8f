"""CHAIR counts of a caption that POS-tag only the tokens whose tag can change them.

CHAIR lemmatizes every token with the POS of its tag, but a caption's counts (the number of merged words
and the object mentions) depend on a lemma only through its *class*: the lemma itself when it is a CHAIR
word (a synonym, a word of a two-word phrase, "toilet" or "seat"), else "other". A token whose noun, verb,
adjective and adverb lemmas fall in one class needs no tag ("the", "dog", "street"); the others do ("dogs"
is the noun lemma "dog" but the adjective lemma "dogs"). nltk's tagger is greedy left to right: a scored
token's tag depends on the tags of the two tokens before it, so those are needed too, except that a word of
the tag dictionary gets its tag without context (`needed_tags`). Tagging only the needed tokens
(`FastPerceptronTagger.tag_needed`) gives nltk's tags for them, so the counts are exactly
those of the full pipeline (`chair_metric.analyse_words` over every lemma; tested on every shipped caption
in tests/test_scoring_lean.py). On the shipped captions about 1 token in 15 needs scoring.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from benchmarks.chair_text import lemmatize, word_tokenize

#: Penn Treebank tag initial -> WordNet POS, anything else a noun (the reference's ``get_wordnet_pos``)
POS_OF_TAG = {"J": "a", "V": "v", "N": "n", "R": "r"}
_POS_ORDER = "nvar"


class WordClasses:
    """Per token: its class when every POS gives the same one, else its classes by POS (cached per token)."""

    def __init__(self, vocab) -> None:
        words = set(vocab.inverse_synonym_dict) | {"toilet", "seat"}
        for phrase in vocab.double_word_dict:
            words.update(phrase.split(" "))
        self.words = frozenset(words)
        self._cache: dict[str, tuple[bool, object]] = {}

    def of(self, token: str) -> tuple[bool, object]:
        """(True, class) when the token's class does not depend on its tag, else (False, {pos: class});
        a class is the lemma when it is a CHAIR word, else None."""
        hit = self._cache.get(token)
        if hit is None:
            by_pos = {}
            for pos in _POS_ORDER:
                lemma = lemmatize(token, pos)
                by_pos[pos] = lemma if lemma in self.words else None
            classes = set(by_pos.values())
            hit = (True, classes.pop()) if len(classes) == 1 else (False, by_pos)
            self._cache[token] = hit
        return hit


def needed_tags(fixed_class: Sequence[bool], tokens: Sequence[str], tagdict: Mapping[str, str]) -> list[bool]:
    """Which tokens' tags must be known: those whose class depends on the tag, and the two tokens before
    every needed token that the tagger scores (a word of the tag dictionary is tagged without its context)."""
    need = [not f for f in fixed_class]
    for j in range(len(need) - 1, -1, -1):
        if need[j] and not tagdict.get(tokens[j]):
            if j >= 1:
                need[j - 1] = True
            if j >= 2:
                need[j - 2] = True
    return need


def count_classes(classes: Sequence[object], vocab) -> tuple[int, tuple[str, ...]]:
    """(merged word count, MSCOCO objects of the mentions in order) of a caption's token classes: the
    reference's two-word merge, toilet-seat rule and object filter (``analyse_words``), which only CHAIR
    words (non-None classes) can take part in."""
    pairs, objects = vocab.double_word_dict, vocab.inverse_synonym_dict
    n, merges, merged, consumed = len(classes), 0, [], -1
    for i, c in enumerate(classes):
        if c is None or i == consumed:
            continue
        nxt = classes[i + 1] if i + 1 < n else None
        phrase = f"{c} {nxt}" if nxt is not None else None
        if phrase is not None and phrase in pairs:
            merged.append(pairs[phrase])
            merges += 1
            consumed = i + 1
        else:
            merged.append(c)
    drop_seat = "toilet" in merged and "seat" in merged
    found = tuple(objects[w] for w in merged if w in objects and not (drop_seat and w == "seat"))
    return n - merges, found


def summarise_captions(captions: Iterable[str], vocab, tagger, word_classes: WordClasses
                       ) -> list[tuple[int, tuple[str, ...]]]:
    """Per caption: (merged word count, MSCOCO objects of its mentions), tagging only what matters."""
    tagdict, known, of, out = tagger.tagdict, word_classes._cache, word_classes.of, []
    for caption in captions:
        tokens = word_tokenize(caption.lower())
        info = [known.get(t) or of(t) for t in tokens]
        if all(f for f, _ in info):
            classes = [c for _, c in info]
        else:
            need = needed_tags([f for f, _ in info], tokens, tagdict)
            tagged = tagger.tag_needed(tokens, need)
            classes = [c if f else c[POS_OF_TAG.get(tag[:1], "n")] for (f, c), (_, tag) in zip(info, tagged)]
        out.append(count_classes(classes, vocab) if any(c is not None for c in classes) else (len(classes), ()))
    return out
