"""How a VLM's image-token span maps back to the image: layouts, views and span -> view reshaping.

Each model family computes its layout (`ModelFamily.span_geometry`); this module turns layouts into views.
- LLaVA-1.5: the span is the encoder's square patch grid (sqrt of the span length; a leading CLS
  token is dropped under the ``full`` feature strategy) over the processed image (the center crop
  the model sees);
- LLaVA-NeXT: the first h*w tokens are the base crop (the whole image resized to one square crop):
  view ``base`` over the processed base crop; the remaining tokens are the AnyRes tiles, unpadded and
  with one ``image_newline`` token per row: view ``tiles`` (newline tokens dropped) over the original
  image (the unpadded tile grid covers it exactly). Vision-encoder relevancy is computed per crop and
  reassembled the same way. LLaVA-OneVision has the same layout (SigLIP: no CLS row in the encoder,
  ``vit_offset`` 0), its tile grid bilinearly shrunk when too large (``rows`` x ``cols`` < ``unpad``'s shape);
- Idefics3 / SmolVLM: the image tokens are not contiguous (text tokens separate the tiles); the "span" is the
  image positions in order: ``rows x cols`` tiles of ``side x side`` tokens each (row-major), then the global
  image (``side x side``): view ``tiles`` (the tile grids side by side) and view ``global``, both over the
  original image (the tiles cover the whole image, resized; the global image is the whole image, resized);
- Gemma 3: the soft tokens are a square grid of SigLIP patches average-pooled k x k (``pool`` k, no CLS:
  ``vit_offset`` 0) over the processed image; vision relevancy spreads each token over its patches;
  InternVL's one-tile images likewise (2x2 patch blocks after pixel shuffle, after the CLS: ``vit_offset`` 1);
- BLIP-2 / InstructBLIP: the span holds the Q-Former's query tokens, which do not map to patches:
  view ``queries`` is a bar per query token; view ``patches`` pushes the per-query values through the
  Q-Former (attention: its cross-attention averaged over layers and heads; relevancy: the Q-Former
  relevancy) onto the vision encoder's patch grid over the processed image;
- Qwen-VL (dynamic resolution): the span is the merged-token grid (``rows`` x ``cols`` = the patch grid
  over the merge size, each token 2x2 patches), row-major: view ``patches`` over the resized image the model
  sees. Its ViT's attention returns no weights, so there is no vision-side relevancy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.models.adapter import VLMAdapter


@dataclass
class View:
    """One way of showing a map over the image span: a grid of cells, drawn over an image or as bars."""

    name: str  # "patches" | "base" | "tiles" | "global" | "queries" | "tokens"
    rows: int
    cols: int
    overlay: str | None  # image it is drawn over: "model" (processed image), "original", or None (bars)
    label: str = ""


def span_geometry(adapter: VLMAdapter, inputs: dict, span_len: int) -> dict:
    """How the image span maps back to the image (the family's `span_geometry`); ``kind`` names the layout."""
    return adapter.spec.span_geometry(adapter, inputs, span_len)


def span_views(geometry: dict) -> list[View]:
    """The views of a span layout."""
    kind = geometry["kind"]
    if kind == "grid":
        s = geometry["side"]
        return [View("patches", s, s, "model", "image patches (the crop the model sees)")]
    if kind == "anyres":
        h, w = geometry["h"], geometry["w"]
        return [View("base", h, w, "model", "base crop (whole image, resized)"),
                View("tiles", geometry["rows"], geometry["cols"], "original", "AnyRes tiles (unpadded)")]
    if kind == "patch_grid":
        return [View("patches", geometry["rows"], geometry["cols"], "model",
                     "merged patches (each token 2x2 ViT patches) over the resized image")]
    if kind == "tiles":
        s, rows, cols = geometry["side"], geometry["rows"], geometry["cols"]
        views = [View("tiles", rows * s, cols * s, "original", f"{rows}x{cols} tiles")] if rows * cols else []
        return views + [View("global", s, s, "original", "global image (whole image, resized)")]
    if kind == "queries":
        s = geometry["side"]
        return [View("queries", 1, geometry["n"], None, "Q-Former query tokens"),
                View("patches", s, s, "model", "patches, through the Q-Former")]
    return [View("tokens", 1, geometry["n"], None, "image tokens")]


def to_views(geometry: dict, values: torch.Tensor, qformer_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Span values [..., span] -> {view name: [..., rows, cols]} for the span-linear views of a layout.

    ``qformer_map`` [queries, patches] pushes query values to patches for BLIP layouts (view ``patches``).
    """
    lead = values.shape[:-1]
    kind = geometry["kind"]
    if kind == "grid":
        s = geometry["side"]
        return {"patches": values[..., geometry["skip"]:].reshape(*lead, s, s)}
    if kind == "anyres":
        h, w, rows, cols = geometry["h"], geometry["w"], geometry["rows"], geometry["cols"]
        base = values[..., :h * w].reshape(*lead, h, w)
        tiles = values[..., h * w:].reshape(*lead, rows, cols + 1)[..., :cols]
        return {"base": base, "tiles": tiles}
    if kind == "patch_grid":
        return {"patches": values.reshape(*lead, geometry["rows"], geometry["cols"])}
    if kind == "tiles":
        s, rows, cols = geometry["side"], geometry["rows"], geometry["cols"]
        n = rows * cols * s * s
        out = {}
        if n:
            tiles = values[..., :n].reshape(*lead, rows, cols, s, s).transpose(-3, -2)
            out["tiles"] = tiles.reshape(*lead, rows * s, cols * s)
        out["global"] = values[..., n:].reshape(*lead, s, s)
        return out
    if kind == "queries":
        out = {"queries": values.reshape(*lead, 1, geometry["n"])}
        if qformer_map is not None:
            s = geometry["side"]
            out["patches"] = (values.float() @ qformer_map.float()).reshape(*lead, s, s)
        return out
    return {"tokens": values.reshape(*lead, 1, geometry["n"])}
