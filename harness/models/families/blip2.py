"""BLIP-2 (`Blip2ForConditionalGeneration`): BLIP ViT-g, a Q-Former with 32 query tokens, OPT (or Flan-T5).

The image becomes one contiguous run of Q-Former query tokens in front of the prompt; they do not map to
image patches one to one (diagnosis pushes values through the Q-Former's cross-attention). Only decoder-only
language models (OPT) are supported by the decoding engines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.models.tiny_vocab import tiny_vocabulary
from harness.registry import FAMILIES

BLIP_ATTENTION_LAYER = -2  # DAMRO: modeling_instructblip.py self.vision_model.encoder.layers[-2]


def collate_rows(rows: list[dict], pad_id: int, qformer_pad_id: int | None) -> dict:
    """One batch from single-row encodings: LM inputs left-padded, Q-Former inputs right-padded."""
    out: dict = {}
    for key in rows[0].keys():
        vals = [r[key] for r in rows]
        if key in ("input_ids", "attention_mask") or key.startswith("qformer_"):
            left = not key.startswith("qformer_")
            fill = 0 if key.endswith("attention_mask") else (pad_id if left else (qformer_pad_id or 0))
            width = max(v.shape[1] for v in vals)
            padded = []
            for v in vals:
                pad = torch.full((1, width - v.shape[1]), fill, dtype=v.dtype)
                padded.append(torch.cat([pad, v] if left else [v, pad], dim=1))
            out[key] = torch.cat(padded)
        else:
            out[key] = torch.cat(vals)
    return out


def blip_parts(text_family: str):
    """(tokenizer, vision config, Q-Former config, image processor) of the tiny BLIP models."""
    import transformers

    if text_family == "opt":
        tok = tp.word_tokenizer(tiny_vocabulary(), ["<pad>", "</s>", "<unk>", "<image>"], "</s>", "\n", "<pad>",
                                "<unk>", "left")
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    else:
        tok = tp.llama_tokenizer()
    tok.image_token = "<image>"
    # BLIP's vision config initialises with initializer_range=1e-10, which would make a random tiny
    # model nearly blind to its image; 0.02 (the text models' default) lets the image matter.
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=tp.TINY_IMAGE, patch_size=14, initializer_range=0.02)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   encoder_hidden_size=32, cross_attention_frequency=1)
    ip = transformers.BlipImageProcessorPil(size={"height": tp.TINY_IMAGE, "width": tp.TINY_IMAGE})
    return tok, vision, qformer, ip


@FAMILIES.register("blip2")
class Blip2(ModelFamily):
    """BLIP-2 OPT-2.7B / 6.7B (Salesforce checkpoints)."""

    name = "blip2"
    model_types = ("blip-2",)
    sites = {
        "decoder_layers": "language_model.model.decoder.layers",
        "attention": "self_attn",
        "final_norm": "language_model.model.decoder.final_layer_norm",
        "lm_head": "language_model.lm_head",
        "embed_tokens": "language_model.model.decoder.embed_tokens",
        "vision_layers": "vision_model.encoder.layers",
        "vision_tower": "vision_model",
        "projector": "language_projection",
        "qformer": "qformer",
    }
    prompt_template = "Question: {question} Answer:"  # the BLIP-2 VQA prompt from its paper
    rows_separately = True
    # DAMRO has no BLIP-2 setting; InstructBLIP's (same vision encoder) is used: not from the paper.
    damro_defaults = {"alpha": 0.5, "topk": 4}

    def intervention_defaults(self, intervention: str, model: Any) -> dict:
        """DAMRO's InstructBLIP values (alpha 0.5, the POPE setting; topk 4)."""
        return dict(self.damro_defaults) if intervention == "damro" else {}

    def process(self, processor: Any, images: Sequence[Any], prompts: Sequence[str]) -> dict:
        """Rows processed alone and padded here: BLIP processors pad between the query tokens and the text,
        which would shift positions, so batched rows would differ from single rows."""
        rows = [processor(images=[im], text=[p], return_tensors="pt") for im, p in zip(images, prompts)]
        qtok = getattr(processor, "qformer_tokenizer", None)
        return collate_rows(rows, processor.tokenizer.pad_token_id, getattr(qtok, "pad_token_id", 0))

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """Q-Former query outputs through the language projection ([B, Q, D] in pooler_output)."""
        return adapter.model.get_image_features(vis["pixel_values"], return_dict=True)

    def image_features(self, encoding: Any) -> list[torch.Tensor]:
        """Per image, its [Q, D] projected query tokens."""
        return list(encoding.pooler_output)

    def qformer_features(self, adapter: Any, image_embeds: torch.Tensor, vis: dict) -> torch.Tensor:
        """Q-Former + language projection on given vision-encoder embeddings [B, T, C] -> [B, Q, D]
        (the steps of `get_image_features` after the vision encoder, so DAMRO can re-run them)."""
        m = adapter.model
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_tokens = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = m.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_mask, return_dict=True)
        query_output = out[0]
        if query_output.dtype != image_embeds.dtype:
            query_output = query_output.to(image_embeds.dtype)
        return m.language_projection(query_output)

    def language_model(self, adapter: Any) -> torch.nn.Module:
        """The decoder-only language model (the Q-Former output enters it as embeddings)."""
        return adapter.model.language_model

    def prefill(self, adapter, input_ids, attention_mask, position_ids, encoding, image_kwargs):
        """Query-token features scattered into the image tokens' embeddings, then the language model."""
        embeds = adapter.model.get_input_embeddings()(input_ids)
        if encoding is not None:
            mask = self.image_token_mask(adapter, input_ids)
            flat = torch.cat(self.image_features(encoding), dim=0).to(embeds.device, embeds.dtype)
            if int(mask.sum()) != flat.shape[0]:
                raise ValueError(f"{int(mask.sum())} image tokens in the prompt but {flat.shape[0]} image features")
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), flat)
        return self.language_model(adapter)(inputs_embeds=embeds, attention_mask=attention_mask,
                                            position_ids=position_ids, use_cache=True, logits_to_keep=1,
                                            return_dict=True)

    # ---- DAMRO -------------------------------------------------------------------------------------------
    def cls_patch_attention(self, adapter: Any, vis: dict):
        """(encoding, CLS->patch attention [B, P] of encoder layer -2's fused qkv, vision embeddings [B, T, C])."""
        from harness.models.vision_attention import blip_cls_attention, capture

        layers = adapter.site("vision_layers")
        idx_layer = BLIP_ATTENTION_LAYER % len(layers)
        path = f"{adapter.site_path('vision_layers')}.{idx_layer}.self_attn.qkv"
        with capture(adapter.model, {"qkv": path}) as st:
            enc = self.encode_images(adapter, vis)
        attn = blip_cls_attention(st["qkv"], layers[idx_layer].self_attn.num_heads)
        return enc, attn, enc.last_hidden_state  # the vision encoder output (CLS at 0)

    def topk_features(self, adapter, encoding, extras, idx, vis, reference_cls_offset):
        """The Q-Former re-run on the kept patch embeddings (same number of query tokens). The reference's
        gather runs on embeddings that still hold CLS at 0 (`reference_cls_offset`: index j picks patch j-1)."""
        gather = idx if reference_cls_offset else idx + 1
        kept = extras.gather(1, gather.unsqueeze(-1).expand(-1, -1, extras.shape[-1]))
        return list(self.qformer_features(adapter, kept, vis)), False

    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """Query tokens (bars), pushed through the Q-Former onto the vision encoder's patch grid."""
        vc = adapter.model.config.vision_config
        return {"kind": "queries", "n": span_len, "side": vc.image_size // vc.patch_size}

    def build_tiny(self, out: Path) -> None:
        """BLIP vision, Q-Former, OPT text."""
        from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

        tok, vision, qformer, ip = blip_parts("opt")
        qformer["vocab_size"] = 64
        cfg = Blip2Config(vision_config=vision, qformer_config=qformer,
                          text_config=tp.text_config("opt", len(tok), tok),
                          num_query_tokens=8, image_token_index=tok.convert_tokens_to_ids("<image>"))
        model = Blip2ForConditionalGeneration(cfg)
        proc = Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=8)
        tp.save(model, proc, out)
