"""Logit lens: the model's final norm and LM head applied to every decoder layer's output at a step.

For the last layer this is exactly the model's own next-token distribution, so under greedy decoding
its top-1 token is the generated token.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from harness.models.adapter import VLMAdapter


def lens_head(adapter: VLMAdapter) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [.., H] -> logits [.., vocab]: the final norm (then OPT's ``project_out`` when present) and lm_head."""
    norm = adapter.site("final_norm")
    head = adapter.site("lm_head")
    parent_path = adapter.site_path("final_norm").rpartition(".")[0]
    parent = adapter.model.get_submodule(parent_path) if parent_path else adapter.model
    project_out = getattr(parent, "project_out", None)

    def apply(h: torch.Tensor) -> torch.Tensor:
        h = norm(h)
        if project_out is not None:
            h = project_out(h)
        return head(h)

    return apply


@torch.no_grad()
def logit_lens(adapter: VLMAdapter, hidden: Sequence[torch.Tensor], top_k: int = 5
               ) -> list[list[list[tuple[str, int, float]]]]:
    """Top-k (token, id, probability) per step and layer: ``out[t][layer][k]``.

    ``hidden[layer]`` is that decoder layer's output at the predicting positions, [steps, H].
    """
    head = lens_head(adapter)
    tok = adapter.tokenizer
    steps = hidden[0].shape[0] if hidden else 0
    out: list[list[list[tuple[str, int, float]]]] = [[] for _ in range(steps)]
    for h in hidden:
        probs = head(h.detach()).float().softmax(-1)
        p, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        for t in range(steps):
            row_ids = ids[t].tolist()
            names = tok.convert_ids_to_tokens(row_ids)
            out[t].append([(str(n), int(i), float(v)) for n, i, v in zip(names, row_ids, p[t].tolist())])
    return out


def lens_table(lens: list[list[list[tuple[str, int, float]]]], step: int) -> list[list[Any]]:
    """Rows ``[layer, token, prob, token, prob, ...]`` of one step (for printing)."""
    rows = []
    for layer, top in enumerate(lens[step]):
        row: list[Any] = [layer]
        for name, _, p in top:
            row += [name, round(p, 4)]
        rows.append(row)
    return rows
