"""Characters <-> tokens of an answer, and the CHAIR object mentions located at their first sub-token.

See ``harness.detect.var`` for how a mention's character span is mapped to a token position.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """(decoded text, [start, end) of each token in it), by incremental decoding (skip_special_tokens)."""
    ids = [int(i) for i in ids]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    spans, prev = [], 0
    for k in range(len(ids)):
        text = tokenizer.decode(ids[:k + 1], skip_special_tokens=True)
        if full.startswith(text):
            end = len(text)
        else:  # a prefix that is not a prefix of the whole (partial character, cleanup): shared part
            end = 0
            for a, c in zip(full, text):
                if a != c:
                    break
                end += 1
        end = max(end, prev)
        spans.append((prev, end))
        prev = end
    return full, spans


def encode_answer(tokenizer: Any, answer: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of an answer text (no special tokens), for teacher forcing."""
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(map(int, o)) for o in enc["offset_mapping"]]


def first_token_at(spans: Sequence[tuple[int, int]], start: int, end: int) -> int | None:
    """Index of the first token whose character span overlaps [start, end) (None when none does)."""
    for k, (a, b) in enumerate(spans):
        if b > a and b > start and a < end:
            return k
    return None


# ------------------------------------------------------------------ object words of an answer
def answer_mentions(answer: str, gt_objects: Any = None, vocab: Any = None) -> list[dict]:
    """CHAIR's object mentions of an answer: surface word, object, char span, hallucinated (None without GT)."""
    from benchmarks.chair_metric import analyse_caption

    out = []
    for m in analyse_caption(answer, vocab).mentions:
        out.append({"word": m.surface if m.surface is not None else m.word, "chair_word": m.word,
                    "object": m.obj, "start": m.start, "end": m.end, "token_index": m.token_index,
                    "hallucinated": None if gt_objects is None else m.obj not in gt_objects})
    return out


def mention_features(answer: str, text: str, spans: Sequence[tuple[int, int]], var: torch.Tensor,
                     mentions: Sequence[dict]) -> list[tuple[dict, int | None, torch.Tensor | None]]:
    """(mention, token index, VAR [L, H]) per mention of ``answer``.

    ``text``/``spans`` are the token character spans of the ids behind ``var`` [T, L, H]; ``answer``
    is ``text`` stripped (as the runner records it) or ``text`` itself. A mention that cannot be
    located gets (mention, None, None).
    """
    shift = len(text) - len(text.lstrip()) if answer != text else 0
    if text.strip() != answer.strip():
        raise ValueError(f"answer {answer[:60]!r} is not the decoded text {text[:60]!r}")
    out = []
    for m in mentions:
        if m["start"] is None:
            out.append((m, None, None))
            continue
        k = first_token_at(spans, m["start"] + shift, m["end"] + shift)
        out.append((m, k, var[k] if k is not None and k < var.shape[0] else None))
    return out
