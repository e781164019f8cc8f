"""Make NLTK find the NLTK data shipped in ``benchmarks/data/nltk_data`` (never downloads anything).

CHAIR needs three NLTK resources: the Punkt sentence tokenizer parameters (``punkt_tab``), the
averaged-perceptron POS tagger (``averaged_perceptron_tagger_eng``) and WordNet (``corpora/wordnet``).
They are shipped with the package (see ``benchmarks/data/SOURCES.md``), so a user does not have to
set ``NLTK_DATA`` or call ``nltk.download``.

Also the NLTK tools CHAIR calls, loaded once per process: ``get_tagger()`` (``.tag`` gives exactly
``nltk.pos_tag``'s tags, faster and without importing nltk: benchmarks/perceptron_tagger.py) and a cached
``lemmatize(word, pos)``; ``import_nltk()`` imports nltk (for the tools that still call it, e.g. the ground-truth
builder) without the optional scipy / scikit-learn / pandas / matplotlib it would otherwise load (seconds).
"""
from __future__ import annotations

import functools
import importlib.abc
import sys

from benchmarks.base import DATA_DIR

#: the shipped NLTK data folder
NLTK_DATA_DIR = DATA_DIR / "nltk_data"

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


@functools.lru_cache(maxsize=1)
def get_tagger():
    """The English POS tagger (``benchmarks.perceptron_tagger.FastPerceptronTagger``), loaded once from the
    shipped data (``.tag(tokens)`` == ``nltk.pos_tag``)."""
    from benchmarks.perceptron_tagger import FastPerceptronTagger

    return FastPerceptronTagger()


@functools.lru_cache(maxsize=None)
def lemmatize(word: str, pos: str) -> str:
    """``WordNetLemmatizer().lemmatize(word, pos)``, cached (pos: 'n', 'v', 'a' or 'r').

    Computed by ``benchmarks.chair_text.lemmatize`` from the WordNet index files (same result, without
    building nltk's whole WordNet reader)."""
    from benchmarks.chair_text import lemmatize as lean_lemmatize

    return lean_lemmatize(word, pos)
