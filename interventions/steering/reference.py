"""VTI's released computations (github.com/shengliu66/VTI, `vti_utils/`), as options of our builder and `steer`.

Directions (`steering.combine: reference`; `obtain_textual_vti` / `obtain_visual_vti` with their
`PCA(n_components=1)` from `vti_utils/pca.py`):

- the hidden-state stack has L+1 entries, like `output_hidden_states`: entry 0 is the input of block
  0 (the embeddings), entry l+1 the output of block l; for text, the last entry is taken after the
  final norm (`hidden_states[-1]`; `steering.vti.text_last: final_norm`);
- text: ONE centred rank-1 PCA over all entries concatenated (rows: pairs, features: (L+1) * D);
- vision: the [L+1, T, D] stack of each image is reshaped *in memory order* to [T, (L+1) * D] (VTI's
  `reshape(n_tokens, -1)`, not a transpose), so group g concatenates the L+1 consecutive (layer,
  token) vectors with flat index g*(L+1) .. g*(L+1)+L; one PCA per group over the images;
- the sign of the component is sklearn's `svd_flip` (the largest-magnitude entry of U's first
  column is made positive), not aligned with the mean difference;
- direction = unit component (unit over the whole concatenation, so each layer's slice is shorter)
  + mean difference, split back into the stack, entry 0 (embeddings) dropped: `text.<l>` /
  `vision.<l>` is read at block l's output and applied to block l (`vti_text[1:]`).

Application (`intervention.site: mlp`, `intervention.mode: renorm`; `VTILayer` in
`vti_utils/llm_layers.py`): the output x of block l's MLP becomes
`normalize(normalize(x) + 0.1 * (lam * normalize(d))) * |x|` per token, every position, computed in
float32. VTI returns `x.half()` (its models run in fp16); we return the input's dtype, which is the
same there and keeps float32/bfloat16 models working.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: VTI multiplies the (lam-scaled, unit) direction by 0.1 before adding it to the unit hidden state
RENORM_FACTOR = 0.1


def pca_svd_flip(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first principal component, mean) per group of x [G, N, F]: both [G, F], component unit-norm.

    Centred SVD with sklearn's `svd_flip` sign: the entry of U's first column with the largest
    magnitude is positive (the first one on ties, as `argmax`).
    """
    x = x.float()
    mean = x.mean(1)
    u, _, vh = torch.linalg.svd(x - mean[:, None], full_matrices=False)
    u0 = u[..., 0]  # [G, N]
    sign = torch.sign(u0.gather(1, u0.abs().argmax(1, keepdim=True)))  # [G, 1]
    return vh[:, 0] * sign, mean


def reference_text_direction(diffs: torch.Tensor) -> torch.Tensor:
    """VTI's text directions [L, D] from difference stacks [N, L+1, D] (entry 0: the embeddings)."""
    n, entries, d = diffs.shape
    if n < 2:
        raise ValueError(f"combine=reference needs at least 2 difference rows, got {n}; use more pairs")
    pc, mean = pca_svd_flip(diffs.reshape(1, n, entries * d))
    return (pc + mean).reshape(entries, d)[1:]


def reference_vision_direction(diffs: torch.Tensor) -> torch.Tensor:
    """VTI's vision directions [L, T, D] from difference stacks [N, L+1, T, D], grouped as its reshape."""
    n, entries, tokens, d = diffs.shape
    if n < 2:
        raise ValueError(f"combine=reference needs at least 2 difference rows, got {n}; use more pairs")
    groups = diffs.reshape(n, tokens, entries * d).transpose(0, 1)  # [T groups, N, (L+1) * D]
    pc, mean = pca_svd_flip(groups)
    return (pc + mean).reshape(entries, tokens, d)[1:]


def unit_scaled(direction: torch.Tensor, lam: float) -> torch.Tensor:
    """`lam * normalize(direction)` over the last dimension, float32: the `y` of VTI's renormalised add."""
    return lam * F.normalize(direction.float(), dim=-1)


def renormalised_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """VTI's steering of hidden states x by y = lam * unit direction: direction tilted, per-token norm kept."""
    xf = x.float()
    norm = torch.norm(xf, dim=-1).unsqueeze(-1)
    out = F.normalize(F.normalize(xf, dim=-1) + RENORM_FACTOR * y, dim=-1) * norm
    return out.to(x.dtype)
