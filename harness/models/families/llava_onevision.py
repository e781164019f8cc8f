"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP (no CLS token), AnyRes-max-9, Qwen2.

One image (one per row) becomes one contiguous run of `<image>` tokens, packed by the model's
`pack_image_features`: the base crop (the whole image resized to one square crop, h*w tokens, no newline),
then the AnyRes tiles, unpadded to the image's aspect ratio, bilinearly shrunk when the unpadded grid holds
more than about max*h*w cells (`vision_aspect_ratio="anyres_max_<max>"`, ratio > 1.1), with one
`image_newline` token closing each row. The feature strategy is `full` (SigLIP has no CLS token to drop).

The processor is image-only (`ImageOnlyOnevisionProcessor`): transformers' `LlavaOnevisionProcessor` insists
on a video processor, which needs torchvision (not installed here); the image path is the library's own.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.registry import FAMILIES

# The chat template of llava-hf/llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf (their chat_template.json), as
# transformers' tests/models/llava_onevision/test_processing_llava_onevision.py carries it: Qwen2 ChatML with
# the images right after "<|im_start|>user ", the text after a newline, and no newline after <|im_end|>.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
TINY_MAX_TILES = 2  # the tiny model's anyres_max cap (the real one is 9; see build_tiny)


@lru_cache(maxsize=None)
def image_only_processor_class():
    """`LlavaOnevisionProcessor` without its video processor (which needs torchvision): same images, same text."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        """LLaVA-OneVision's processor for images and text only (no `video_processor` attribute)."""

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, num_image_tokens, vision_feature_select_strategy,
                             chat_template, image_token, video_token, vision_aspect_ratio, **kwargs)

    return ImageOnlyOnevisionProcessor


def max_tiles(vision_aspect_ratio: str) -> int:
    """The tile cap of an `anyres_max_<n>` aspect-ratio setting."""
    if not vision_aspect_ratio.startswith("anyres_max_"):
        raise ValueError(f"vision_aspect_ratio={vision_aspect_ratio!r}: expected 'anyres_max_<n>'")
    return int(vision_aspect_ratio[len("anyres_max_"):])


def tile_grid(image_size: Sequence[int], cfg: Any) -> dict:
    """Where one image's tile tokens come from (as `pack_image_features` builds them): the crop grid (nph x npw),
    the unpadded cells' flat indices in the padded patch grid ([R, C]) and the token grid after the anyres_max
    shrink (rows x cols, newline column not counted)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

    vc = cfg.vision_config
    h = w = vc.image_size // vc.patch_size
    size = [int(s) for s in image_size]
    nph, npw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, vc.image_size)
    unpad = unpad_image(torch.arange(nph * h * npw * w).view(1, nph * h, npw * w), size)[0]
    r0, c0 = unpad.shape
    ratio = math.sqrt(r0 * c0 / (max_tiles(cfg.vision_aspect_ratio) * h ** 2))
    rows, cols = (int(r0 // ratio), int(c0 // ratio)) if ratio > 1.1 else (r0, c0)
    return {"h": h, "w": w, "nph": nph, "npw": npw, "unpad": unpad, "rows": rows, "cols": cols}


@FAMILIES.register("llava_onevision")
class LlavaOnevision(ModelFamily):
    """LLaVA-OneVision Qwen2 0.5B / 7B / 72B (llava-hf `-ov-hf` and `-si-hf` checkpoints)."""

    name = "llava_onevision"
    model_types = ("llava_onevision",)
    sites = {
        "decoder_layers": "model.language_model.layers",
        "attention": "self_attn",
        "final_norm": "model.language_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.language_model.embed_tokens",
        "vision_layers": "model.vision_tower.encoder.layers",  # SigLIP encoder blocks
        "vision_tower": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "qformer": None,
    }
    vision_keys = ("pixel_values", "image_sizes", "batch_num_images")
    damro_unsupported = ("its SigLIP vision encoder has no CLS token, and DAMRO ranks patches by the CLS token's "
                         "attention")

    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """The image-only processor (PIL image processor, tokenizer, chat template) of a checkpoint folder."""
        return image_only_processor_class().from_pretrained(path, backend="pil")

    # ---- inputs and image encoding -------------------------------------------------------------------
    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """Features packed as the model packs them (base crop, unpadded and possibly shrunk tiles, newlines)."""
        return adapter.model.model.get_image_features(
            pixel_values=vis["pixel_values"], image_sizes=vis["image_sizes"],
            batch_num_images=vis.get("batch_num_images"), return_dict=True)

    def split_pixels(self, vis: dict) -> list[torch.Tensor]:
        """Per image, its real crops [n_i, 3, H, W] (base crop first), without the all-zero crops the image
        processor appends to pad a batch, so an image's noise does not depend on the other images of its batch.
        (A real crop is all zero only if every pixel equals the normalisation mean exactly: tile canvases are
        padded with black, and no 8-bit value equals the CLIP or SigLIP mean.)"""
        pieces = []
        for crops in vis["pixel_values"].unbind(0):
            real = crops.flatten(1).ne(0).any(-1).nonzero()
            pieces.append(crops[: int(real[-1]) + 1 if real.numel() else crops.shape[0]])
        return pieces

    def join_pixels(self, vis: dict, pieces: Sequence[torch.Tensor]) -> dict:
        """`vis` with its pixel tensor rebuilt from per-image crops, zero-padded to the original crop count."""
        n = vis["pixel_values"].shape[1]
        pads = [torch.cat([p, p.new_zeros(n - p.shape[0], *p.shape[1:])]) for p in pieces]
        return {**vis, "pixel_values": torch.stack(pads)}

    # ---- diagnosis -----------------------------------------------------------------------------------
    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """Base crop (h x w, no newline) then the unpadded, possibly shrunk tile grid with one newline column."""
        cfg = adapter.model.config
        if "image_sizes" in inputs and getattr(cfg, "vision_feature_select_strategy", "full") == "full":
            g = tile_grid(inputs["image_sizes"][0].tolist(), cfg)
            if g["h"] * g["w"] + g["rows"] * (g["cols"] + 1) == span_len:
                return {"kind": "anyres", "vit_offset": 0, **g}
        return super().span_geometry(adapter, inputs, span_len)

    # ---- tiny model ----------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """SigLIP (56 px crops, a 4x4 grid), Qwen2 with grouped-query attention (4 heads, 2 key/value heads),
        small grid pinpoints so an image is 1+2..4 crops, and the ov-hf chat template.

        The tiles cap is anyres_max_2 instead of the real 9: with 16-token crops and at most 4 tiles, the real
        cap would never shrink a tile grid, so the tiny model would not exercise that branch; with 2, 2x2-tile
        images shrink and 1x3-tile images do not.
        """
        import transformers
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

        tok = tp.chat_tokenizer(QWEN2_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", image_token="<image>")
        tok.video_token = "<video>"
        s = tp.TINY_IMAGE
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
        aspect = f"anyres_max_{TINY_MAX_TILES}"
        cfg = LlavaOnevisionConfig(
            vision_config={**tp.siglip_vision(), "vision_use_head": False},
            text_config=tp.text_config("qwen2", len(tok), tok, tie_word_embeddings=False),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=aspect, vision_feature_select_strategy="full", vision_feature_layer=-1,
            tie_word_embeddings=False)
        model = LlavaOnevisionForConditionalGeneration(cfg)
        # SigLIP's normalisation (mean = std = 0.5), as the ov-hf checkpoints' preprocessor_config.json
        ip = transformers.LlavaOnevisionImageProcessorPil(size={"height": s, "width": s},
                                                          image_grid_pinpoints=pinpoints,
                                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        proc = image_only_processor_class()(image_processor=ip, tokenizer=tok, num_image_tokens=(s // 14) ** 2,
                                            vision_feature_select_strategy="full", chat_template=ONEVISION_TEMPLATE,
                                            vision_aspect_ratio=aspect)
        tp.save(model, proc, out)


__all__ = ["LlavaOnevision", "ONEVISION_TEMPLATE", "image_only_processor_class", "max_tiles", "tile_grid"]
