"""What Qwen2-VL, Qwen2.5-VL and Qwen3-VL share: dynamic resolution, M-RoPE, image-only processors, tiny parts.

- Dynamic resolution: the image processor resizes an image to multiples of patch*merge pixels (between
  `min_pixels` and `max_pixels`) and flattens it to `pixel_values` [sum of patches, C*T*P*P] with one row of
  `image_grid_thw` (t, h, w in patches) per image; the prompt holds one run of `<|image_pad|>` tokens per image,
  t*h*w / merge^2 of them, between `<|vision_start|>` and `<|vision_end|>`. `split_pixels` cuts the flat tensor by the grids and
  reassembles each image [C, H, W] (`unpatchify`); `join_pixels` lays images out again (`patchify`).
- M-RoPE: position ids are [4, B, L] as `generate` builds them (`_prepare_position_ids_for_generation`): row 0
  the text positions (`cumsum - 1`, used for mask construction only), rows 1..3 the (t, h, w) positions of the
  model's own `get_rope_index` over the left-padded rows; an image advances the text positions by max(h, w) /
  merge, not by its token count. Decoding then advances every axis by one per token (the base
  `next_position_ids`), which is what `generate` does with the stored `rope_deltas`.
- `mm_token_type_ids` (1 on image tokens) is rebuilt from the prompt ids for every view (`row_kwargs`).
- The processors are image-only: transformers' Qwen processors load a video processor, which needs torchvision.
- The ViT has no CLS token, so DAMRO's CLS-attention recipe does not apply (refused with that reason); its
  attention returns no weights (no vision-side relevancy in diagnosis), and with a grid per image there are
  no per-patch-position steering directions (VTI builds text directions only; VaLSe is refused).
- Diagnosis: the `patch_grid` layout (rows x cols of merged tokens) over the resized image.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch

from harness.models.families.base import ModelFamily

# The chat template of Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (their chat_template.json,
# identical for both): a default system prompt, images as <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
TINY_MAX_TOKENS = 16  # the tiny image processors' max_pixels in merged tokens (a 4x4 token grid at most)


@lru_cache(maxsize=None)
def image_only_processor_class(base_name: str):
    """transformers' processor class `base_name` (e.g. Qwen2VLProcessor) without its video processor."""
    import transformers

    base = getattr(transformers, base_name)

    class ImageOnlyQwenProcessor(base):
        """A Qwen-VL processor for images and text only (no `video_processor`, which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None,
                     **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        @classmethod
        def get_attributes(cls):
            return [a for a in super().get_attributes() if a != "video_processor"]

    ImageOnlyQwenProcessor.__name__ = ImageOnlyQwenProcessor.__qualname__ = f"ImageOnly{base_name}"
    return ImageOnlyQwenProcessor


class QwenVLFamily(ModelFamily):
    """The Qwen-VL layout: `model.visual` (ViT with 2x2 patch merger), `model.language_model`, M-RoPE."""

    sites = {
        "decoder_layers": "model.language_model.layers",
        "attention": "self_attn",
        "final_norm": "model.language_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.language_model.embed_tokens",
        "vision_layers": "model.visual.blocks",
        "vision_tower": "model.visual",
        "projector": "model.visual.merger",
        "qformer": None,
    }
    vision_keys = ("pixel_values", "image_grid_thw")
    row_keys = ("mm_token_type_ids",)
    vision_attention = None  # the ViT's attention modules return no weights (block-diagonal over images)
    damro_unsupported = ("Qwen's vision transformer has no CLS token (its patches are merged 2x2 straight into the "
                         "language model), and DAMRO ranks patches by the CLS token's attention")
    steering_vision_unsupported = (
        "at dynamic resolution every image has its own patch grid and token count, so directions per patch "
        "position (VTI) and relevancy-guided patch masks (VaLSe) are not defined, and the ViT's attention returns "
        "no weights")
    #: the image processors' temporal patch size and merge size (2 and 2 in every Qwen2/2.5/3-VL checkpoint)
    temporal_patch_size: int = 2
    merge_size: int = 2
    #: transformers' processor class this family's image-only processor derives from
    processor_class: str = "Qwen2VLProcessor"

    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """The image-only processor (PIL image processor, tokenizer, chat template) of a checkpoint folder."""
        return image_only_processor_class(self.processor_class).from_pretrained(path, backend="pil")

    # ---- inputs --------------------------------------------------------------------------------------
    def row_kwargs(self, adapter: Any, input_ids: torch.Tensor) -> dict:
        """`mm_token_type_ids`: 1 on image tokens, 0 elsewhere (what the processor returns next to the ids)."""
        return {"mm_token_type_ids": (input_ids == adapter.image_token_id).to(torch.int32)}

    def image_kwargs(self, inputs: dict) -> dict:
        """The per-image grids (t, h, w in patches) the language-model forward needs for M-RoPE."""
        return {"image_grid_thw": inputs["image_grid_thw"]} if "image_grid_thw" in inputs else {}

    # ---- image encoding ------------------------------------------------------------------------------
    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """The model's own encoding: merged patch features split per image (and Qwen3-VL's deepstack features)."""
        return adapter.model.model.get_image_features(pixel_values=vis["pixel_values"],
                                                      image_grid_thw=vis["image_grid_thw"], return_dict=True)

    def split_pixels(self, vis: dict) -> list[torch.Tensor]:
        """Per image, its resized image [C, H, W] reassembled from its rows of the flat patch tensor, so a
        pixel-space view (VCD's noise) alters the image once, as the reference alters its image tensor (the
        processor's flat rows hold every pixel `temporal_patch_size` times)."""
        sizes = vis["image_grid_thw"].prod(-1).tolist()
        return [unpatchify(rows, grid.tolist(), self.merge_size, self.temporal_patch_size)
                for rows, grid in zip(vis["pixel_values"].split(sizes), vis["image_grid_thw"])]

    def join_pixels(self, vis: dict, pieces: Sequence[torch.Tensor]) -> dict:
        """`vis` with its flat patch tensor rebuilt from per-image images (inverse of `split_pixels`)."""
        grids = vis["image_grid_thw"].tolist()
        if len(pieces) != len(grids):
            raise ValueError(f"{len(pieces)} pixel pieces for {len(grids)} images in image_grid_thw")
        return {**vis, "pixel_values": torch.cat([patchify(img, grid, self.merge_size, self.temporal_patch_size)
                                                  for img, grid in zip(pieces, grids)])}

    # ---- the language model inside a decoding engine ---------------------------------------------------
    def position_ids(self, adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     image_kwargs: dict) -> torch.Tensor:
        """[4, B, L]: text positions (`cumsum - 1`) then the model's M-RoPE (t, h, w) positions, as `generate`."""
        text = super().position_ids(adapter, input_ids, attention_mask, image_kwargs)
        types = self.row_kwargs(adapter, input_ids)["mm_token_type_ids"]
        if image_kwargs.get("image_grid_thw") is None:
            if bool(types.any()):
                raise ValueError("image tokens in the prompt but no image_grid_thw for M-RoPE")
            return text[None].expand(4, -1, -1).clone()
        mrope, _ = adapter.model.model.get_rope_index(input_ids, mm_token_type_ids=types,
                                                      image_grid_thw=image_kwargs["image_grid_thw"],
                                                      attention_mask=attention_mask)
        return torch.cat([text[None], mrope.to(text.device)])

    # ---- diagnosis -----------------------------------------------------------------------------------
    def model_view_pixels(self, adapter: Any, inputs: dict) -> torch.Tensor:
        """The first image's resized pixels [C, H, W], reassembled from its flat patches."""
        return self.split_pixels({k: inputs[k][:1] if k == "image_grid_thw" else inputs[k]
                                  for k in ("pixel_values", "image_grid_thw")})[0]

    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """`patch_grid`: the span is the first image's merged-token grid, row-major (rows x cols = grid h, w / merge)
        over the resized image the model sees."""
        grid = inputs.get("image_grid_thw")
        if grid is not None and len(grid):
            merge = int(adapter.model.config.vision_config.spatial_merge_size)
            t, h, w = (int(x) for x in grid[0])
            rows, cols = h // merge, w // merge
            if t * rows * cols == span_len and t == 1:
                return {"kind": "patch_grid", "rows": rows, "cols": cols, "merge": merge, "t": t}
        return super().span_geometry(adapter, inputs, span_len)


def unpatchify(rows: torch.Tensor, grid: Sequence[int], merge: int, temporal: int) -> torch.Tensor:
    """One image [C, H, W] from its flat rows [t*h*w, C*T*P*P] (the inverse of the image processor's `patchify`:
    rows are (h/m, w/m, m, m) patches of (C, T, P, P) values); the first frame of the first temporal patch."""
    t, h, w = (int(x) for x in grid)
    if t != 1:
        raise ValueError(f"image_grid_thw {list(grid)}: an image has one temporal patch (t = 1), not a video")
    p = round((rows.shape[-1] / (3 * temporal)) ** 0.5)
    if rows.shape != (h * w, 3 * temporal * p * p):
        raise ValueError(f"pixel rows {tuple(rows.shape)} do not fit image_grid_thw {list(grid)}")
    px = rows.reshape(h // merge, w // merge, merge, merge, 3, temporal, p, p)[..., 0, :, :]
    return px.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, h * p, w * p)  # (C, gh, mh, ph, gw, mw, pw)


def patchify(image: torch.Tensor, grid: Sequence[int], merge: int, temporal: int) -> torch.Tensor:
    """Flat rows [h*w, C*T*P*P] of an image [C, H, W], as the image processor's `patchify` lays them out."""
    t, h, w = (int(x) for x in grid)
    c, height, _ = image.shape
    p = height // h
    px = image.reshape(c, h // merge, merge, p, w // merge, merge, p).permute(1, 4, 2, 5, 0, 3, 6)
    px = px[:, :, :, :, :, None].expand(*px.shape[:5], temporal, p, p)
    return px.reshape(h * w, c * temporal * p * p)


def tiny_text_config(tok, **over) -> dict:
    """The Qwen2 text part of a tiny Qwen-VL (grouped-query attention, head_dim 16, M-RoPE sections 2/3/3)."""
    from harness.models.families import tiny_parts as tp

    cfg = tp.text_config("qwen2", len(tok), tok, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    cfg.update(over)
    return cfg


def tiny_tokenizer():
    """A tiny tokenizer with Qwen's special tokens (ChatML and the vision markers)."""
    from harness.models.families import tiny_parts as tp

    tok = tp.chat_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", image_token="<|image_pad|>")
    tok.video_token = "<|video_pad|>"
    return tok


def token_ids(tok) -> dict:
    """The vision token ids a Qwen-VL config names."""
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def tiny_image_processor(patch: int, mean: Sequence[float], std: Sequence[float]):
    """Qwen's PIL image processor with small pixel bounds: 4 to `TINY_MAX_TOKENS` merged tokens an image."""
    from transformers import Qwen2VLImageProcessorPil

    unit = (patch * 2) ** 2  # one merged token
    return Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 4 * unit, "longest_edge": TINY_MAX_TOKENS * unit},
                                    image_mean=list(mean), image_std=list(std))


__all__ = ["QWEN2_VL_TEMPLATE", "QWEN_SPECIALS", "QwenVLFamily", "image_only_processor_class", "patchify",
           "tiny_image_processor", "tiny_text_config", "tiny_tokenizer", "token_ids", "unpatchify"]
