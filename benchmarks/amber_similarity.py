"""spaCy word similarity for AMBER's generative metric: the model loaded by name, with install help.

AMBER's ``inference.py`` calls ``spacy.load("en_core_web_lg")`` and asks
``nlp(a).similarity(nlp(b)) > 0.8``. en_core_web_lg is not on PyPI: install spaCy with the
``[amber]`` extra, then ``python -m spacy download en_core_web_lg``. Any pipeline with word vectors
(a package name or a saved folder) can stand in for it through ``benchmark.spacy_model``.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any


def load_spacy(name: str) -> Any:
    """``spacy.load(name)`` (a package name or a pipeline folder), or an error saying how to install it."""
    install = (f"pip install 'halluc-bench[amber]' && python -m spacy download {name}" if "/" not in name
               else f"pip install 'halluc-bench[amber]', and check that the pipeline folder {name} exists")
    try:
        import spacy
    except ImportError:
        raise ImportError(f"AMBER's generative metric needs spaCy and the {name!r} vectors: {install}") from None
    try:
        return spacy.load(name)
    except OSError as e:
        raise OSError(f"spaCy model {name!r} is not installed (AMBER's generative metric compares words "
                      f"with its vectors; it is not on PyPI): {install}\n({e})") from None


def check_spacy(name: str) -> None:
    """Raise the install message unless spaCy and the model `name` (package or folder) are available."""
    import importlib.util

    if importlib.util.find_spec("spacy") is None or not (Path(name).expanduser().exists() or _is_package(name)):
        load_spacy(name)  # raises with the install command


def _is_package(name: str) -> bool:
    import spacy.util

    return spacy.util.is_package(name)


class SpacySimilarity:
    """``nlp(a).similarity(nlp(b)) > threshold``, as the reference asks it, with docs and answers cached."""

    def __init__(self, nlp: Any, threshold: float = 0.8):
        self.nlp, self.threshold = nlp, float(threshold)
        self._doc = functools.lru_cache(maxsize=None)(nlp)
        self._pair = functools.lru_cache(maxsize=None)(self._similar)

    def _similar(self, a: str, b: str) -> bool:
        with warnings.catch_warnings():  # the reference silences spaCy's "no vector" warnings too
            warnings.simplefilter("ignore", UserWarning)
            return self._doc(a).similarity(self._doc(b)) > self.threshold

    def __call__(self, a: str, b: str) -> bool:
        """Whether the two words are near-synonyms by the threshold."""
        return self._pair(a, b)
