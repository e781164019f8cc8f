"""Exact, faster equivalents of the two NLTK steps CHAIR runs on every caption besides tagging, computed
without importing nltk (its import alone costs a scoring run about 0.4 s).

* ``word_tokenize(text)`` == ``nltk.word_tokenize(text)`` (nltk 3.10): Punkt sentence splitting
  (``benchmarks.punkt``: each candidate break decided once per distinct context), then NLTKWordTokenizer's
  substitutions (written out below, compiled with the engine nltk uses for each) run once per distinct
  sentence, each substitution skipped when the current text holds none of the characters its pattern needs
  in order to match (``_GATES``: a pattern not listed there always runs), or not the substring it needs
  (``_NEEDS``), or, for a contraction, not its literal head (``_CONTRACTION_HEADS``); the end-anchored
  rules run on the text's tail only (``_TAIL``: their only match).
  A plain sentence (ASCII letters, digits, spaces and ``,.-``: most captions) runs only the rules that can
  change its tokens (``_plain_rules``).
* ``lemmatize(word, pos)`` == ``WordNetLemmatizer().lemmatize(word, pos)``: nltk's ``_morphy``
  (as in ``nltk/corpus/reader/wordnet.py``) over the lemma index and exception lists of the
  shipped WordNet, read directly. nltk's ``WordNetCorpusReader`` also scans ``data.adj`` and reads
  ``index.sense`` twice for multilingual mappings, none of which a lemma lookup uses (seconds).

The rules are pinned here, so CHAIR scores do not move with the installed nltk; tests/test_scoring_lean.py
checks they equal the installed nltk's (patterns, and outputs on every shipped caption and random texts).
"""
from __future__ import annotations

import functools
import re
import zipfile

from benchmarks.nltk_setup import NLTK_DATA_DIR
from benchmarks.punkt import english_splitter

#: the shipped WordNet (nltk's ``corpora/wordnet.zip``)
WORDNET_ZIP = NLTK_DATA_DIR / "corpora" / "wordnet.zip"

# ------------------------------------------------------------------ word tokenizer
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


#: NLTKWordTokenizer's substitutions (nltk 3.10), in its order: (pattern, replacement). All but the
#: contractions are compiled with the `regex` engine, as nltk's ``redos`` does; the contractions with ``re``.
#: tests/test_scoring_lean.py checks these equal the installed nltk's, pattern by pattern.
_STARTING_QUOTES = [("([«“‘„]|[`]+)", r" \1 "), (r"^\"", r"``"), (r"(``)", r" \1 "),
                    (r"([ \(\[{<])(\"|\'{2})", r"\1 `` "),
                    (r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 ")]
_PUNCTUATION = [(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*+)\s*$", r"\1 \2 \3 "), (r"([:,])([^\d])", r" \1 \2"),
                (r"([:,])$", r" \1 "), (r"\.{2,}", r" \g<0> "), (r"[;@#$%&]", r" \g<0> "),
                (r"[\u2012-\u2015]", r" \g<0> "), (r'([^\.])(\.)([\]\)}>"\']*)\s*$', r"\1 \2\3 "),
                (r"[?!]", r" \g<0> "), (r"([^'])' ", r"\1 ' "), (r"[*]", r" \g<0> ")]
_PARENS_BRACKETS = (r"[\]\[\(\)\{\}\<\>]", r" \g<0> ")
_DOUBLE_DASHES = (r"--", r" -- ")
_ENDING_QUOTES = [("([»”’])", r" \1 "), (r"''", " '' "), (r'"', " '' "), (r"\s+", " "),
                  (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
                  (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 ")]
_CONTRACTIONS = [r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b",
                 r"(?i)\b(gon)(?#X)(na)\b", r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b",
                 r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)", r"(?i) ('t)(?#X)(is)\b",
                 r"(?i) ('t)(?#X)(was)\b"]


@functools.lru_cache(maxsize=1)
def _rules() -> tuple[list, list, list]:
    """NLTKWordTokenizer's rules in its order: before padding and after padding, as (pattern, replacement, gate,
    needed substring, tail) tuples, then the contractions as (literal head, pattern) pairs."""
    import regex

    def rule(src, repl):
        gate = _GATES.get(src)
        return regex.compile(src), repl, gate and frozenset(gate), _NEEDS.get(src), _TAIL.get(src)

    first = [rule(p, r) for p, r in _STARTING_QUOTES + _PUNCTUATION + [_PARENS_BRACKETS, _DOUBLE_DASHES]]
    then = [rule(p, r) for p, r in _ENDING_QUOTES]
    return first, then, [(h, re.compile(p)) for p, h in zip(_CONTRACTIONS, _CONTRACTION_HEADS)]


@functools.lru_cache(maxsize=1)
def _plain_rules() -> tuple[list, list, list]:
    """``_rules()`` less the rules that leave a plain sentence's tokens as they are: those gated on characters
    or substrings a plain sentence lacks (no rule creates them: every rule only inserts spaces around what it
    matched), and ``\\s+``, which only collapses whitespace that ``split()`` ignores anyway (the rules after it
    that read spaces all need an apostrophe)."""
    def keep(r):
        _, _, gate, needs, _ = r
        return needs is None and not (gate and gate.isdisjoint(_PLAIN_CHARS)) and r[0].pattern != r"\s+"

    first, then, contractions = _rules()
    return [r for r in first if keep(r)], [r for r in then if keep(r)], contractions


#: the literal head of each contraction pattern (in _CONTRACTIONS' order): on ASCII text, where the
#: case-insensitive match is a plain substring test on the lower-cased text, a pattern runs only where its head is
_CONTRACTION_HEADS = ("can", "d'ye", "gim", "gon", "got", "lem", "more'n", "wan", "'t", "'t")
#: some head, case-insensitively (the test for non-ASCII text, where case folding is not just lower())
_CONTRACTION_GATE = re.compile("(?i)" + "|".join(map(re.escape, dict.fromkeys(_CONTRACTION_HEADS))))
#: a "plain" sentence (most captions): ASCII letters, digits, spaces, commas, periods and hyphens, without ".."
#: or "--"; only a few rules can change its tokens (``_plain_rules``)
_PLAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.-")
_PLAIN = re.compile(r"[A-Za-z0-9 ,.\-]*")
#: patterns that can only match at the end of the text, run on its tail only (the same single match, and a
#: pure function of the tail, so memoised): "." = from just before its last "." (a "." then closing
#: brackets/quotes/spaces to the end), n = its last n characters (``$`` also matches before a final newline)
_TAIL = {r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*+)\s*$": ".", r'([^\.])(\.)([\]\)}>"\']*)\s*$': ".",
         r"([:,])$": 2}
#: patterns that match only where the text holds this substring
_NEEDS = {r"\.{2,}": "..", r"--": "--", r"''": "''"}


def _apply(text: str, rules: list) -> str:
    """``text`` after each rule in turn, skipping the rules that cannot match it."""
    chars = None  # the set of the text's characters, recomputed after a change
    for pattern, repl, gate, needs, tail in rules:
        if gate is not None and tail is None:
            if chars is None:
                chars = set(text)
            if chars.isdisjoint(gate):
                continue
        if needs is not None and needs not in text:
            continue
        if tail is not None:
            k = text.rfind(".") - 1 if tail == "." else max(0, len(text) - tail)
            if k < 0 or (gate is not None and gate.isdisjoint(text[k:])):
                continue
            end, n = _sub_tail(pattern, repl, text[k:])
            text = text[:k] + end
        else:
            text, n = pattern.subn(repl, text)
        if n:
            chars = None
    return text


def _contract(text: str, contractions: list) -> str:
    """``text`` after the contraction rules, each run only where its head can match (contractions only insert
    spaces, so no head appears once they start)."""
    if text.isascii():
        low = text.lower()
        patterns = [p for head, p in contractions if head in low]
    else:
        patterns = [p for _, p in contractions] if _CONTRACTION_GATE.search(text) else []
    for p in patterns:
        text = p.sub(r" \1 \2 ", text)
    return text


@functools.lru_cache(maxsize=1 << 16)
def _sub_tail(pattern, repl: str, tail: str) -> tuple[str, int]:
    return pattern.subn(repl, tail)


@functools.lru_cache(maxsize=None)
def tokenize_sentence(sentence: str) -> tuple[str, ...]:
    """``NLTKWordTokenizer().tokenize(sentence)`` (cached per distinct sentence)."""
    plain = _PLAIN.fullmatch(sentence) is not None and ".." not in sentence and "--" not in sentence
    first, then, contractions = _plain_rules() if plain else _rules()
    return tuple(_contract(_apply(" " + _apply(sentence, first) + " ", then), contractions).split())


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (English Punkt sentences, then the word tokenizer per sentence)."""
    return [tok for sent in english_splitter().tokenize(text) for tok in tokenize_sentence(sent)]


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
    index: dict[str, set] = {p: set() for p in "nvars"}
    exceptions: dict[str, dict[str, list[str]]] = {}
    with zipfile.ZipFile(WORDNET_ZIP) as zf:
        for pos, name in _FILES.items():
            text = zf.read(f"wordnet/index.{name}").decode("utf-8")
            for lemma, p in _INDEX_LINE.findall(text):  # lines "lemma pos ..."; license lines start with a space
                index.setdefault(p, set()).add(lemma)
            text = zf.read(f"wordnet/{name}.exc").decode("utf-8")
            exceptions[pos] = {t[0]: t[1:] for t in (ln.split() for ln in text.splitlines()) if t}
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
