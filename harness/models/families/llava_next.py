"""LLaVA-NeXT / 1.6 (`LlavaNextForConditionalGeneration`): CLIP with AnyRes tiling, Vicuna or Mistral.

One image becomes one contiguous run of tokens: the base crop (the whole image resized, h*w tokens), then the
AnyRes tiles unpadded to the image's aspect ratio with one `image_newline` token closing each row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.llava import Llava, clip_attention_paths
from harness.registry import FAMILIES

# llava-hf/llava-v1.6-vicuna-7b-hf: the vicuna system prompt before the USER/ASSISTANT turns.
LLAVA_NEXT_VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ \"A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. \" }}{% endif %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@FAMILIES.register("llava_next")
class LlavaNext(Llava):
    """LLaVA-NeXT (1.6) Vicuna / Mistral (llava-hf checkpoints)."""

    name = "llava_next"
    model_types = ("llava_next",)
    vision_keys = ("pixel_values", "image_sizes")

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """AnyRes features packed as the model does (base crop, unpadded tiles, newline tokens), one per image."""
        cfg = adapter.model.config
        return adapter.model.model.get_image_features(
            pixel_values=vis["pixel_values"], image_sizes=vis["image_sizes"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)

    def cls_patch_attention(self, adapter: Any, vis: dict):
        """DAMRO ranks the base crop's patches: (encoding, CLS attention of each image's first crop, base-crop
        projected features)."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        from harness.models.vision_attention import capture, clip_cls_attention

        m = adapter.model
        paths = {**clip_attention_paths(adapter), "proj": adapter.site_path("projector")}
        with capture(m, paths) as st:
            enc = self.encode_images(adapter, vis)
        crops = [image_size_to_num_patches(image_size=s, grid_pinpoints=m.config.image_grid_pinpoints,
                                           patch_size=m.config.vision_config.image_size) for s in vis["image_sizes"]]
        base = torch.tensor([0] + crops[:-1], device=st["q"].device).cumsum(0)  # first crop of each image
        return enc, clip_cls_attention(st["q"][base], st["k"][base]), st["proj"][base]

    def topk_features(self, adapter, encoding, extras, idx, vis, reference_cls_offset):
        """DAMRO's `pack_image_features_damro`: the base crop's top-k patches plus one image_newline."""
        newline = adapter.model.model.image_newline
        return [torch.cat([b[i], newline[None].to(b.dtype)]) for b, i in zip(extras, idx)], True

    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """Base crop (h x w) then the unpadded AnyRes tile grid with one newline column."""
        cfg = adapter.model.config
        vc = cfg.vision_config
        h = w = vc.image_size // vc.patch_size
        strategy = getattr(cfg, "vision_feature_select_strategy", "default")
        if strategy == "default" and span_len > h * w and "image_sizes" in inputs:
            from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

            size = inputs["image_sizes"][0].tolist()
            nph, npw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, vc.image_size)
            idx = torch.arange(nph * h * npw * w).view(1, nph * h, npw * w)
            un = unpad_image(idx, size)[0]  # [R, C] padded-grid flat index of each kept cell
            rows, cols = un.shape
            if h * w + rows * (cols + 1) == span_len:
                return {"kind": "anyres", "h": h, "w": w, "nph": nph, "npw": npw, "rows": rows, "cols": cols,
                        "unpad": un}
        if span_len == h * w:
            return {"kind": "grid", "side": h, "skip": 0, "vit_offset": 1}
        return {"kind": "tokens", "n": span_len}

    def build_tiny(self, out: Path) -> None:
        """LLaVA-NeXT (vicuna) with AnyRes tiling over small grid pinpoints."""
        import transformers
        from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

        tok = tp.llama_tokenizer()
        image_id = tok.convert_tokens_to_ids("<image>")
        s = tp.TINY_IMAGE
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
        cfg = LlavaNextConfig(vision_config=tp.clip_vision(), text_config=tp.text_config("llama", len(tok), tok),
                              image_token_index=image_id, image_grid_pinpoints=pinpoints, image_seq_length=16)
        model = LlavaNextForConditionalGeneration(cfg)
        ip = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints)
        proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                  vision_feature_select_strategy="default",
                                  chat_template=LLAVA_NEXT_VICUNA_TEMPLATE, num_additional_image_tokens=1)
        tp.save(model, proc, out)
