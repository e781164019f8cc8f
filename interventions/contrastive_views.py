"""Views for the decoding engines: prompt ids with their image encoding, built through the model's family.

A `View` is what the engine (`interventions.contrastive`) decodes for B rows: left-padded prompt ids, their
attention mask, and the family's image encoding of the rows' images (the model's own `get_image_features`
output, one entry per image; None for a text-only view). The engine stacks several views into one batch and
runs the model's own forward with the encoding (`ModelFamily.prefill`), so merging, M-RoPE positions,
deepstack features and image-block attention masks are the model's. Interventions build views by altering
the pixels (VCD), the features (DAMRO) or the prompt ids (a shorter image span) before that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class View:
    """One view of a batch: B rows of prompt ids (left-padded), their mask, and the rows' image encoding."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L] (0 = left padding)
    encoding: Any = None  # the family's image encoding of the rows' images, in row order (None: no image)
    image_kwargs: dict = field(default_factory=dict)  # per-image inputs the forward needs (grids, sizes)


def encode(adapter: Any, vis: dict) -> Any:
    """The model's image encoding of vision inputs (one vision pass for every image in `vis`)."""
    return adapter.spec.encode_images(adapter, vis)


def batch_view(adapter: Any, inputs: dict, encoding: Any = None) -> View:
    """The batch as the model sees it: its prompt ids with `encoding` (default: its own images encoded)."""
    spec = adapter.spec
    if encoding is None:
        encoding = encode(adapter, spec.vision_inputs(inputs))
    return View(inputs["input_ids"], inputs["attention_mask"], encoding, spec.image_kwargs(inputs))


def views_from_pixels(adapter: Any, inputs: dict, pixel_sets: Sequence[Sequence[torch.Tensor]]) -> list[View]:
    """One View per set of per-image pixel tensors (same prompt), all images encoded in ONE vision pass.

    `pixel_sets[v][i]` is image i's pixel tensor in view v, as `ModelFamily.split_pixels` gives it.
    """
    spec = adapter.spec
    vis = spec.vision_inputs(inputs)
    parts = [spec.join_pixels(vis, pieces) for pieces in pixel_sets]
    enc = encode(adapter, spec.concat_vision_inputs(parts))
    feats = spec.image_features(enc)
    n = len(feats) // len(pixel_sets)
    return [View(inputs["input_ids"], inputs["attention_mask"], spec.split_encoding(enc, v * n, (v + 1) * n),
                 spec.image_kwargs(inputs)) for v in range(len(pixel_sets))]


def text_only_view(adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> View:
    """A view of prompt ids without image tokens (a no-image contrast); the ids must hold no image token."""
    if bool(adapter.image_token_mask(input_ids).any()):
        raise ValueError("a text-only view cannot hold image tokens")
    return View(input_ids, attention_mask, None, {})


def no_image_view(adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> View:
    """The same prompts without their images: every image position (the family's `image_token_mask` and any
    image placeholder token) removed, rows left-padded again; a text-only view (PAI's and M3ID's
    unconditioned prompt: the template and question around the image, as the references build it)."""
    drop = adapter.image_token_mask(input_ids) | (input_ids == adapter.image_token_id)
    keep = attention_mask.bool() & ~drop
    rows = [input_ids[i][keep[i]] for i in range(input_ids.shape[0])]
    ids, mask = left_pad(rows, adapter.tokenizer.pad_token_id)
    return View(ids, mask.to(attention_mask.dtype), None, {})


def shrink_image_tokens(adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids with each row's (contiguous) image-token span cut to its first `keep[i]` tokens, left-padded."""
    pad = adapter.tokenizer.pad_token_id
    rows = []
    for i, (s, e) in enumerate(adapter.image_spans(input_ids)):
        if keep[i] > e - s:
            raise ValueError(f"row {i}: cannot keep {keep[i]} of its {e - s} image tokens")
        ids = torch.cat([input_ids[i, : s + keep[i]], input_ids[i, e:]])
        mask = torch.cat([attention_mask[i, : s + keep[i]], attention_mask[i, e:]])
        rows.append(ids[mask.bool()])
    return left_pad(rows, pad)


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D id rows as one left-padded [B, L] batch and its attention mask."""
    width = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[0]:] = r
        mask[i, width - r.shape[0]:] = 1
    return ids, mask


def stack_views(adapter: Any, views: Sequence[View], pad_id: int) -> View:
    """The views' rows as one View (view 0's rows first), each left-padded with the pad id to the longest."""
    width = max(v.input_ids.shape[1] for v in views)
    ids, masks = [], []
    for v in views:
        extra = width - v.input_ids.shape[1]
        ids.append(torch.cat([v.input_ids.new_full((v.input_ids.shape[0], extra), pad_id), v.input_ids], dim=1))
        masks.append(torch.cat([v.attention_mask.new_zeros(v.input_ids.shape[0], extra), v.attention_mask], dim=1))
    with_images = [v for v in views if v.encoding is not None]
    encoding = adapter.spec.concat_encodings([v.encoding for v in with_images]) if with_images else None
    keys = {k for v in with_images for k in v.image_kwargs}
    image_kwargs = {k: torch.cat([v.image_kwargs[k] for v in with_images]) for k in keys}
    return View(torch.cat(ids), torch.cat(masks), encoding, image_kwargs)
