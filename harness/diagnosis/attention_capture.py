"""Forward hooks that record every attention matrix (graph-attached) and decoder output of one forward pass.

The hooked decoder, vision-encoder and Q-Former attention modules compute eager attention while the hooks are
active (`interventions.attention_fn.eager_attention`), so they return their weights under an SDPA model too.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from harness.models.adapter import VLMAdapter


@dataclass
class Captured:
    """Attention matrices (graph-attached) and decoder hidden states recorded during one forward pass."""

    decoder: list[torch.Tensor] = field(default_factory=list)
    vision: list[torch.Tensor] = field(default_factory=list)
    qformer_self: list[torch.Tensor] = field(default_factory=list)
    qformer_cross: list[torch.Tensor] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)  # decoder layer outputs [1, n, H]


def _attn_hook(store: list, path: str):
    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(f"{path} returned no attention weights: diagnosis needs attn_implementation "
                               "eager or sdpa (set model.attn_implementation=sdpa)")
        store.append(weights)
    hook.reads_attention = True
    return hook


def attention_modules(model: torch.nn.Module, hooks: dict) -> list[torch.nn.Module]:
    """The attention modules whose weights the hooks read (to be switched to eager attention meanwhile)."""
    return [model.get_submodule(p) for p, fn in hooks.items() if getattr(fn, "reads_attention", False)]


def _hidden_hook(store: list):
    def hook(module, args, output):
        store.append(output[0] if isinstance(output, tuple) else output)
    return hook


def capture_hooks(adapter: VLMAdapter, cap: Captured, vision: bool = True) -> dict:
    """{module path: hook} recording decoder attentions and outputs, and (optionally) vision / Q-Former attentions."""
    hooks: dict = {}
    dec, attn = adapter.site_path("decoder_layers"), adapter.site_path("attention")
    for i in range(adapter.num_layers):
        hooks[f"{dec}.{i}.{attn}"] = _attn_hook(cap.decoder, f"{dec}.{i}.{attn}")
        hooks[f"{dec}.{i}"] = _hidden_hook(cap.hidden)
    if not vision:
        return hooks
    vpath, vattn = adapter.sites.get("vision_layers"), adapter.spec.vision_attention
    if vpath and vattn:  # None: the family's vision attention returns no weights
        for i in range(len(adapter.site("vision_layers"))):
            p = f"{vpath}.{i}.{vattn}"
            hooks[p] = _attn_hook(cap.vision, p)
    qpath = adapter.sites.get("qformer")
    if qpath:
        for i, layer in enumerate(adapter.site("qformer").encoder.layer):
            p = f"{qpath}.encoder.layer.{i}.attention.attention"
            hooks[p] = _attn_hook(cap.qformer_self, p)
            if getattr(layer, "has_cross_attention", False):
                p = f"{qpath}.encoder.layer.{i}.crossattention.attention"
                hooks[p] = _attn_hook(cap.qformer_cross, p)
    return hooks


@contextmanager
def grad_through(model: torch.nn.Module) -> Iterator[None]:
    """Build an autograd graph through the model (frozen parameters temporarily require grad)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
