"""VAR captured during ``generate``: one generating row per decoding step, lined up with the new tokens."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from harness.detect.var_hooks import VARCapture, check_eager
from harness.detect.var_teacher_forced import teacher_forced_var


class SequenceRecorder:
    """A generate() stopping criterion that never stops and keeps the latest full sequences.

    Stopping criteria are called after each new token is appended, so after generation
    ``ids`` holds prompt + every generated token (the last one included, which no forward pass sees).
    """

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.ids = input_ids.detach()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def stopping_list(recorder: SequenceRecorder) -> Any:
    """A transformers StoppingCriteriaList holding the recorder."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Criterion(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return recorder(input_ids, scores, **kwargs)

    return StoppingCriteriaList([_Criterion()])


@contextmanager
def capture_generation(adapter: Any, batch: Any) -> Iterator[tuple[VARCapture, SequenceRecorder, dict]]:
    """Capture the generating-row VAR of every decoding step of a plain ``generate`` call.

    Yields (capture, recorder, generate_kwargs): pass the kwargs to generate; afterwards
    ``generation_var(capture, recorder, batch)`` gives (new ids, VAR [B, T, L, H]) or None when the
    recorded steps do not line up with the generated tokens (beam search, a custom decoding engine).
    """
    check_eager(adapter)
    cap = VARCapture(adapter, adapter.image_token_mask(batch.inputs["input_ids"]), rows=None)
    rec = SequenceRecorder()
    with cap.active():
        yield cap, rec, {"stopping_criteria": stopping_list(rec)}


def generation_var(cap: VARCapture, rec: SequenceRecorder, batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(new ids [B, T], VAR [B, T, L, H]) from a capture, or None when it cannot be trusted."""
    if rec.ids is None:
        return None
    b, p = batch.inputs["input_ids"].shape
    new = rec.ids[:, p:]
    steps = cap.num_steps()
    if rec.ids.shape[0] != b or steps != new.shape[1] or steps <= 0:
        return None
    if any(c.shape[0] != b or c.shape[1] != 1 for layer in cap.calls for c in layer[1:]):
        return None
    return new.cpu(), cap.stacked()


def generate_with_var(adapter: Any, batch: Any, decoding: dict, logits_processors: list | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (exactly as ``adapter.generate_ids``); returns (new ids [B, T], VAR [B, T, L, H], generating rows).

    The VAR comes from the attention of each decoding step; when that cannot be lined up with the
    tokens (beam search) it is computed by teacher forcing the generated ids.
    """
    with capture_generation(adapter, batch) as (cap, rec, gkw):
        ids = adapter.generate_ids(batch, decoding, logits_processors, **gkw, **kwargs)
    got = generation_var(cap, rec, batch)
    if got is not None and got[0].shape == ids.shape:
        return ids, got[1]
    mask = answer_mask_from_ids(ids, adapter.tokenizer)
    return ids, teacher_forced_var(adapter, batch, ids, mask)


def answer_mask_from_ids(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS, 0 for the padding after it."""
    eos = tokenizer.eos_token_id
    mask = torch.ones_like(ids)
    if eos is None:
        return mask
    for b in range(ids.shape[0]):
        hits = (ids[b] == eos).nonzero().flatten()
        if hits.numel():
            mask[b, int(hits[0]) + 1:] = 0
    return mask
