"""Scoring EOS Supervision (Yue et al., "Less is More", ACL 2024): how a training sample pushes the EOS decision.

Reference: yuezih/less-is-more `LLaVA/llava/model/language_model/llava_llama_filter.py` (`forward`), which
scores every sample of a training minibatch under `torch.no_grad()` and writes `conv_id,s_pos,s_neg`:

* shifted logits/labels (`logits[..., :-1, :]` against `labels[..., 1:]`), per row, positions whose
  label is -100 dropped;
* `probs = log_softmax(logits).exp()`; `one_minus = clamp(1 - probs, min=1e-5)`;
* S_pos = -sum over positions whose label is EOS of log p(EOS)   (how strongly the data says "stop here");
* S_neg = -sum over the other positions of log(one_minus[EOS])  (how strongly it says "do not stop here").

Differences, all deliberate: the EOS id is an argument (the reference hard-codes 2); scores are computed
in float32 (the reference used the training dtype, bf16); S_pos uses the log-softmax directly, equal to
`-log(exp(log_softmax))` except where p(EOS) underflows to 0 (the reference then gives inf). Per-position
counts (n_pos, n_neg) are reported as well.
"""
from __future__ import annotations

from typing import Sequence

import torch

from harness.eos.selective_loss import IGNORE_INDEX

ONE_MINUS_MIN = 1e-5  # the reference's clamp on 1 - p(EOS)


def eos_scores(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int, ignore_index: int = IGNORE_INDEX,
               shift: bool = True, one_minus_min: float = ONE_MINUS_MIN) -> list[dict]:
    """Per row of logits [B, T, V] / labels [B, T]: {S_pos, S_neg, n_pos, n_neg} (floats / ints)."""
    if shift:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    labels = labels.to(logits.device)
    out = []
    for row_logits, row_labels in zip(logits, labels):
        keep = row_labels != ignore_index
        lab = row_labels[keep]
        logp_eos = row_logits[keep].float().log_softmax(dim=-1)[:, eos_token_id]
        is_eos = lab == eos_token_id
        s_pos = -logp_eos[is_eos].sum()
        one_minus = torch.clamp(1 - logp_eos[~is_eos].exp(), min=one_minus_min)
        s_neg = -torch.log(one_minus).sum()
        out.append({"S_pos": float(s_pos), "S_neg": float(s_neg), "n_pos": int(is_eos.sum()),
                    "n_neg": int((~is_eos).sum())})
    return out


@torch.no_grad()
def score_dataset(adapter, dataset, batch_size: int = 1) -> list[dict]:
    """Scores of every record of a `ConversationDataset` with the adapter's model, in order:
    {id, index, S_pos, S_neg, n_pos, n_neg}."""
    from harness.eos.data import iter_batches, split_labels, to_model

    model = adapter.model
    eos = adapter.tokenizer.eos_token_id
    rows: list[dict] = []
    for records, batch in iter_batches(dataset, batch_size):
        inputs, labels = split_labels(to_model(batch, model, adapter.device))
        logits = model(**inputs).logits
        for rec, score in zip(records, eos_scores(logits, labels, eos)):
            rows.append({"id": rec.get("id", len(rows)), "index": len(rows), **score})
    return rows


def keep_mask(scores: Sequence[dict], max_pos: float | None = None, max_neg: float | None = None) -> list[bool]:
    """Per sample: kept when S_pos <= max_pos and S_neg <= max_neg (an unset bound does not filter)."""
    return [(max_pos is None or s["S_pos"] <= max_pos) and (max_neg is None or s["S_neg"] <= max_neg)
            for s in scores]
