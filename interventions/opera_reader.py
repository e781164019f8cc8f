"""What OPERA reads from the model: the last decoder layer's attention (eager on that layer only, through
`interventions.attention_fn`), the candidate pass's mask, and whether the family's KV cache can be cut."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from interventions.attention_fn import edit_attention_logits


class Reader:
    """Reads the last decoder layer's attention; optionally masks candidates from each other in every layer."""

    def __init__(self, adapter: Any):
        path = adapter.site_path("attention")
        self.all = [layer.get_submodule(path) for layer in adapter.decoder_layers()]
        self.weights: torch.Tensor | None = None
        self.n_cand = 0

    def _capture(self, module, record) -> None:
        self.weights = record["weights"]

    def _edit(self, module, scores, mask):
        c = self.n_cand
        if mask is None or c <= 1:
            return scores, mask
        block = ~torch.eye(c, dtype=torch.bool, device=mask.device)
        tail = mask[..., -c:].masked_fill(block, torch.finfo(mask.dtype).min)
        return scores, torch.cat([mask[..., :-c], tail], dim=-1)

    def check_alone(self, family: str) -> None:
        """Raise when another intervention edits this model's attention logits: its edits assume one query row per
        sequence (the newest token), and the candidate pass feeds C at once."""
        from interventions.attention_fn import _STATES, attention_config

        state = _STATES.get(id(attention_config(self.all)))
        if state is not None and any(a.edit is not None for a in state.stack):
            raise NotImplementedError(f"opera cannot be composed with an intervention that edits attention logits "
                                      f"(e.g. head_guide) on {family!r}: its candidate pass feeds "
                                      f"num_attn_candidates tokens per beam at once")

    @contextmanager
    def reading(self, n_cand: int = 0) -> Iterator[None]:
        """Inside: the last layer's weights land in `weights`; with n_cand > 1 the last n_cand query tokens see
        only themselves among each other (every layer eager for that pass)."""
        self.n_cand = n_cand
        with edit_attention_logits([self.all[-1]], capture=self._capture):
            if n_cand > 1:
                with edit_attention_logits(self.all, edit=self._edit):
                    yield
            else:
                yield


def check_cache(adapter: Any, cache: Any) -> None:
    """Raise a ValueError naming the family when its cache layers cannot be cut and gathered per row."""
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", [None])}
    if kinds != {"DynamicLayer"}:
        raise ValueError(f"opera cannot run on model family {adapter.family!r}: its KV cache layers {sorted(kinds)} "
                         f"cannot be cut and gathered per beam (opera needs transformers' DynamicLayer)")
