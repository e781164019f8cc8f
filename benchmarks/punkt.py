"""nltk's English Punkt sentence splitter (``PunktTokenizer("english").tokenize``, as ``nltk.word_tokenize``
runs it), computed without importing nltk.

The decisions follow nltk 3.10's ``PunktSentenceTokenizer`` step for step: candidate ends from its period-context
pattern (the `regex` engine, as nltk's ``redos`` compiles it), each candidate's context string read by the
first-pass (type-based) and second-pass (collocation, orthographic, sentence-starter) annotation with the shipped
``punkt_tab/english`` parameters, and the boundary realignment of closing quotes/brackets. A decision is a pure
function of the context string, so it is memoised on it. Equality with the installed nltk, on the shipped
captions and on random texts: tests/test_scoring_lean.py.
"""
from __future__ import annotations

import functools
from collections import defaultdict

import regex

from benchmarks.base import DATA_DIR

PARAMS_DIR = DATA_DIR / "nltk_data" / "tokenizers" / "punkt_tab" / "english"

_NON_WORD = r"(?:[)\";}\]\*:@\'\({\[\u2018\u2019\u201c\u201d\xab\xbb\?!])"  # cannot be inside a word
_MULTI_CHAR = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"  # dashes and ellipses
_WORD_START = r"[^\(\"\`{\[:;&\#\*@\)}\]\-,]"
_WORD_RE = regex.compile(rf"""(
        {_MULTI_CHAR}
        |
        (?={_WORD_START})\S+?
        (?=
            \s|$|{_NON_WORD}|{_MULTI_CHAR}|,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR})
        )
        |
        \S
    )""", regex.UNICODE | regex.VERBOSE)
_CONTEXT_RE = regex.compile(rf"""
        [\.\?!]
        (?=(?P<after_tok>
            {_NON_WORD}
            |
            \s+(?P<next_tok>\S+)
        ))""", regex.UNICODE | regex.VERBOSE)
_CLOSERS = frozenset('"\')]}\u2018\u2019\u201c\u201d\xab\xbb')  # the first character _REALIGN_RE can match
_REALIGN_RE = regex.compile(r'["\')\]}\u2018\u2019\u201c\u201d\xab\xbb]+?(?:\s+|(?=--)|$)', regex.MULTILINE)
_ELLIPSIS_RE = regex.compile(r"\.\.+$")
_NUMERIC_RE = regex.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_INITIAL_RE = regex.compile(r"[^\W\d]\.$", regex.UNICODE)
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # string.whitespace: nltk looks for the previous word's start among these only
_PUNCTUATION = frozenset(";:,.!?")
_ORTHO_UC, _ORTHO_MID_UC, _ORTHO_BEG_LC, _ORTHO_LC = 2 | 4 | 8, 4, 16, 16 | 32 | 64  # nltk's ortho-context bits


class _Token:
    """A Punkt token: its text, type (lower case, numbers as ##number##) and annotations."""

    __slots__ = ("tok", "type", "sentbreak", "abbr", "ellipsis")

    def __init__(self, tok: str):
        self.tok, self.type = tok, _NUMERIC_RE.sub("##number##", tok.lower())
        self.sentbreak = self.abbr = self.ellipsis = False

    def type_no_period(self) -> str:
        t = self.type
        return t[:-1] if len(t) > 1 and t[-1] == "." else t

    def type_no_sentperiod(self) -> str:
        return self.type_no_period() if self.sentbreak else self.type


def _lines(path) -> list[str]:
    """A parameter file's lines, without their newline (nltk's ``TabDecoder``)."""
    with open(path, encoding="utf-8") as fh:
        return [x[:-1] if x.endswith("\n") else x for x in fh]


class PunktSplitter:
    """``.tokenize(text)`` == nltk's ``PunktTokenizer("english").tokenize(text)``."""

    MEMO_SIZE = 1_000_000  # memoised decisions kept at most (then the memo starts afresh)

    def __init__(self, params_dir=PARAMS_DIR):
        self.abbrev_types = set(_lines(params_dir / "abbrev_types.txt"))
        self.sent_starters = set(_lines(params_dir / "sent_starters.txt"))
        self.collocations = {tuple(x.split("\t")) for x in _lines(params_dir / "collocations.tab")}
        self.ortho = defaultdict(int, {a: int(b) for a, b in (x.split("\t") for x in
                                                               _lines(params_dir / "ortho_context.tab"))})
        self._memo: dict[str, bool] = {}

    # ---- one candidate's decision
    def _first_pass(self, t: _Token) -> None:
        tok = t.tok
        if tok in (".", "?", "!"):
            t.sentbreak = True
        elif _ELLIPSIS_RE.match(tok):
            t.ellipsis = True
        elif tok.endswith(".") and not tok.endswith(".."):
            low = tok[:-1].lower()
            if low in self.abbrev_types or low.split("-")[-1] in self.abbrev_types:
                t.abbr = True
            else:
                t.sentbreak = True

    def _ortho_heuristic(self, t: _Token) -> bool | str:
        if t.tok in _PUNCTUATION:
            return False
        ctx = self.ortho[t.type_no_sentperiod()]
        if t.tok[0].isupper() and (ctx & _ORTHO_LC) and not (ctx & _ORTHO_MID_UC):
            return True
        if t.tok[0].islower() and ((ctx & _ORTHO_UC) or not (ctx & _ORTHO_BEG_LC)):
            return False
        return "unknown"

    def _second_pass(self, t1: _Token, t2: _Token) -> None:
        if not t1.tok.endswith("."):
            return
        typ, next_typ = t1.type_no_period(), t2.type_no_sentperiod()
        initial = _INITIAL_RE.match(t1.tok) is not None
        if (typ, next_typ) in self.collocations:
            t1.sentbreak, t1.abbr = False, True
            return
        if (t1.abbr or t1.ellipsis) and not initial:
            starter = self._ortho_heuristic(t2)
            if starter is True or (t2.tok[0].isupper() and next_typ in self.sent_starters):
                t1.sentbreak = True
                return
        if initial or typ == "##number##":
            starter = self._ortho_heuristic(t2)
            if starter is False or (starter == "unknown" and initial and t2.tok[0].isupper()
                                    and not (self.ortho[next_typ] & _ORTHO_LC)):
                t1.sentbreak, t1.abbr = False, True

    def text_contains_sentbreak(self, context: str) -> bool:
        """Whether Punkt puts a sentence break after some token of ``context`` other than its last."""
        hit = self._memo.get(context)
        if hit is None:
            if len(self._memo) >= self.MEMO_SIZE:
                self._memo.clear()
            toks = [_Token(w) for line in context.split("\n") if line.strip() for w in _WORD_RE.findall(line)]
            for t in toks:
                self._first_pass(t)
            for t1, t2 in zip(toks, toks[1:]):  # t2 as the first pass left it (nltk's pairwise generators)
                self._second_pass(t1, t2)
            hit = self._memo[context] = any(t.sentbreak for t in toks[:-1])
        return hit

    # ---- candidates, slices, realignment
    @staticmethod
    def _end_contexts(text: str) -> list[tuple]:
        """nltk's ``_match_potential_end_contexts``: (match, context) per candidate, overlapping ones merged."""
        out, prev_start, prev_stop, prev_match = [], 0, 0, None
        spaces = [c for c in _ASCII_SPACE if c in text]
        for m in _CONTEXT_RE.finditer(text):
            if len(spaces) == 1:
                last = text.rfind(spaces[0], prev_stop, m.start())
            else:
                last = max((text.rfind(c, prev_stop, m.start()) for c in spaces), default=-1)
            # nltk looks in text[prev_stop:m.start()], where a space at index 0 counts as none
            start = last + 1 if last > prev_stop else prev_start
            if prev_match is not None and prev_stop <= start:
                out.append((prev_match, text[prev_start:prev_stop] + prev_match.group() + prev_match["after_tok"]))
            prev_match, prev_start, prev_stop = m, start, m.start()
        if prev_match is not None:
            out.append((prev_match, text[prev_start:prev_stop] + prev_match.group() + prev_match["after_tok"]))
        return out

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each sentence (nltk's ``span_tokenize`` with realigned boundaries)."""
        slices, last = [], 0
        for m, context in self._end_contexts(text):
            if self.text_contains_sentbreak(context):
                slices.append((last, m.end()))
                last = m.start("next_tok") if m["next_tok"] else m.end()
        slices.append((last, len(text.rstrip())))
        out, realign = [], 0
        for i, (start, stop) in enumerate(slices):
            start += realign
            if i + 1 == len(slices):
                if text[start:stop]:
                    out.append((start, stop))
                continue
            nxt_start, nxt_stop = slices[i + 1]
            # the pattern must start with a closing quote or bracket
            m = _REALIGN_RE.match(text[nxt_start:nxt_stop]) if text[nxt_start:nxt_start + 1] in _CLOSERS else None
            if m:
                out.append((start, nxt_start + len(m.group(0).rstrip())))
                realign = m.end()
            else:
                realign = 0
                if text[start:stop]:
                    out.append((start, stop))
        return out

    def tokenize(self, text: str) -> list[str]:
        """The sentences of ``text``."""
        return [text[s:e] for s, e in self.spans(text)]


@functools.lru_cache(maxsize=1)
def english_splitter() -> PunktSplitter:
    """The English splitter, loaded once from the shipped ``punkt_tab/english`` parameters."""
    return PunktSplitter()
