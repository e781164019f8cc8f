"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): a ViT at dynamic resolution, 2x2 patch merger, Qwen2 with M-RoPE.

One image becomes one run of `<|image_pad|>` tokens (grid h*w / 4 of them) between `<|vision_start|>` and
`<|vision_end|>`; the shared Qwen-VL machinery (pixels split by grid, M-RoPE positions, image-only processor,
the merged-token grid for diagnosis) is in `qwen_common`.
"""
from __future__ import annotations

from pathlib import Path

from harness.models.families import tiny_parts as tp
from harness.models.families.qwen_common import (QWEN2_VL_TEMPLATE, QwenVLFamily, image_only_processor_class,
                                                 tiny_image_processor, tiny_text_config, tiny_tokenizer, token_ids)
from harness.registry import FAMILIES

# CLIP's normalisation, as the Qwen2-VL / Qwen2.5-VL checkpoints' preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@FAMILIES.register("qwen2_vl")
class Qwen2VL(QwenVLFamily):
    """Qwen2-VL 2B / 7B / 72B Instruct."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    processor_class = "Qwen2VLProcessor"

    def build_tiny(self, out: Path) -> None:
        """A 3-block ViT (patch 14, embed 32), Qwen2 with grouped-query attention, the checkpoint's chat template."""
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        tok = tiny_tokenizer()
        cfg = Qwen2VLConfig(
            vision_config=dict(depth=3, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            text_config=tiny_text_config(tok), tie_word_embeddings=False, **token_ids(tok))
        model = Qwen2VLForConditionalGeneration(cfg)
        proc = image_only_processor_class(self.processor_class)(
            image_processor=tiny_image_processor(14, CLIP_MEAN, CLIP_STD), tokenizer=tok,
            chat_template=QWEN2_VL_TEMPLATE)
        tp.save(model, proc, out)


__all__ = ["CLIP_MEAN", "CLIP_STD", "Qwen2VL"]
