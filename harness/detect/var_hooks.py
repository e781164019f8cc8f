"""Forward hooks that reduce every decoder layer's attention weights to VAR rows (image-attention sums).

See ``harness.detect.var`` for the VAR definition. While the hooks are active the decoder's attention
layers compute eager attention (`interventions.attention_fn.eager_attention`), so a model loaded with SDPA
works; flash / flex kernels cannot return weights and are refused.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from harness.hooks import forward_hooks


def attention_paths(adapter: Any) -> list[str]:
    """Module paths of every decoder layer's attention module (the family's `attention` site)."""
    base = adapter.site_path("decoder_layers")
    attn = adapter.sites.get("attention")
    if not attn:
        raise KeyError(f"site 'attention' is not defined for model family {adapter.family!r}")
    return [f"{base}.{i}.{attn}" for i in range(adapter.num_layers)]


def check_eager(adapter: Any) -> None:
    """Raise unless the decoder's attention can be switched to eager for reading weights (eager or SDPA)."""
    from interventions.attention_fn import ATTN_KEY, FALLBACK_OK

    impl = getattr(adapter.model.config, "_attn_implementation", None)
    text_cfg = getattr(adapter.model.config, "text_config", None)
    impl_text = getattr(text_cfg, "_attn_implementation", None) if text_cfg is not None else None
    for value in (impl_text, impl):
        if value not in FALLBACK_OK and value != ATTN_KEY:  # ATTN_KEY: inside another attention session
            raise ValueError(f"VAR needs attention weights: load the model with attn_implementation sdpa or eager "
                             f"(model.attn_implementation), not {value!r}")


class VARCapture:
    """Forward hooks on every decoder layer's attention that reduce the weights to image-attention sums.

    ``key_mask`` [B, P] marks the image positions of the prompt (keys beyond P, generated tokens,
    count as non-image). Each attention call contributes, per layer, ``[B, q, H]`` sums over the image
    keys of the selected query rows: ``rows=None`` keeps the last row (one per decoding step), a slice
    keeps those rows. Weights of batch B * k (beam search) are matched by repeating the mask.
    """

    def __init__(self, adapter: Any, key_mask: torch.Tensor, rows: slice | None = None):
        self.adapter = adapter
        self.key_mask = key_mask.bool()
        self.rows = rows
        self.paths = attention_paths(adapter)
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.paths]
        self.enabled = True

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not self.enabled:
                return None
            w = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if w is None:
                raise RuntimeError(f"{self.paths[layer]} returned no attention weights: VAR needs "
                                   "attn_implementation=eager")
            b, _, q, kv = w.shape
            mask = self.key_mask.to(w.device)
            if mask.shape[0] != b:
                if b % mask.shape[0]:
                    raise RuntimeError(f"attention batch {b} does not match the prompt batch {mask.shape[0]}")
                mask = mask.repeat_interleave(b // mask.shape[0], dim=0)
            p = mask.shape[1]
            if kv < p:
                mask = mask[:, :kv]
            elif kv > p:
                mask = torch.cat([mask, mask.new_zeros(b, kv - p)], dim=1)
            sel = w[:, :, -1:, :] if self.rows is None else w[:, :, self.rows, :]
            var = torch.einsum("bhqk,bk->bqh", sel.float(), mask.float())
            self.calls[layer].append(var.detach().cpu())
            return None
        return hook

    @contextmanager
    def active(self) -> Iterator["VARCapture"]:
        """Hooks registered (and the decoder's attention layers eager) for the duration of the block."""
        from interventions.attention_fn import eager_attention

        modules = [self.adapter.model.get_submodule(p) for p in self.paths]
        with eager_attention(modules), forward_hooks(self.adapter.model,
                                                     {p: self._hook(i) for i, p in enumerate(self.paths)}):
            yield self

    def num_steps(self) -> int:
        """Number of attention calls recorded (per layer; -1 when layers disagree)."""
        counts = {len(c) for c in self.calls}
        return counts.pop() if len(counts) == 1 else -1

    def stacked(self) -> torch.Tensor:
        """All recorded rows as [B, steps * q, L, H] (calls concatenated along the query axis)."""
        per_layer = [torch.cat(c, dim=1) for c in self.calls]  # [B, T, H] each
        return torch.stack(per_layer, dim=2)


def num_heads(adapter: Any) -> int:
    """Attention heads per decoder layer of the language model."""
    cfg = getattr(adapter.model.config, "text_config", None) or adapter.model.config
    return int(cfg.num_attention_heads)
