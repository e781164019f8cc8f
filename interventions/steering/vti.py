"""VTI: Visual and Textual Intervention.

Paper: Sheng Liu, Haotian Ye, James Zou, "Reducing Hallucinations in Vision-Language Models via
Latent Space Steering" (2024, arXiv:2410.15778; ICLR 2025). Reference code: github.com/shengliu66/VTI
(`vti_utils/utils.py`: `obtain_visual_vti`, `obtain_textual_vti`; `vti_utils/llm_layers.py`).

Directions, from a handful of demonstration pairs (image, faithful caption, hallucinated caption):

- visual, per vision encoder block l and token position p: for each image, the block's output on
  the image with random patches masked (`num_masks` masks, each hiding `mask_ratio` of the patches,
  mean-filled; averaged over masks) minus its output on the clean image (LLaVA-NeXT: averaged over
  the image's AnyRes tiles, which all get the same per-position shift when steering). One direction
  per (l, p) from those differences across images. The difference points from a single view towards the
  perturbation-averaged, "stable" feature, as in the reference (`masked - original`).
- textual, per decoder block l: the block output at the last token of [prompt with the image +
  faithful caption] minus the same with the hallucinated caption.

Per layer (and position) the direction is the first principal component of the differences,
sign-aligned with their mean difference (`combine: pca`, see `principal_direction` for `svd`,
`mean` and `reference`), scaled by the mean difference's projection on it (`scale: projection`).

Where this differs from the reference code, on purpose:
- steering is applied additively to block outputs (`h + lam * d`, interventions/steer.py); the
  reference wraps each block's MLP and renormalises: `normalize(normalize(h) + 0.1 * lam *
  normalize(d)) * |h|`;
- visual directions come from each block's own output and are applied there; the reference takes
  `hidden_states[:-1]` (the embeddings and the first L-1 block outputs) and applies entry l after
  block l's MLP, i.e. one layer late;
- the reference's direction is `unit PC + mean difference` (`combine: reference` reproduces it).
Reference defaults: 50 demonstrations, `num_masks` (num_trials) 50, `mask_ratio` 0.99,
`alpha_text` 0.8; they are this module's defaults except the number of pairs (the shipped pair
file has 6; pass a larger one).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from interventions.steering import (answer_text, capture_blocks, encode, mask_patches,
                                    num_vision_layers, patch_grid, patch_size, principal_direction,
                                    random_patch_mask, vision_forward)


@torch.no_grad()
def vision_states(adapter: Any, pixel_values: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Vision block outputs [layers, images*tiles, positions, hidden] (float32) for pixel values."""
    with capture_blocks(adapter, "vision_layers", layers) as got:
        vision_forward(adapter, pixel_values)
    return torch.stack([got[l].float() for l in layers])


@torch.no_grad()
def text_last_states(adapter: Any, inputs: dict, layers: Sequence[int]) -> torch.Tensor:
    """Decoder block outputs at the last position [layers, hidden] (float32) for single-row inputs."""
    with capture_blocks(adapter, "decoder_layers", layers) as got:
        adapter.model(**inputs, use_cache=False)
    return torch.stack([got[l][0, -1].float() for l in layers])


def visual_differences(adapter: Any, pairs: list, num_masks: int, mask_ratio: float,
                       generator: torch.Generator) -> torch.Tensor:
    """Rows [images, vision layers, positions, hidden] (CPU): mean masked minus clean block outputs."""
    layers = list(range(num_vision_layers(adapter)))
    patch = patch_size(adapter)
    rows = []
    for pair in pairs:
        pv = encode(adapter, pair.load_image(), answer_text(adapter, pair.question, pair.faithful))["pixel_values"]
        clean = vision_states(adapter, pv, layers)
        grid = patch_grid(pv, patch)
        n_views = pv.shape[:-3].numel()
        masked = torch.zeros_like(clean)
        for _ in range(num_masks):
            mask = random_patch_mask(n_views, grid, mask_ratio, generator).reshape(*pv.shape[:-3], *grid)
            masked += vision_states(adapter, mask_patches(pv, mask, patch), layers)
        diff = masked / num_masks - clean  # [L, views, P, D]
        rows.append(diff.mean(1).cpu())  # one row per image (LLaVA-NeXT: averaged over its AnyRes tiles)
    return torch.stack(rows)


def textual_differences(adapter: Any, pairs: list) -> torch.Tensor:
    """Rows [pairs, decoder layers, hidden]: faithful minus hallucinated last-token block outputs."""
    layers = list(range(adapter.num_layers))
    rows = []
    for pair in pairs:
        image = pair.load_image()
        pos = text_last_states(adapter, encode(adapter, image, answer_text(adapter, pair.question, pair.faithful)), layers)
        neg = text_last_states(adapter, encode(adapter, image, answer_text(adapter, pair.question, pair.hallucinated)),
                               layers)
        rows.append((pos - neg).cpu())
    return torch.stack(rows)


def build_vti(adapter: Any, pairs: list, num_masks: int = 50, mask_ratio: float = 0.99, text: bool = True,
              vision: bool = True, seed: int = 0, combine: str = "pca", scale: str = "projection") -> tuple[dict, dict]:
    """VTI directions: ({'text.<l>': [D], 'vision.<l>': [P, Dv]}, info for the sidecar)."""
    if not (text or vision):
        raise ValueError("steering.vti: text and vision are both false; nothing to build")
    if int(num_masks) < 1:
        raise ValueError(f"steering.vti.num_masks={num_masks} must be >= 1")
    generator = torch.Generator().manual_seed(int(seed))
    tensors: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {"pairs": len(pairs)}
    if vision:
        diffs = visual_differences(adapter, pairs, int(num_masks), float(mask_ratio), generator)
        counts["vision_rows"] = int(diffs.shape[0])
        counts["vision_positions"] = int(diffs.shape[2])
        direction = principal_direction(diffs, combine, scale)  # [L, P, Dv]
        for l in range(direction.shape[0]):
            tensors[f"vision.{l}"] = direction[l]
    if text:
        diffs = textual_differences(adapter, pairs)
        counts["text_rows"] = int(diffs.shape[0])
        direction = principal_direction(diffs, combine, scale)  # [L, D]
        for l in range(direction.shape[0]):
            tensors[f"text.{l}"] = direction[l]
    info = {"counts": counts, "combine": combine, "scale": scale,
            "directions": {"text": "faithful - hallucinated, last token", "vision": "mean masked - clean, per position"},
            "reference": "Liu et al. 2024, arXiv:2410.15778; github.com/shengliu66/VTI"}
    return tensors, info
