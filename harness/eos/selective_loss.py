"""Selective EOS Supervision (Yue et al., "Less is More", ACL 2024), as a loss on logits and labels.

Reference: yuezih/less-is-more `LLaVA/llava/model/language_model/llava_llama.py` (`forward`, after
`super().forward`) and `docs/selective-eos-supervision.md`. What it does, exactly:

1. shift: `logits[..., :-1, :]` predict `labels[..., 1:]` (labels are aligned with input_ids, as in
   LLaVA and Hugging Face);
2. keep the positions whose shifted label is not the ignore index (-100: prompt, image and padding
   positions); every kept position of the whole batch counts once;
3. at a kept position whose label is not EOS the EOS logit is set to -inf (the EOS token is excluded
   from the softmax there); at a position whose label is EOS all logits stay (ordinary cross-entropy);
   the reference builds this as a mask that is 0 on the EOS column and then scatters a 1 at each
   position's label, which is the same thing;
4. `F.cross_entropy(..., reduction="mean")` over the kept positions (a token-level mean over the batch).

The reference hard-codes EOS id 2 (LLaMA `</s>`); here it is an argument. One deliberate difference:
when no position is kept the reference's mean is NaN; this returns a zero that keeps the graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def selective_eos_logits(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """`logits` [N, V] with the EOS column set to -inf at every row whose label [N] is not EOS."""
    rows = (labels != eos_token_id).nonzero(as_tuple=True)[0]
    cols = torch.full_like(rows, eos_token_id)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    return logits.index_put((rows, cols), neg_inf)  # out of place: no [N, V] mask is materialised


def selective_eos_loss(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int,
                       ignore_index: int = IGNORE_INDEX, shift: bool = True,
                       reduction: str = "mean") -> torch.Tensor:
    """The Selective EOS Supervision loss.

    logits: [B, T, V] (or [N, V] with shift=False); labels: [B, T] aligned with the inputs (shift=True
    shifts them by one like a causal LM loss) or already aligned with the logits (shift=False).
    reduction: "mean" (the reference: mean over all non-ignored positions of the batch), "sum" or "none"
    (per kept position, flattened in row-major order).
    """
    if shift:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1).to(flat_logits.device)
    keep = flat_labels != ignore_index
    kept_logits = flat_logits[keep].float()
    kept_labels = flat_labels[keep]
    if kept_labels.numel() == 0:
        zero = logits.sum() * 0.0
        return zero if reduction != "none" else kept_logits.new_zeros(0)
    masked = selective_eos_logits(kept_logits, kept_labels, eos_token_id)
    return F.cross_entropy(masked, kept_labels, reduction=reduction)


def standard_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                     shift: bool = True) -> torch.Tensor:
    """Ordinary shifted token-mean cross-entropy (the baseline objective the reference replaces)."""
    if shift:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    flat_labels = labels.reshape(-1).to(logits.device)
    if (flat_labels != ignore_index).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=ignore_index)
