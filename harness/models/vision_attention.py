"""Vision-encoder CLS attention over image patches and top-k patch selection: the recipes DAMRO uses.

DAMRO (Gong et al., EMNLP 2024; github.com/coder-gx/DAMRO) ranks the patches by how much the vision
encoder's CLS token attends to them and keeps the top k for its contrastive view. How the attention is
computed differs per family; both recipes are reproduced from the reference's modified transformers 4.43:

- CLIP (LLaVA-1.5 `models/llava/modeling_llava.py`, LLaVA-NeXT `models/llava_next/modeling_llava_next.py`):
  forward hooks on `encoder.layers[vision_feature_layer].self_attn.q_proj` / `k_proj` (the layer whose
  output the projector reads; -2 for LLaVA), then ONE softmax over the full projection, all heads merged:
  `softmax(q @ k^T * C**-0.5)` with C the vision hidden size, and the CLS row `attn[:, 0, 1:]`.
- BLIP (InstructBLIP `models/instructblip/modeling_instructblip.py` `generate`): a hook on
  `encoder.layers[-2].self_attn.qkv`, split into heads as the attention does, per-head
  `softmax(q @ k^T * d**-0.5)` (d the head dim), mean over heads, CLS row `attn[:, 0, 1:]`.

`torch.topk(cls_attn, k, dim=1)` (sorted: descending attention) gives the kept patch indices, in that order.
Everything is computed in float32 (the reference runs its models in float32).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def clip_cls_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """CLS-to-patch attention [N, T-1] from q/k projections [N, T, C] (token 0 is CLS), heads merged.

    Only the CLS query row is computed: a softmax is row-wise, so this equals row 0 of the full matrix.
    """
    q = q.float()
    k = k.float()
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax((q[:, :1] @ k.transpose(-2, -1)) * scale, dim=-1)  # [N, 1, T]
    return attn[:, 0, 1:]


def blip_cls_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """CLS-to-patch attention [N, T-1] from a fused qkv projection [N, T, 3C]: per head, then head mean."""
    n, t, c3 = qkv.shape
    c = c3 // 3
    d = c // num_heads
    mixed = qkv.float().reshape(n, t, 3, num_heads, d).permute(2, 0, 3, 1, 4)  # [3, N, H, T, d]
    q, k = mixed[0], mixed[1]
    attn = torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * d ** -0.5, dim=-1)  # [N, H, 1, T]
    return attn.mean(dim=1)[:, 0, 1:]


def topk_patches(cls_attn: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] of the k patches with the highest CLS attention, highest first (as the reference)."""
    n_patches = cls_attn.shape[-1]
    if not 0 < k <= n_patches:
        raise ValueError(f"damro topk={k} must be between 1 and the number of patches ({n_patches})")
    return torch.topk(cls_attn, k, dim=1, largest=True, sorted=True).indices


def encoder_layer_index(feature_layer: int, num_layers: int) -> int:
    """The encoder block whose output is `hidden_states[feature_layer]` (hidden_states[0] = embeddings)."""
    idx = feature_layer if feature_layer < 0 else feature_layer - 1
    if not -num_layers <= idx < num_layers:
        raise ValueError(f"vision feature layer {feature_layer} has no encoder block (encoder has {num_layers})")
    return idx % num_layers


@contextmanager
def capture(model: torch.nn.Module, paths: dict[str, str]) -> Iterator[dict]:
    """Record the forward outputs of modules ({name: module path}) into the yielded dict (last call wins)."""
    from harness.hooks import forward_hooks

    store: dict = {}

    def make(name):
        def hook(_module, _args, output):
            store[name] = output.detach()
        return hook

    with forward_hooks(model, {path: make(name) for name, path in paths.items()}):
        yield store
