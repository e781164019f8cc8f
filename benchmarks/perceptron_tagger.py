"""nltk's averaged-perceptron POS tagger (``nltk.pos_tag``), with the same tags, computed faster.

``FastPerceptronTagger`` reuses nltk's tag dictionary, feature extraction and weights (read from the shipped
JSON files); scores are summed in nltk's feature order, so the floating point sums are nltk's bit for bit, and
ties go to the alphabetically last tag, as in nltk. A decision is memoised on what nltk's features read (the
word, the two previous tags and the normalised words around it); ``tag_needed`` skips the tokens whose tags
nobody needs. Weight rows are laid out on first use. Equality with nltk: tests/test_scoring_lean.py.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

from benchmarks.nltk_setup import ensure_nltk_data, import_nltk

PARAM_KINDS = ("weights", "tagdict", "classes")  # nltk's order of the tagger's JSON files


def _no_constants(name: str) -> float:
    raise ValueError(f"tagger data: non-finite number {name} (nltk rejects those too)")


def load_nltk_tagger(lang: str = "eng"):
    """nltk's ``PerceptronTagger`` for ``lang`` from the shipped ``nltk_data`` (its JSON read directly: nltk's
    loader walks the 5 MB of weights again to reject non-finite numbers, which ``json`` rejects here)."""
    nltk = import_nltk()
    ensure_nltk_data()
    from nltk.tag.perceptron import PerceptronTagger

    tagger = PerceptronTagger(load=False)
    if not callable(getattr(tagger, "decode_json_params", None)):
        return PerceptronTagger(lang=lang)
    root = nltk.data.find(f"taggers/averaged_perceptron_tagger_{lang}/")
    params = []
    for kind in PARAM_KINDS:
        with root.join(f"averaged_perceptron_tagger_{lang}.{kind}.json").open() as fh:
            params.append(json.loads(fh.read().decode("utf-8"), parse_constant=_no_constants))
    tagger.decode_json_params(params)
    return tagger


class FastPerceptronTagger:
    """``.tag(tokens)`` == ``nltk.pos_tag(tokens)``; ``.tag_needed(tokens, needed)`` tags only some tokens."""

    MEMO_SIZE = 1 << 18  # memoised tagging decisions kept at most (then the memo starts afresh)

    def __init__(self) -> None:
        self._memo: dict[tuple, str] = {}
        self._norm: dict[str, str] = {}
        self.nltk = load_nltk_tagger()
        self.tagdict: Mapping[str, str] = self.nltk.tagdict
        self._fast = False
        try:
            import numpy as np

            model = self.nltk.model
            self.classes = sorted(model.classes)
            self._col = {c: j for j, c in enumerate(self.classes)}
            self.row = {f: i for i, f in enumerate(model.weights)}
            self.W = np.zeros((len(self.row), len(self.classes)))
            self._filled = bytearray(len(self.row))  # rows of W laid out so far
            self._np, self._fast = np, callable(getattr(self.nltk, "_get_features", None))
            self._own_keys = self._fast and self._keys_match_nltk()
        except (AttributeError, KeyError, TypeError, ImportError):
            self._fast = self._own_keys = False

    def _rows(self, keys) -> list[int]:
        """Rows of W of the features among ``keys`` that have weights, in order (laid out on first use)."""
        out, row, filled = [], self.row, self._filled
        for k in keys:
            r = row.get(k)
            if r is None:
                continue
            if not filled[r]:
                for label, w in self.nltk.model.weights[k].items():
                    self.W[r, self._col[label]] = w
                filled[r] = 1
            out.append(r)
        return out

    def _normalize(self, word: str) -> str:
        n = self._norm.get(word)
        if n is None:
            n = self._norm[word] = self.nltk.normalize(word)
        return n

    def _context(self, tokens: Sequence[str]) -> list[str]:
        t = self.nltk
        return t.START + [self._normalize(w) for w in tokens] + t.END

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

    def _keys_match_nltk(self) -> bool:
        """Whether ``_feature_keys`` gives nltk's features (checked once; otherwise nltk's are used)."""
        t = self.nltk
        tokens = ["A", "well-known", "dog", "ran", "2,000", "m", "in", "1999", "."]
        ctx = t.START + [t.normalize(w) for w in tokens] + t.END
        prev, prev2 = t.START
        for i, word in enumerate(tokens):
            features = t._get_features(i, word, ctx, prev, prev2)
            if set(features.values()) != {1} or list(features) != list(self._feature_keys(i, word, ctx, prev, prev2)):
                return False
            prev2, prev = prev, "NN"
        return True

    def _predict(self, features: Mapping[str, int]) -> str:
        if set(features.values()) == {1}:  # nltk's features are all counted once
            m = self.W[self._rows(features)]
        else:
            pairs = [(f, v) for f, v in features.items() if v != 0 and f in self.row]
            m = self.W[self._rows(f for f, _ in pairs)] * self._np.array([v for _, v in pairs], dtype=float)[:, None]
        if not len(m):
            return self.classes[-1]
        acc = m.cumsum(axis=0)[-1]  # sequential sums, in feature order, like nltk's loop
        return self.classes[int(self._np.flatnonzero(acc == acc.max())[-1])]

    def _remember(self, key: tuple, tag: str) -> str:
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = tag
        return tag

    def tag_needed(self, tokens: Sequence[str], needed: Sequence[bool]) -> list[tuple[str, str | None]]:
        """``self.tag(tokens)`` at the needed positions, None elsewhere (the two tokens before a needed token
        that is not in the tag dictionary must be needed too: ``chair_classes.needed_tags``); only needed words
        are normalised and scored."""
        if not self._own_keys:  # nltk's features changed: tag everything the nltk way
            return [(w, tag if nd else None) for (w, tag), nd in zip(self.tag(list(tokens)), needed)]
        t, memo, tagdict, norm = self.nltk, self._memo, self.tagdict, self._normalize
        n, (start, start2), end = len(tokens), t.START, t.END
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

    def tag(self, tokens: list[str]) -> list[tuple[str, str]]:
        """Penn Treebank tags for ``tokens``, equal to ``nltk.pos_tag(tokens)``."""
        t = self.nltk
        if not self._fast:
            return t.tag(tokens)
        prev, prev2 = t.START
        context = self._context(tokens)
        out, memo = [], self._memo
        for i, word in enumerate(tokens):
            tag = self.tagdict.get(word)
            if not tag:  # nltk's features read only these: the decision is memoised on them
                key = (word, prev, prev2, context[i], context[i + 1], context[i + 3], context[i + 4])
                tag = memo.get(key)
                if tag is None:
                    tag = self._remember(key, self._predict(t._get_features(i, word, context, prev, prev2)))
            out.append((word, tag))
            prev2, prev = prev, tag
        return out
