"""Make NLTK find the NLTK data shipped in ``benchmarks/data/nltk_data`` (never downloads anything).

CHAIR needs three NLTK resources: the Punkt sentence tokenizer parameters (``punkt_tab``), the
averaged-perceptron POS tagger (``averaged_perceptron_tagger_eng``) and WordNet (``corpora/wordnet``).
They are shipped with the package (see ``benchmarks/data/SOURCES.md``), so a user does not have to
set ``NLTK_DATA`` or call ``nltk.download``.

Also the NLTK tools CHAIR calls, loaded once per process: ``get_tagger()`` (``.tag`` gives exactly
``nltk.pos_tag``'s tags, faster) and a cached ``lemmatize(word, pos)``; ``import_nltk()`` imports nltk
without the optional scipy / scikit-learn / pandas / matplotlib it would otherwise load (seconds).
"""
from __future__ import annotations

import functools
import importlib.abc
import sys
from typing import Mapping

from benchmarks.base import DATA_DIR

#: the shipped NLTK data folder
NLTK_DATA_DIR = DATA_DIR / "nltk_data"

#: NLTK resource names CHAIR needs (as ``nltk.data.find`` spells them), with what each is used for
REQUIRED_RESOURCES = {
    "tokenizers/punkt_tab/english/": "nltk.word_tokenize (sentence splitting)",
    "taggers/averaged_perceptron_tagger_eng/": "nltk.pos_tag",
    "corpora/wordnet.zip/wordnet/": "WordNetLemmatizer",
}


#: optional dependencies nltk imports when installed (inside try/except ImportError); CHAIR uses none of them
OPTIONAL_HEAVY = ("scipy", "sklearn", "pandas", "matplotlib")


class _Absent(importlib.abc.MetaPathFinder):
    """Import hook that makes the named top-level packages look uninstalled."""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden while nltk is imported)", name=name)
        return None


def import_nltk():
    """``import nltk``, with the optional packages of OPTIONAL_HEAVY hidden while nltk itself is imported.

    nltk imports scipy and scikit-learn for classifiers and collocation statistics when they are installed
    (2 s of a scoring run); each of those imports is optional in nltk. Packages already imported stay
    visible, and everything is visible again afterwards.
    """
    if "nltk" in sys.modules:
        return sys.modules["nltk"]
    hidden = _Absent(tuple(n for n in OPTIONAL_HEAVY if n not in sys.modules))
    sys.meta_path.insert(0, hidden)
    try:
        import nltk
    finally:
        sys.meta_path.remove(hidden)
    return nltk


def ensure_nltk_data() -> None:
    """Put the shipped ``nltk_data`` folder first on ``nltk.data.path`` (idempotent; no download)."""
    nltk = import_nltk()

    path = str(NLTK_DATA_DIR)
    if not nltk.data.path or nltk.data.path[0] != path:
        while path in nltk.data.path:
            nltk.data.path.remove(path)
        nltk.data.path.insert(0, path)


def check_nltk_data() -> None:
    """Raise LookupError naming every CHAIR resource NLTK cannot find (after ``ensure_nltk_data``)."""
    nltk = import_nltk()

    ensure_nltk_data()
    missing = []
    for name, use in REQUIRED_RESOURCES.items():
        try:
            nltk.data.find(name)
        except LookupError:
            missing.append(f"{name} (for {use})")
    if missing:
        raise LookupError(
            "NLTK resources for CHAIR not found: " + "; ".join(missing)
            + f". They are shipped in {NLTK_DATA_DIR}; reinstall the package if that folder is incomplete."
        )


class FastPerceptronTagger:
    """nltk's averaged-perceptron tagger loaded once, with a vectorised but bit-identical ``predict``.

    This wrapper reuses nltk's own tag dictionary, feature extraction and weights; scores are summed in
    nltk's feature order (so floating point results are identical) and ties go to the alphabetically
    last tag, as in nltk. A decision is memoised on what nltk's features read (the word, the two
    previous tags and the normalised words around it); ``tag_many`` scores the i-th tokens of many
    token lists in one array operation.
    """

    MEMO_SIZE = 1 << 18  # memoised tagging decisions kept at most (then the memo starts afresh)

    def __init__(self) -> None:
        import_nltk()
        from nltk.tag.perceptron import PerceptronTagger

        self._memo: dict[tuple, str] = {}

        self.nltk = PerceptronTagger()
        self._fast = False
        try:
            import numpy as np

            model = self.nltk.model
            self.classes = sorted(model.classes)
            col = {c: j for j, c in enumerate(self.classes)}
            self.row = {f: i for i, f in enumerate(model.weights)}
            self.W = np.zeros((len(self.row) + 1, len(self.classes)))  # + a zero row that pads batches
            self._zero_row = len(self.row)
            for f, ws in model.weights.items():
                for label, w in ws.items():
                    self.W[self.row[f], col[label]] = w
            self._np, self._fast = np, callable(getattr(self.nltk, "_get_features", None))
            self._own_keys = self._fast and self._keys_match_nltk()
        except (AttributeError, KeyError, TypeError, ImportError):
            self._fast = self._own_keys = False

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
        row = self.row
        if set(features.values()) == {1}:  # nltk's features are all counted once
            m = self.W[[row[f] for f in features if f in row]]
        else:
            pairs = [(row[f], v) for f, v in features.items() if v != 0 and f in row]
            m = self.W[[r for r, _ in pairs]] * self._np.array([v for _, v in pairs], dtype=float)[:, None]
        if not len(m):
            return self.classes[-1]
        acc = m.cumsum(axis=0)[-1]  # sequential sums, in feature order, like nltk's loop
        return self.classes[int(self._np.flatnonzero(acc == acc.max())[-1])]

    def _remember(self, key: tuple, tag: str) -> str:
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = tag
        return tag

    def tag_many(self, token_lists: list[list[str]]) -> list[list[tuple[str, str]]]:
        """``[self.tag(tokens) for tokens in token_lists]``; the scores of all lists' i-th tokens are
        computed together (the same sums in the same order per token, so the same tags)."""
        t, memo, row = self.nltk, self._memo, self.row
        if not self._fast or not token_lists:
            return [self.tag(tokens) for tokens in token_lists]
        contexts = [t.START + [t.normalize(w) for w in tokens] + t.END for tokens in token_lists]
        tags: list[list] = [[None] * len(tokens) for tokens in token_lists]
        prevs = [tuple(t.START) for _ in token_lists]  # (prev, prev2) of each list
        for i in range(max(map(len, token_lists))):
            pending = []  # (list index, memo key, weight rows of the features, in nltk's order)
            for s, tokens in enumerate(token_lists):
                if i >= len(tokens):
                    continue
                word, (prev, prev2), ctx = tokens[i], prevs[s], contexts[s]
                tag = t.tagdict.get(word)
                if not tag:
                    key = (word, prev, prev2, ctx[i], ctx[i + 1], ctx[i + 3], ctx[i + 4])
                    tag = memo.get(key)
                    if tag is None:
                        if self._own_keys:
                            keys = self._feature_keys(i, word, ctx, prev, prev2)
                            pending.append((s, key, [r for r in map(row.get, keys) if r is not None]))
                            continue
                        features = t._get_features(i, word, ctx, prev, prev2)
                        if set(features.values()) != {1}:
                            tag = self._remember(key, self._predict(features))
                        else:
                            pending.append((s, key, [row[f] for f in features if f in row]))
                            continue
                tags[s][i], prevs[s] = tag, (tag, prev)
            if pending:
                np = self._np
                idx = np.full((len(pending), max(len(r) for *_, r in pending)), self._zero_row)
                for j, (*_, r) in enumerate(pending):
                    idx[j, :len(r)] = r
                acc = self.W[idx].cumsum(axis=1)[:, -1, :]  # sequential sums in feature order; pads add 0.0
                best = acc.shape[1] - 1 - acc[:, ::-1].argmax(axis=1)  # the last of tied maxima
                for (s, key, _), b in zip(pending, best.tolist()):
                    tag = self._remember(key, self.classes[b])
                    tags[s][i], prevs[s] = tag, (tag, prevs[s][0])
        return [list(zip(tokens, ts)) for tokens, ts in zip(token_lists, tags)]

    def tag(self, tokens: list[str]) -> list[tuple[str, str]]:
        """Penn Treebank tags for ``tokens``, equal to ``nltk.pos_tag(tokens)``."""
        t = self.nltk
        if not self._fast:
            return t.tag(tokens)
        prev, prev2 = t.START
        context = t.START + [t.normalize(w) for w in tokens] + t.END
        out, memo = [], self._memo
        for i, word in enumerate(tokens):
            tag = t.tagdict.get(word)
            if not tag:  # nltk's features read only these: the decision is memoised on them
                key = (word, prev, prev2, context[i], context[i + 1], context[i + 3], context[i + 4])
                tag = memo.get(key)
                if tag is None:
                    tag = self._remember(key, self._predict(t._get_features(i, word, context, prev, prev2)))
            out.append((word, tag))
            prev2, prev = prev, tag
        return out


@functools.lru_cache(maxsize=1)
def get_tagger() -> FastPerceptronTagger:
    """The English POS tagger, loaded once from the shipped data (``.tag(tokens)`` == ``nltk.pos_tag``)."""
    ensure_nltk_data()
    return FastPerceptronTagger()


@functools.lru_cache(maxsize=None)
def lemmatize(word: str, pos: str) -> str:
    """``WordNetLemmatizer().lemmatize(word, pos)``, cached (pos: 'n', 'v', 'a' or 'r').

    Computed by ``benchmarks.chair_text.lemmatize`` from the WordNet index files (same result, without
    building nltk's whole WordNet reader)."""
    from benchmarks.chair_text import lemmatize as lean_lemmatize

    return lean_lemmatize(word, pos)
