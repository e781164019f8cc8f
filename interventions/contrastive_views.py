"""Family helpers for contrastive decoding: image features, merged input embeddings, and the `View`s built from them.

A `View` is what the engine (`interventions.contrastive`) decodes: text embeddings with the image features
scattered into the image-token positions, left-padded, with their attention mask. The helpers compute image
features as each supported family's own forward does, so an intervention can alter them (or the pixels, or the
image tokens) before merging.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

BLIP_FAMILIES = ("instructblip", "blip2")
SUPPORTED_FAMILIES = ("llava", "llava_next", "instructblip", "blip2")


@dataclass
class View:
    """One view of a batch for the language model: merged input embeddings and their (left-padded) mask."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L] (0 = left padding)
    input_ids: torch.Tensor | None = None  # [B, L] the prompt ids the embeddings stand for (image tokens included)


def check_family(adapter: Any, what: str) -> None:
    """Raise a ValueError naming the supported families when `adapter.family` is not one of them."""
    if adapter.family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{what} supports the families {', '.join(SUPPORTED_FAMILIES)}, not {adapter.family!r}")


def vision_inputs(inputs: dict) -> dict:
    """The entries of a batch's inputs the image encoder uses (pixel values, image sizes, Q-Former text)."""
    keys = ("pixel_values", "image_sizes", "qformer_input_ids", "qformer_attention_mask")
    return {k: inputs[k] for k in keys if k in inputs}


def concat_vision_inputs(parts: Sequence[dict]) -> dict:
    """Several vision-input dicts (same keys) stacked along the batch dimension."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def image_features(adapter: Any, vis: dict) -> tuple[list[torch.Tensor], Any]:
    """Per image, the features that replace its image tokens, computed as the model's own forward does.

    Returns (list of [n_i, D] tensors, the encoder output object). One call runs the vision encoder once
    for every image in `vis` (a batch, or several views of it stacked).
    """
    m = adapter.model
    fam = adapter.family
    if fam in ("llava", "llava_next"):
        cfg = m.config
        kw = dict(pixel_values=vis["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
                  vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)
        if fam == "llava_next":
            kw["image_sizes"] = vis["image_sizes"]
        out = m.model.get_image_features(**kw)
        return list(out.pooler_output), out
    if fam == "instructblip":
        out = m.get_image_features(vis["pixel_values"], qformer_input_ids=vis["qformer_input_ids"],
                                   qformer_attention_mask=vis.get("qformer_attention_mask"), return_dict=True)
        return list(out.pooler_output), out
    if fam == "blip2":
        out = m.get_image_features(vis["pixel_values"], return_dict=True)
        return list(out.pooler_output), out
    check_family(adapter, "contrastive decoding")
    raise AssertionError


def qformer_features(adapter: Any, image_embeds: torch.Tensor, vis: dict) -> torch.Tensor:
    """Q-Former + language projection on given vision-encoder embeddings [B, T, C] -> [B, Q, D].

    The same steps as the model's `get_image_features` after its vision encoder (InstructBLIP also feeds the
    instruction to the Q-Former), so DAMRO can re-run them on the kept patch embeddings.
    """
    m = adapter.model
    b = image_embeds.shape[0]
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    query_tokens = m.query_tokens.expand(b, -1, -1)
    if adapter.family == "instructblip":
        qids = vis["qformer_input_ids"]
        qmask = vis.get("qformer_attention_mask")
        if qmask is None:
            qmask = torch.ones_like(qids)
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=image_embeds.device)
        qmask = torch.cat([query_mask, qmask.to(query_mask.device)], dim=1)
        out = m.qformer(input_ids=qids, attention_mask=qmask, query_embeds=query_tokens,
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=True)
        query_output = out[0][:, : query_tokens.shape[1], :]
    else:
        out = m.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_mask, return_dict=True)
        query_output = out[0]
        if query_output.dtype != image_embeds.dtype:
            query_output = query_output.to(image_embeds.dtype)
    return m.language_projection(query_output)


def merge_embeddings(adapter: Any, input_ids: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token embeddings of `input_ids` with the image features scattered into the image-token positions."""
    embeds = adapter.model.get_input_embeddings()(input_ids)
    mask = adapter.image_token_mask(input_ids)
    flat = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)
    if int(mask.sum()) != flat.shape[0]:
        raise ValueError(f"{int(mask.sum())} image tokens in the prompt but {flat.shape[0]} image features")
    return embeds.masked_scatter(mask.unsqueeze(-1), flat)


def view_from_features(adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       features: Sequence[torch.Tensor]) -> View:
    """A View of prompt ids whose image tokens take `features` (one tensor per row, in token order)."""
    return View(merge_embeddings(adapter, input_ids, features), attention_mask, input_ids)


def views_from_pixels(adapter: Any, inputs: dict, pixel_values: Sequence[torch.Tensor]) -> list[View]:
    """One View per pixel tensor (same prompt), all images encoded in ONE vision pass."""
    vis = vision_inputs(inputs)
    parts = [{**vis, "pixel_values": pv} for pv in pixel_values]
    feats, _ = image_features(adapter, concat_vision_inputs(parts))
    b = inputs["input_ids"].shape[0]
    return [view_from_features(adapter, inputs["input_ids"], inputs["attention_mask"], feats[i * b:(i + 1) * b])
            for i in range(len(pixel_values))]


def shrink_image_tokens(adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids with each row's image-token span cut to its first `keep[i]` tokens, left-padded again."""
    pad = adapter.tokenizer.pad_token_id
    rows = []
    for i, (s, e) in enumerate(adapter.image_spans(input_ids)):
        if keep[i] > e - s:
            raise ValueError(f"row {i}: cannot keep {keep[i]} of its {e - s} image tokens")
        ids = torch.cat([input_ids[i, : s + keep[i]], input_ids[i, e:]])
        mask = torch.cat([attention_mask[i, : s + keep[i]], attention_mask[i, e:]])
        rows.append(ids[mask.bool()])
    width = max(r.shape[0] for r in rows)
    new_ids = torch.full((len(rows), width), pad, dtype=input_ids.dtype, device=input_ids.device)
    new_mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype, device=attention_mask.device)
    for i, r in enumerate(rows):
        new_ids[i, width - r.shape[0]:] = r
        new_mask[i, width - r.shape[0]:] = 1
    return new_ids, new_mask


def language_model(adapter: Any) -> torch.nn.Module:
    """The module that maps (input ids | embeddings, mask, positions, cache) to next-token logits."""
    return adapter.model.language_model if adapter.family in BLIP_FAMILIES else adapter.model


def lm_forward(adapter: Any, **kwargs: Any) -> Any:
    """One language-model forward with a KV cache, logits of the last position only."""
    return language_model(adapter)(**kwargs, use_cache=True, logits_to_keep=1, return_dict=True)
