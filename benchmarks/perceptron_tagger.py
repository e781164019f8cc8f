"""nltk's averaged-perceptron POS tagger (``nltk.pos_tag``), with the same tags, computed faster and without
importing nltk.

``FastPerceptronTagger`` reads nltk's shipped tagger (weights, tag dictionary, classes: the JSON files of
``averaged_perceptron_tagger_eng``) and computes nltk 3.10's ``PerceptronTagger.tag``: its word normalisation,
its features (``_feature_keys``, in nltk's order) and its scores, summed in nltk's feature order, so the
floating point sums are nltk's bit for bit; ties go to the alphabetically last tag, as in nltk. A decision is
memoised on what the features read (the word, the two previous tags and the normalised words around it);
``tag_needed`` skips the tokens whose tags nobody needs. Weight rows are laid out on first use. Equality with
the installed nltk (features and tags): tests/test_scoring_lean.py, tests/test_chair.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.lazy_json import read_object
from benchmarks.nltk_setup import NLTK_DATA_DIR

PARAM_KINDS = ("weights", "tagdict", "classes")  # nltk's order of the tagger's JSON files
START, END = ("-START-", "-START2-"), ("-END-", "-END2-")  # nltk's context pads


def _no_constants(name: str) -> float:
    raise ValueError(f"tagger data: non-finite number {name} (nltk rejects those too)")


def load_tagger_params(lang: str = "eng", root: Path | None = None) -> tuple[dict, dict, list]:
    """(weights {feature: {tag: weight}}, tag dictionary {word: tag}, classes) of nltk's shipped tagger."""
    root = root or NLTK_DATA_DIR / "taggers" / f"averaged_perceptron_tagger_{lang}"
    params = []
    for kind in PARAM_KINDS:
        path = root / f"averaged_perceptron_tagger_{lang}.{kind}.json"
        try:
            params.append(read_object(path, parse_constant=_no_constants))  # weights: rows decoded when first read
        except FileNotFoundError:
            raise LookupError(f"POS tagger data not found: {path} (shipped with the package; reinstall it)") from None
    return tuple(params)


def normalize(word: str) -> str:
    """nltk's ``PerceptronTagger.normalize``: hyphenated words, years and numbers as placeholders, else lower case."""
    if "-" in word and word[0] != "-":
        return "!HYPHEN"
    if word.isdigit() and len(word) == 4:
        return "!YEAR"
    if word and word[0].isdigit():
        return "!DIGITS"
    return word.lower()


class FastPerceptronTagger:
    """``.tag(tokens)`` == ``nltk.pos_tag(tokens)``; ``.tag_needed(tokens, needed)`` tags only some tokens."""

    MEMO_SIZE = 1 << 18  # memoised tagging decisions kept at most (then the memo starts afresh)

    def __init__(self, lang: str = "eng") -> None:
        self._memo: dict[tuple, str] = {}
        self._norm: dict[str, str] = {}
        self.weights, self.tagdict, classes = load_tagger_params(lang)
        self.classes = sorted(set(classes))
        self._col = {c: j for j, c in enumerate(self.classes)}
        self.row = {f: i for i, f in enumerate(self.weights)}
        self.W = np.zeros((len(self.row), len(self.classes)))
        self._filled = bytearray(len(self.row))  # rows of W laid out so far

    def _rows(self, keys) -> list[int]:
        """Rows of W of the features among ``keys`` that have weights, in order (laid out on first use)."""
        out, row, filled = [], self.row, self._filled
        for k in keys:
            r = row.get(k)
            if r is None:
                continue
            if not filled[r]:
                for label, w in self.weights[k].items():
                    self.W[r, self._col[label]] = w
                filled[r] = 1
            out.append(r)
        return out

    def _normalize(self, word: str) -> str:
        n = self._norm.get(word)
        if n is None:
            n = self._norm[word] = normalize(word)
        return n

    @staticmethod
    def _feature_keys(i: int, word: str, ctx: list[str], prev: str, prev2: str) -> tuple[str, ...]:
        """The keys of nltk's ``PerceptronTagger._get_features(i, word, ctx, prev, prev2)``, in its order
        (each counted once), built without its defaultdict."""
        i += 2  # len(START)
        w, w1, w2, n1, n2 = ctx[i], ctx[i - 1], ctx[i - 2], ctx[i + 1], ctx[i + 2]
        return ("bias", "i suffix " + word[-3:], "i pref1 " + (word[0] if word else ""), "i-1 tag " + prev,
                "i-2 tag " + prev2, f"i tag+i-2 tag {prev} {prev2}", "i word " + w, f"i-1 tag+i word {prev} {w}",
                "i-1 word " + w1, "i-1 suffix " + w1[-3:], "i-2 word " + w2, "i+1 word " + n1,
                "i+1 suffix " + n1[-3:], "i+2 word " + n2)

    def _remember(self, key: tuple, tag: str) -> str:
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = tag
        return tag

    def tag_needed(self, tokens: Sequence[str], needed: Sequence[bool]) -> list[tuple[str, str | None]]:
        """``self.tag(tokens)`` at the needed positions, None elsewhere (the two tokens before a needed token
        that is not in the tag dictionary must be needed too: ``chair_classes.needed_tags``); only needed words
        are normalised and scored."""
        memo, tagdict, norm = self._memo, self.tagdict, self._normalize
        n, (start, start2), end = len(tokens), START, END
        tags: list[str | None] = [None] * n

        def ctx(j: int) -> str:  # nltk's context[j + 2]: the normalised j-th word, or a START / END pad
            return norm(tokens[j]) if 0 <= j < n else (start, start2)[j + 2] if j < 0 else end[j - n]

        for i in range(n):
            if not needed[i]:
                continue
            word = tokens[i]
            tag = tagdict.get(word)
            if not tag:
                prev = tags[i - 1] if i >= 1 else start
                prev2 = tags[i - 2] if i >= 2 else (start if i == 1 else start2)
                window = [ctx(i - 2), ctx(i - 1), ctx(i), ctx(i + 1), ctx(i + 2)]
                key = (word, prev, prev2, window[0], window[1], window[3], window[4])
                tag = memo.get(key)
                if tag is None:
                    rows = self._rows(self._feature_keys(0, word, window, prev, prev2))
                    if rows:
                        acc = self.W[rows].cumsum(axis=0)[-1]  # nltk's sums, in its feature order
                        tag = self.classes[len(acc) - 1 - int(acc[::-1].argmax())]  # the last of tied maxima
                    else:
                        tag = self.classes[-1]
                    tag = self._remember(key, tag)
            tags[i] = tag
        return list(zip(tokens, tags))

    def tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        """Penn Treebank tags for ``tokens``, equal to ``nltk.pos_tag(tokens)``."""
        return self.tag_needed(tokens, [True] * len(tokens))
