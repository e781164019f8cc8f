"""VAR by teacher forcing: one forward pass over prompt + answer, rows read off the captured attention."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from harness.detect.var_alignment import encode_answer
from harness.detect.var_hooks import VARCapture, check_eager, num_heads

ROWS = ("generating", "token")


def _answer_inputs(adapter: Any, batch: Any, answer_ids: torch.Tensor, answer_mask: torch.Tensor) -> dict:
    """Model inputs for prompt + answer (teacher forcing), positions as generate computes them."""
    inputs = dict(batch.inputs)
    dev = inputs["input_ids"].device
    ids = torch.cat([inputs["input_ids"], answer_ids.to(dev)], dim=1)
    mask = torch.cat([inputs["attention_mask"], answer_mask.to(dev, inputs["attention_mask"].dtype)], dim=1)
    inputs["input_ids"], inputs["attention_mask"] = ids, mask
    spec = adapter.spec
    inputs.update(spec.row_kwargs(adapter, ids))  # token-aligned inputs (Qwen's mm_token_type_ids)
    if "position_ids" in inspect.signature(adapter.model.forward).parameters:
        # as generate computes them: cumsum - 1 (padding 0), or the family's M-RoPE positions
        inputs["position_ids"] = spec.position_ids(adapter, ids, mask, spec.image_kwargs(inputs))
    return inputs


def teacher_forced_var(adapter: Any, batch: Any, answer_ids: torch.Tensor, answer_mask: torch.Tensor | None = None,
                       row: str = "generating") -> torch.Tensor:
    """VAR [B, T, L, H] of every answer token, from one forward pass over prompt + answer.

    ``answer_ids`` [B, T] follow the (left-padded) prompt of ``batch``; ``answer_mask`` marks real
    answer tokens (1) and right padding (0). Row ``generating`` uses the query row before each
    token, ``token`` the token's own row (see the module docstring).
    """
    if row not in ROWS:
        raise ValueError(f"row={row!r}; valid choices: {', '.join(ROWS)}")
    check_eager(adapter)
    if answer_mask is None:
        answer_mask = torch.ones_like(answer_ids)
    p, t = batch.inputs["input_ids"].shape[1], answer_ids.shape[1]
    if t == 0:
        return torch.zeros(answer_ids.shape[0], 0, adapter.num_layers, num_heads(adapter))
    rows = slice(p - 1, p - 1 + t) if row == "generating" else slice(p, p + t)
    cap = VARCapture(adapter, adapter.image_token_mask(batch.inputs["input_ids"]), rows=rows)
    inputs = _answer_inputs(adapter, batch, answer_ids, answer_mask)
    with torch.inference_mode(), cap.active():
        adapter.model(**inputs, use_cache=False)
    return cap.stacked()


def teacher_forced_answers(adapter: Any, batch: Any, answers: Sequence[str], row: str = "generating"
                           ) -> list[tuple[str, list[tuple[int, int]], torch.Tensor]]:
    """Per row (answer text, token character spans, VAR [T, L, H]) by teacher forcing the tokenized answers.

    Used when only the answer text is known (answers files, or a capture that cannot be lined up).
    """
    enc = [encode_answer(adapter.tokenizer, a) for a in answers]
    width = max((len(ids) for ids, _ in enc), default=0)
    if width == 0:
        empty = torch.zeros(0, adapter.num_layers, num_heads(adapter))
        return [(a, [], empty) for a in answers]
    pad = adapter.tokenizer.pad_token_id or 0
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for b, (row_ids, _) in enumerate(enc):
        ids[b, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        mask[b, :len(row_ids)] = 1
    var = teacher_forced_var(adapter, batch, ids, mask, row=row)
    return [(a, spans, var[b, :len(row_ids)]) for b, (a, (row_ids, spans)) in enumerate(zip(answers, enc))]
