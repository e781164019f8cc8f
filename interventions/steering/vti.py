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
sign-aligned with their mean difference (`combine: pca`, see `principal_direction` for `svd` and
`mean`), scaled by the mean difference's projection on it (`scale: projection`).

This per-site form stays the default: each layer (and position) gets its own principal direction,
and its sign follows the contrast. In the reference, the component's sign comes from `svd_flip` (the
sign of one row's score, unrelated to the contrast) and is then added to the mean difference, so it
changes the direction; the paper's lambdas then need the reference application too.

VTI's released code differs; each difference is an option (configs/build_steering.yaml, steer.yaml):
- `steering.combine: reference` computes the directions exactly as `obtain_textual_vti` /
  `obtain_visual_vti`: one PCA over all layers concatenated (text) or over VTI's (layer, token)
  groups (vision), embeddings included, `svd_flip` signs, unit PC + mean difference
  (interventions/steering/reference.py; `scale` does not apply);
- `steering.vti.text_last: final_norm` reads the last text layer after the decoder's final norm
  (`hidden_states[-1]`); the default with `combine: reference`, `block` otherwise;
- `steering.vti.answer_separator: ""`: VTI appends the caption to the prompt with no space
  (`conv.get_prompt() + value`); ours is " ";
- `steering.vti.text_with_vision_lam: LAM`: VTI's run script computes the text directions with the
  visual directions already applied (`--alpha_image`, VTI's form); null: the plain model (ours);
- applying at block l's MLP output with renormalisation: `intervention.site=mlp intervention.mode=renorm`
  (ours: `h + lam * d` at block l's output). The paper's lambdas (0.8 / 0.9) are on that scale.
Directions are read where they are applied: entry l of VTI's stack without the embeddings
(`hidden_states[1:]`) is block l's output and steers block l, not a layer later.
Not options: VTI samples `num_demos` demonstrations at random (we take the first `num_pairs`), draws
masks from the global RNG (ours: a seeded generator), uses the last demonstration's question for every
text prompt (all questions in its demo file are the same), and returns fp16 from its hooks.
Reference defaults: 50 demonstrations, `num_masks` (num_trials) 50, `mask_ratio` 0.99,
`alpha_text` 0.8; they are this module's defaults except the number of pairs (the shipped pair
file has 6; pass a larger one).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from harness.hooks import forward_hooks
from interventions.steering import (COMBINES, answer_text, capture_blocks, encode, mask_patches,
                                    num_vision_layers, patch_grid, patch_size, principal_direction,
                                    random_patch_mask, vision_forward)
from interventions.steering.apply import check_choice, steering_hooks
from interventions.steering.reference import reference_text_direction, reference_vision_direction

VTI_COMBINES = COMBINES + ("reference",)
TEXT_LAST = ("block", "final_norm")


@contextmanager
def capture_input(adapter: Any, site: str) -> Iterator[dict]:
    """Record the hidden states entering block 0 of `site` (`hidden_states[0]`) as the yielded dict's 'h'."""
    got: dict = {}

    def hook(module, args, kwargs):
        got["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    with forward_hooks(adapter.model, {f"{adapter.site_path(site)}.0": hook}, pre=True):
        yield got


@torch.no_grad()
def vision_states(adapter: Any, pixel_values: torch.Tensor, layers: Sequence[int],
                  with_input: bool = False) -> torch.Tensor:
    """Vision block outputs [layers, images*tiles, positions, hidden] (float32) for pixel values.

    with_input: block 0's input first (VTI's hidden-state stack), [1 + layers, ...].
    """
    with capture_blocks(adapter, "vision_layers", layers) as got, capture_input(adapter, "vision_layers") as first:
        vision_forward(adapter, pixel_values)
    states = ([first["h"]] if with_input else []) + [got[l] for l in layers]
    return torch.stack([h.float() for h in states])


@torch.no_grad()
def text_last_states(adapter: Any, inputs: dict, layers: Sequence[int], with_input: bool = False,
                     final_norm: bool = False) -> torch.Tensor:
    """Decoder block outputs at the last position [layers, hidden] (float32) for single-row inputs.

    with_input: block 0's input (the embeddings) first; final_norm: the last decoder block's entry
    after the final norm (`hidden_states[-1]`).
    """
    last = adapter.num_layers - 1
    norm_path = adapter.site_path("final_norm")
    normed: dict = {}

    def grab(module, args, out):
        normed["h"] = out.detach()

    with capture_blocks(adapter, "decoder_layers", layers) as got, \
            capture_input(adapter, "decoder_layers") as first, \
            forward_hooks(adapter.model, {norm_path: grab} if final_norm else {}):
        adapter.model(**inputs, use_cache=False)
    states = [normed["h"] if final_norm and l == last else got[l] for l in layers]
    states = ([first["h"]] if with_input else []) + states
    return torch.stack([h[0, -1].float() for h in states])


def visual_differences(adapter: Any, pairs: list, num_masks: int, mask_ratio: float,
                       generator: torch.Generator, with_input: bool = False) -> torch.Tensor:
    """Rows [images, vision layers (+1 with_input), positions, hidden] (CPU): mean masked minus clean states."""
    layers = list(range(num_vision_layers(adapter)))
    patch = patch_size(adapter)
    rows = []
    for pair in pairs:
        pv = encode(adapter, pair.load_image(), answer_text(adapter, pair.question, pair.faithful))["pixel_values"]
        clean = vision_states(adapter, pv, layers, with_input)
        grid = patch_grid(pv, patch)
        n_views = pv.shape[:-3].numel()
        masked = torch.zeros_like(clean)
        for _ in range(num_masks):
            mask = random_patch_mask(n_views, grid, mask_ratio, generator).reshape(*pv.shape[:-3], *grid)
            masked += vision_states(adapter, mask_patches(pv, mask, patch), layers, with_input)
        diff = masked / num_masks - clean  # [L, views, P, D]
        rows.append(diff.mean(1).cpu())  # one row per image (LLaVA-NeXT: averaged over its AnyRes tiles)
    return torch.stack(rows)


def textual_differences(adapter: Any, pairs: list, with_input: bool = False, final_norm: bool = False,
                        sep: str = " ") -> torch.Tensor:
    """Rows [pairs, decoder layers (+1 with_input), hidden]: faithful minus hallucinated last-token states."""
    layers = list(range(adapter.num_layers))
    rows = []
    for pair in pairs:
        image = pair.load_image()
        states = [text_last_states(adapter, encode(adapter, image, answer_text(adapter, pair.question, caption, sep)),
                                   layers, with_input, final_norm)
                  for caption in (pair.faithful, pair.hallucinated)]
        rows.append((states[0] - states[1]).cpu())
    return torch.stack(rows)


def build_vti(adapter: Any, pairs: list, num_masks: int = 50, mask_ratio: float = 0.99, text: bool = True,
              vision: bool = True, seed: int = 0, combine: str = "pca", scale: str = "projection",
              text_last: str | None = None, answer_separator: str = " ",
              text_with_vision_lam: float | None = None) -> tuple[dict, dict]:
    """VTI directions: ({'text.<l>': [D], 'vision.<l>': [P, Dv]}, info for the sidecar)."""
    if not (text or vision):
        raise ValueError("steering.vti: text and vision are both false; nothing to build")
    reason = adapter.spec.steering_vision_unsupported
    if vision and reason:
        raise ValueError(f"steering.vti.vision: VTI's visual directions cannot be built for model family "
                         f"{adapter.family!r}: {reason}; build the text directions only with steering.vti.vision=false")
    if int(num_masks) < 1:
        raise ValueError(f"steering.vti.num_masks={num_masks} must be >= 1")
    check_choice("steering.combine", combine, VTI_COMBINES)
    reference = combine == "reference"
    text_last = check_choice("steering.vti.text_last", text_last or ("final_norm" if reference else "block"),
                             TEXT_LAST)
    under = float(text_with_vision_lam or 0.0)
    if under and not (vision and text):
        raise ValueError("steering.vti.text_with_vision_lam needs both steering.vti.vision and steering.vti.text")
    generator = torch.Generator().manual_seed(int(seed))
    tensors: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {"pairs": len(pairs)}
    hooks: dict = {}
    if vision:
        diffs = visual_differences(adapter, pairs, int(num_masks), float(mask_ratio), generator, reference)
        counts["vision_rows"] = int(diffs.shape[0])
        counts["vision_positions"] = int(diffs.shape[2])
        direction = reference_vision_direction(diffs) if reference else principal_direction(diffs, combine, scale)
        for l in range(direction.shape[0]):  # [L, P, Dv]
            tensors[f"vision.{l}"] = direction[l]
        if under:  # VTI's form, as its run script: visual VTI layers in place while reading the text states
            hooks = steering_hooks(adapter, "vision", dict(enumerate(direction)), under, site="mlp", mode="renorm")
    if text:
        with forward_hooks(adapter.model, hooks, prepend=True):
            diffs = textual_differences(adapter, pairs, reference, text_last == "final_norm", answer_separator)
        counts["text_rows"] = int(diffs.shape[0])
        direction = reference_text_direction(diffs) if reference else principal_direction(diffs, combine, scale)
        for l in range(direction.shape[0]):  # [L, D]
            tensors[f"text.{l}"] = direction[l]
    info = {"counts": counts, "combine": combine, "scale": None if reference else scale, "text_last": text_last,
            "answer_separator": answer_separator, "text_with_vision_lam": under or None,
            "directions": {"text": "faithful - hallucinated, last token", "vision": "mean masked - clean, per position"},
            "reference": "Liu et al. 2024, arXiv:2410.15778; github.com/shengliu66/VTI"}
    if reference:
        info["vti_application"] = "intervention.site=mlp intervention.mode=renorm (VTI's VTILayer)"
    return tensors, info
