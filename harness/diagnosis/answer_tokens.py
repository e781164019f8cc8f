"""The answer side of a diagnosis: its token ids (generated or encoded), their text pieces, and forced inputs."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from harness.models.adapter import VLMAdapter


def encode_answer(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of a recorded answer as the model would have generated it after the prompt.

    SentencePiece tokenizers add the word-start marker themselves; byte-level BPE tokenizers (GPT-2 /
    OPT) need the space that separates the answer from the prompt, so it is prefixed for them.
    """
    text = answer.strip()
    probe = tokenizer.convert_ids_to_tokens(tokenizer(" a", add_special_tokens=False)["input_ids"])
    if probe and str(probe[0]).startswith("Ġ"):
        text = " " + text
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(decoded text, each token's piece of it, each token's [start, end) offsets), by incremental decoding."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    pieces, offsets, prev = [], [], ""
    for k in range(len(ids)):
        cur = tokenizer.decode(list(ids[:k + 1]), skip_special_tokens=True)
        common = len(prev) if cur.startswith(prev) else len(_common_prefix(prev, cur))
        start, end = min(common, len(text)), min(len(cur), len(text))
        if offsets:
            start = max(start, offsets[-1][1])
        end = max(end, start)
        offsets.append((start, end))
        piece = text[start:end]
        if not piece.strip():
            piece = str(tokenizer.convert_ids_to_tokens(int(ids[k])))
        pieces.append(piece)
        prev = cur
    return text, pieces, offsets


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def generate_answer_ids(adapter: VLMAdapter, batch: Any, max_new_tokens: int) -> list[int]:
    """Greedy answer ids for a one-row batch, cut before the first EOS / padding."""
    ids = adapter.generate_ids(batch, {"strategy": "greedy", "max_new_tokens": int(max_new_tokens)})
    stop = {adapter.tokenizer.eos_token_id, adapter.tokenizer.pad_token_id}
    gen_eos = getattr(getattr(adapter.model, "generation_config", None), "eos_token_id", None)
    stop.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    out = []
    for tok in ids[0].tolist():
        if tok in stop:
            break
        out.append(int(tok))
    return out


def forced_inputs(batch: Any, answer_ids: Sequence[int], adapter: Any = None) -> dict:
    """The batch's model inputs with ``answer_ids`` appended to ``input_ids`` / ``attention_mask`` (one row);
    with ``adapter``, the family's token-aligned inputs (e.g. Qwen's ``mm_token_type_ids``) are rebuilt too."""
    inputs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.inputs.items()}
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("diagnosis works on one (image, question) row at a time")
    extra = torch.tensor([list(answer_ids)], dtype=ids.dtype, device=ids.device)
    inputs["input_ids"] = torch.cat([ids, extra], dim=1)
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
    if adapter is not None:
        inputs.update(adapter.spec.row_kwargs(adapter, inputs["input_ids"]))
    return inputs
