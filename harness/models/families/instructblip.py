"""InstructBLIP (`InstructBlipForConditionalGeneration`): BLIP-2 whose Q-Former also reads the instruction.

Like BLIP-2, the image becomes a run of query tokens in front of the prompt; the Q-Former takes its own
(BERT) tokenisation of the instruction, right-padded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.blip2 import Blip2, blip_parts
from harness.models.tiny_vocab import tiny_vocabulary
from harness.registry import FAMILIES


@FAMILIES.register("instructblip")
class InstructBlip(Blip2):
    """InstructBLIP Vicuna-7B / 13B (Salesforce checkpoints)."""

    name = "instructblip"
    model_types = ("instructblip",)
    sites = {
        "decoder_layers": "language_model.model.layers",
        "attention": "self_attn",
        "final_norm": "language_model.model.norm",
        "lm_head": "language_model.lm_head",
        "embed_tokens": "language_model.model.embed_tokens",
        "vision_layers": "vision_model.encoder.layers",
        "vision_tower": "vision_model",
        "projector": "language_projection",
        "qformer": "qformer",
    }
    prompt_template = "{question}"  # InstructBLIP has no chat template: the instruction is the prompt
    vision_keys = ("pixel_values", "qformer_input_ids", "qformer_attention_mask")
    # DAMRO scrpits/run_generation.sh: alpha 0.5 (POPE; 1.5 for CHAIR, see the experiment presets), topk 4.
    damro_defaults = {"alpha": 0.5, "topk": 4}

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """Instruction-aware Q-Former outputs through the language projection."""
        return adapter.model.get_image_features(vis["pixel_values"], qformer_input_ids=vis["qformer_input_ids"],
                                                qformer_attention_mask=vis.get("qformer_attention_mask"),
                                                return_dict=True)

    def qformer_features(self, adapter: Any, image_embeds: torch.Tensor, vis: dict) -> torch.Tensor:
        """Q-Former (with the instruction) + language projection on given vision embeddings [B, T, C]."""
        m = adapter.model
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_tokens = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        qids = vis["qformer_input_ids"]
        qmask = vis.get("qformer_attention_mask")
        if qmask is None:
            qmask = torch.ones_like(qids)
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=image_embeds.device)
        qmask = torch.cat([query_mask, qmask.to(query_mask.device)], dim=1)
        out = m.qformer(input_ids=qids, attention_mask=qmask, query_embeds=query_tokens,
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=True)
        return m.language_projection(out[0][:, : query_tokens.shape[1], :])

    def build_tiny(self, out: Path) -> None:
        """BLIP vision, instruction-aware Q-Former with a BERT-style word tokenizer, Llama text."""
        from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

        tok, vision, qformer, ip = blip_parts("llama")
        qtok = tp.word_tokenizer(tiny_vocabulary(), ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS]", "[SEP]",
                                 "[PAD]", "[UNK]", "right")
        qformer["vocab_size"] = len(qtok)
        qformer["pad_token_id"] = qtok.pad_token_id
        cfg = InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                                 text_config=tp.text_config("llama", len(tok), tok), num_query_tokens=8,
                                 image_token_index=tok.convert_tokens_to_ids("<image>"))
        model = InstructBlipForConditionalGeneration(cfg)
        proc = InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=8)
        tp.save(model, proc, out)
