"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): a SigLIP-2-style ViT (patch 16, learned position embeddings
interpolated to the grid), DeepStack, Qwen3 with interleaved M-RoPE.

DeepStack: the merged features of some ViT blocks (`deepstack_visual_indexes`) are added to the hidden states
of the image tokens after the first decoder layers. The image encoding therefore carries, next to the
per-image features, per-layer per-image deepstack features; concatenating and splitting encodings (the views
of the contrastive engine) keeps both aligned, and replacing the features alone (a DAMRO-style top-k view)
is refused, since the deepstack features would no longer match the image tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.qwen_common import (QwenVLFamily, image_only_processor_class, tiny_image_processor,
                                                 tiny_text_config, tiny_tokenizer, token_ids)
from harness.registry import FAMILIES

# The prompt Qwen/Qwen3-VL-8B-Instruct's chat_template.json renders for system / user / assistant messages of
# images and text: ChatML with no default system prompt, images as <|vision_start|><|image_pad|><|vision_end|>
# in content order. (The checkpoint's template also renders tools, tool calls and tool responses, and
# "Picture n: " labels under add_vision_id; the tiny model keeps only the branches the harness uses.)
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # Qwen3-VL's preprocessor_config.json


@FAMILIES.register("qwen3_vl")
class Qwen3VL(QwenVLFamily):
    """Qwen3-VL 2B / 4B / 8B / 32B Instruct (dense)."""

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    processor_class = "Qwen3VLProcessor"

    # ---- image encoding: features and deepstack features stay aligned ------------------------------------
    def with_features(self, encoding: Any, features: Sequence[torch.Tensor]) -> Any:
        """Refused unless the features have the encoding's shapes: the deepstack features could not follow."""
        old = list(encoding.pooler_output)
        if [tuple(f.shape) for f in features] != [tuple(f.shape) for f in old]:
            raise ValueError("Qwen3-VL's image encoding carries DeepStack features for every image token; a view "
                             "that changes the image features' number or length (e.g. a top-k subset) cannot "
                             "keep them aligned")
        return self._encoding(list(features), encoding.deepstack_features)

    def concat_encodings(self, encodings: Sequence[Any]) -> Any:
        """Several encodings as one: per-image features and per-layer deepstack features, images in order."""
        layers = len(encodings[0].deepstack_features)
        return self._encoding([f for e in encodings for f in e.pooler_output],
                              [tuple(f for e in encodings for f in e.deepstack_features[l]) for l in range(layers)])

    def split_encoding(self, encoding: Any, start: int, end: int) -> Any:
        """The encoding of images start..end-1 (features and deepstack features)."""
        return self._encoding(list(encoding.pooler_output)[start:end],
                              [tuple(d[start:end]) for d in encoding.deepstack_features])

    @staticmethod
    def _encoding(features: list, deepstack: list) -> Any:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        return BaseModelOutputWithDeepstackFeatures(pooler_output=tuple(features), deepstack_features=list(deepstack))

    # ---- tiny model ----------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """A 3-block ViT (patch 16, an 8x8 position-embedding grid, deepstack from blocks 0 and 1 into decoder
        layers 0 and 1), Qwen3 with grouped-query attention and interleaved M-RoPE, the Instruct prompt."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        tok = tiny_tokenizer()
        text = tiny_text_config(tok, model_type="qwen3_vl_text", head_dim=16,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        cfg = Qwen3VLConfig(
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                               num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
            text_config=text, tie_word_embeddings=False, **token_ids(tok))
        model = Qwen3VLForConditionalGeneration(cfg)
        proc = image_only_processor_class(self.processor_class)(
            image_processor=tiny_image_processor(16, SIGLIP_MEAN, SIGLIP_STD), tokenizer=tok,
            chat_template=QWEN3_VL_TEMPLATE)
        tp.save(model, proc, out)


__all__ = ["QWEN3_VL_TEMPLATE", "Qwen3VL"]
