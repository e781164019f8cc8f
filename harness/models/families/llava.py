"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP ViT-L/14-336, a two-layer MLP projector, Vicuna / Llama.

One image becomes one contiguous run of 576 `<image>` tokens (the 24x24 patch grid, CLS dropped by the
`default` feature strategy) at the position of the `<image>` placeholder in the chat template.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.registry import FAMILIES

# The official chat template of llava-hf/llava-1.5-*-hf, which the tiny model stands for.
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def clip_attention_paths(adapter: Any) -> dict:
    """q/k projection paths of the CLIP block whose output the projector reads (DAMRO's CLS-attention hooks)."""
    from harness.models.vision_attention import encoder_layer_index

    cfg = adapter.model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise NotImplementedError("damro needs a single vision_feature_layer (this model concatenates several)")
    if cfg.vision_feature_select_strategy != "default":
        raise NotImplementedError("damro supports vision_feature_select_strategy='default' (CLS dropped) only")
    n = len(adapter.site("vision_layers"))
    layer = f"{adapter.site_path('vision_layers')}.{encoder_layer_index(cfg.vision_feature_layer, n)}.self_attn"
    return {"q": f"{layer}.q_proj", "k": f"{layer}.k_proj"}


def grid_side(n: int) -> int | None:
    """The side of a square grid of n cells, else None."""
    side = math.isqrt(n)
    return side if side * side == n else None


@FAMILIES.register("llava")
class Llava(ModelFamily):
    """LLaVA-1.5 7B / 13B (llava-hf checkpoints)."""

    name = "llava"
    model_types = ("llava",)
    sites = {
        "decoder_layers": "model.language_model.layers",  # residual stream = block output
        "attention": "self_attn",
        "final_norm": "model.language_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.language_model.embed_tokens",
        "vision_layers": "model.vision_tower.encoder.layers",  # CLIP encoder blocks
        "vision_tower": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "qformer": None,
    }
    # DAMRO scrpits/run_generation.sh and README: alpha 2, topk 10 for LLaVA-1.5 and LLaVA-NeXT.
    damro_defaults = {"alpha": 2.0, "topk": 10}

    def intervention_defaults(self, intervention: str, model: Any) -> dict:
        """DAMRO's paper values for LLaVA."""
        return dict(self.damro_defaults) if intervention == "damro" else {}

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """CLIP features of the configured layer and strategy, through the projector (one [576, D] per image)."""
        cfg = adapter.model.config
        return adapter.model.model.get_image_features(
            pixel_values=vis["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)

    # ---- DAMRO: CLS attention of the CLIP layer the projector reads ---------------------------------------
    def cls_patch_attention(self, adapter: Any, vis: dict):
        """(encoding, CLS->patch attention [B, P], None): one softmax over the full q/k projection."""
        from harness.models.vision_attention import capture, clip_cls_attention

        with capture(adapter.model, clip_attention_paths(adapter)) as st:
            enc = self.encode_images(adapter, vis)
        return enc, clip_cls_attention(st["q"], st["k"]), None

    def topk_features(self, adapter, encoding, extras, idx, vis, reference_cls_offset):
        """The kept patch features in descending-attention order; the image span shrinks to k tokens."""
        return [f[i] for f, i in zip(self.image_features(encoding), idx)], True

    # ---- diagnosis -------------------------------------------------------------------------------------
    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """The encoder's square patch grid (a leading CLS token is skipped under the `full` strategy)."""
        strategy = getattr(adapter.model.config, "vision_feature_select_strategy", "default")
        off = 1 if strategy == "full" else 0
        side = grid_side(span_len - off)
        if side:
            return {"kind": "grid", "side": side, "skip": off, "vit_offset": 1 - off}
        return super().span_geometry(adapter, inputs, span_len)

    # ---- tiny model --------------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """CLIP vision, MLP projector, Llama text, a word tokenizer and LLaVA-1.5's chat template."""
        from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

        tok = tp.llama_tokenizer()
        image_id = tok.convert_tokens_to_ids("<image>")
        cfg = LlavaConfig(vision_config=tp.clip_vision(), text_config=tp.text_config("llama", len(tok), tok),
                          image_token_index=image_id, image_seq_length=16, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(cfg)
        proc = LlavaProcessor(image_processor=tp.clip_image_processor("CLIPImageProcessorPil"), tokenizer=tok,
                              patch_size=14, vision_feature_select_strategy="default",
                              chat_template=LLAVA15_TEMPLATE, num_additional_image_tokens=1)
        tp.save(model, proc, out)


__all__ = ["LLAVA15_TEMPLATE", "Llava", "clip_attention_paths", "grid_side"]
