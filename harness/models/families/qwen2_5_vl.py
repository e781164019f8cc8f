"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL's layout with a window-attention ViT (RMSNorm,
SwiGLU, full attention only in `fullatt_block_indexes`) and an MLP merger; same prompt, tokens and M-RoPE
(the shared machinery is in `qwen_common`)."""
from __future__ import annotations

from pathlib import Path

from harness.models.families import tiny_parts as tp
from harness.models.families.qwen2_vl import CLIP_MEAN, CLIP_STD
from harness.models.families.qwen_common import (QWEN2_VL_TEMPLATE, QwenVLFamily, image_only_processor_class,
                                                 tiny_image_processor, tiny_text_config, tiny_tokenizer, token_ids)
from harness.registry import FAMILIES


@FAMILIES.register("qwen2_5_vl")
class Qwen2_5VL(QwenVLFamily):
    """Qwen2.5-VL 3B / 7B / 32B / 72B Instruct."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    processor_class = "Qwen2_5_VLProcessor"

    def build_tiny(self, out: Path) -> None:
        """A 3-block window-attention ViT (windows of 2x2 merged tokens, block 2 full attention), Qwen2 with
        grouped-query attention, the checkpoint's chat template."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        tok = tiny_tokenizer()
        cfg = Qwen2_5_VLConfig(
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[2]),
            text_config=tiny_text_config(tok), tie_word_embeddings=False, **token_ids(tok))
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        proc = image_only_processor_class(self.processor_class)(
            image_processor=tiny_image_processor(14, CLIP_MEAN, CLIP_STD), tokenizer=tok,
            chat_template=QWEN2_VL_TEMPLATE)
        tp.save(model, proc, out)


__all__ = ["Qwen2_5VL"]
