"""Exact, faster equivalents of the two NLTK steps CHAIR runs on every caption besides tagging.

* ``word_tokenize(text)`` == ``nltk.word_tokenize(text)``: Punkt sentence splitting (each candidate
  break decided once per distinct context), then
  NLTK's ``NLTKWordTokenizer`` substitutions run once per distinct sentence, with the same compiled
  patterns (nltk 3.10 wraps each one in a timed ``regex`` pattern; here the bare pattern is used)
  and each substitution skipped when the current text holds none of the characters its pattern
  needs in order to match (``_GATES``: a pattern not listed there always runs, so a changed nltk
  pattern is never skipped), or not the substring it needs (``_NEEDS``); the two end-anchored period
  rules run on the text from just before its last period (``_AT_LAST_PERIOD``: their only match).
* ``lemmatize(word, pos)`` == ``WordNetLemmatizer().lemmatize(word, pos)``: nltk's ``_morphy``
  (copied from ``nltk/corpus/reader/wordnet.py``) over the lemma index and exception lists of the
  shipped WordNet, read directly. nltk's ``WordNetCorpusReader`` also scans ``data.adj`` and reads
  ``index.sense`` twice for multilingual mappings, none of which a lemma lookup uses (seconds).

Equality with nltk on every shipped caption is tested in tests/test_scoring_lean.py.
"""
from __future__ import annotations

import functools
import re

from benchmarks.nltk_setup import ensure_nltk_data, import_nltk

# ------------------------------------------------------------------ word tokenizer
_CONTRACTION_GATE = re.compile(r"(?i)can|d'ye|gim|gon|got|lem|more'n|wan|'t")  # literal heads of CONTRACTIONS2/3
#: pattern source -> characters of which at least one must be in the text for the pattern to match
_GATES = {
    "([«“‘„]|[`]+)": "«“‘„`", r"^\"": '"', r"(``)": "`", r"([ \(\[{<])(\"|\'{2})": "\"'",
    r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)": "'",
    r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*+)\s*$": ".", r"([:,])([^\d])": ":,", r"([:,])$": ":,",
    r"\.{2,}": ".", r"[;@#$%&]": ";@#$%&", r"[\u2012-\u2015]": "\u2012\u2013\u2014\u2015",
    r'([^\.])(\.)([\]\)}>"\']*)\s*$': ".", r"[?!]": "?!", r"([^'])' ": "'", r"[*]": "*",
    r"[\]\[\(\)\{\}\<\>]": "[](){}<>", r"--": "-", "([»”’])": "»”’", r"''": "'", r'"': '"',
    r"([^' ])('[sS]|'[mM]|'[dD]|') ": "'", r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": "'",
}


def _bare(pattern):
    """The compiled pattern inside nltk's timed wrapper (the pattern itself when not wrapped)."""
    import regex

    if isinstance(pattern, re.Pattern):
        return pattern
    inner = getattr(pattern, "_rx", None)
    return inner if isinstance(inner, regex.Pattern) else regex.compile(pattern.pattern, pattern.flags)


@functools.lru_cache(maxsize=1)
def _rules() -> tuple[list, list]:
    """(before padding, after padding) lists of (pattern, replacement, gate, needed substring, run on the tail
    from the last period) in NLTKWordTokenizer's order."""
    import_nltk()
    from nltk.tokenize.destructive import NLTKWordTokenizer as T

    def rule(p, repl):
        src = p.pattern
        gate = _CONTRACTION_GATE if (p in T.CONTRACTIONS2 or p in T.CONTRACTIONS3) else _GATES.get(src)
        gate = frozenset(gate) if isinstance(gate, str) else gate
        return _bare(p), repl, gate, _NEEDS.get(src), src in _AT_LAST_PERIOD

    first = [rule(p, r) for p, r in T.STARTING_QUOTES + T.PUNCTUATION + [T.PARENS_BRACKETS, T.DOUBLE_DASHES]]
    then = [rule(p, r) for p, r in T.ENDING_QUOTES]
    then += [rule(p, r" \1 \2 ") for p in list(T.CONTRACTIONS2) + list(T.CONTRACTIONS3)]
    return first, then


_CONTRACTION_HEADS = ("can", "d'ye", "gim", "gon", "got", "lem", "more'n", "wan", "'t")
#: patterns that can only match at the end of the text, just before or after its last "." (a "." then
#: closing brackets/quotes/spaces to the end): they are run on that tail only (the same single match)
_AT_LAST_PERIOD = {r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*+)\s*$", r'([^\.])(\.)([\]\)}>"\']*)\s*$'}
#: patterns that match only where the text holds this substring
_NEEDS = {r"\.{2,}": "..", r"--": "--", r"''": "''"}


def _contraction_gate(text: str) -> bool:
    """Whether a contraction pattern can match: ``_CONTRACTION_GATE.search`` (plain substring tests on
    lower-cased ASCII text, where case-insensitive matching is just that)."""
    if text.isascii():
        low = text.lower()
        return any(h in low for h in _CONTRACTION_HEADS)
    return _CONTRACTION_GATE.search(text) is not None


def _apply(text: str, rules: list) -> str:
    gate_hit, chars = None, None  # chars: the set of the text's characters, recomputed after a change
    for pattern, repl, gate, needs, tail in rules:
        if gate is _CONTRACTION_GATE:
            if gate_hit is None:
                gate_hit = _contraction_gate(text)
            if not gate_hit:
                continue
        elif gate is not None:
            if chars is None:
                chars = set(text)
            if chars.isdisjoint(gate):
                continue
        if needs is not None and needs not in text:
            continue
        if tail:
            k = text.rfind(".") - 1
            if k < 0:
                continue
            end, n = pattern.subn(repl, text[k:])
            text = text[:k] + end
        else:
            text, n = pattern.subn(repl, text)
        if n:
            chars = None
    return text


@functools.lru_cache(maxsize=None)
def tokenize_sentence(sentence: str) -> tuple[str, ...]:
    """``NLTKWordTokenizer().tokenize(sentence)`` (cached per distinct sentence)."""
    first, then = _rules()
    return tuple(_apply(" " + _apply(sentence, first) + " ", then).split())


@functools.lru_cache(maxsize=1)
def _sentence_splitter():
    """nltk's English Punkt tokenizer (``sent_tokenize``'s), deciding each candidate break once per context.

    Punkt decides a candidate break from its context string alone (``text_contains_sentbreak``: the words
    around the period, read against the fixed English parameters), so the decision is memoised on it."""
    ensure_nltk_data()
    from nltk.tokenize.punkt import PunktTokenizer

    class MemoPunkt(PunktTokenizer):
        def text_contains_sentbreak(self, text: str) -> bool:
            hit = memo.get(text)
            if hit is None:
                if len(memo) > 1_000_000:
                    memo.clear()
                hit = memo[text] = super().text_contains_sentbreak(text)
            return hit

    memo: dict[str, bool] = {}
    return MemoPunkt("english")


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (English Punkt sentences, then the word tokenizer per sentence)."""
    return [tok for sent in _sentence_splitter().tokenize(text) for tok in tokenize_sentence(sent)]


# ------------------------------------------------------------------ WordNet lemmatizer
#: nltk's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS
_SUBSTITUTIONS = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_INDEX_LINE = re.compile(r"^(\S+) (\S+) ", re.M)


@functools.lru_cache(maxsize=1)
def _wordnet() -> tuple[dict[str, frozenset], dict[str, dict[str, list[str]]]]:
    """(POS letter -> lemmas indexed under it, POS -> {inflected form: base forms}) of WordNet."""
    nltk = import_nltk()
    ensure_nltk_data()
    root = nltk.data.find("corpora/wordnet.zip/wordnet/")
    index: dict[str, set] = {p: set() for p in "nvars"}
    exceptions: dict[str, dict[str, list[str]]] = {}
    for pos, name in _FILES.items():
        with root.join(f"index.{name}").open() as fh:  # lines "lemma pos ..."; license lines start with a space
            for lemma, p in _INDEX_LINE.findall(fh.read().decode("utf-8")):
                index.setdefault(p, set()).add(lemma)
        with root.join(f"{name}.exc").open() as fh:
            exceptions[pos] = {t[0]: t[1:] for t in (ln.split() for ln in fh.read().decode("utf-8").splitlines())
                               if t}
    return {p: frozenset(v) for p, v in index.items()}, exceptions


def morphy(form: str, pos: str) -> list[str]:
    """nltk's ``WordNetCorpusReader._morphy(form, pos)``: the WordNet base forms of ``form`` (pos n/v/a/r)."""
    if pos not in _FILES:
        raise ValueError(f"WordNet POS must be one of {sorted(_FILES)}, got {pos!r}")
    index, exc = _wordnet()
    lemmas, exceptions, substitutions = index[pos], exc[pos], _SUBSTITUTIONS[pos]
    if form in exceptions:
        forms = exceptions[form]
    else:
        forms = [form[: -len(old)] + new for old, new in substitutions if form.endswith(old)]
    result, seen = [], set()
    for f in [form] + forms:
        if f in lemmas and f not in seen:
            result.append(f)
            seen.add(f)
    return result


@functools.lru_cache(maxsize=None)
def lemmatize(word: str, pos: str) -> str:
    """``WordNetLemmatizer().lemmatize(word, pos)``: the shortest WordNet base form, else the word (cached)."""
    lemmas = morphy(word, pos)
    return min(lemmas, key=len) if lemmas else word
