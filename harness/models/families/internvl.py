"""InternVL 3 / 3.5 (`InternVLForConditionalGeneration`, the transformers-native `-hf` checkpoints): InternViT
(with a CLS token), pixel shuffle (downsample 0.5: 2x2 patches -> one token), an MLP projector, Qwen2 / Qwen3.

An image is cut into dynamic tiles (`crop_to_patches`: the tiled canvas closest to its aspect ratio, at most
`max_patches` tiles, plus a thumbnail of the whole image LAST when there is more than one tile). Every tile
gives `image_seq_length` tokens; an image is one contiguous run of `<IMG_CONTEXT>` tokens between `<img>` and
`</img>` (the markers hold no features). `pixel_values` is [sum of tiles, 3, H, W]: the processor drops its
per-image tile counts (`num_patches`), so `vision_inputs` recovers them from the prompt ids (tokens per image
/ tokens per tile) and pixel-space views split the tile tensor by them.

The model's `pooler_output` is one [tokens, D] entry per TILE; the encoding here (`TiledEncoding`) keeps the
features as one [1, total, D] tensor (what the model's `masked_scatter` takes) and the per-image lengths.

DAMRO: InternViT has a CLS token, but each language-model token mixes a 2x2 group of patches (pixel shuffle).
The recipe here (not from the paper, which covers CLIP and BLIP encoders): the CLS row of the attention in the
vision layer the projector reads, per head `softmax(q @ k^T * d**-0.5)` on the normalised q / k the encoder
itself uses, mean over heads (the BLIP recipe: InternViT is a multi-head ViT); a token's score is the SUM of
the CLS attention over the 2x2 patches pixel shuffle puts in it (the mass the token carries); ranked on the
tile that shows the whole image (the thumbnail, or the only tile), as DAMRO ranks LLaVA-NeXT's base crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.registry import FAMILIES

# The chat template of the OpenGVLab/InternVL3-*-hf checkpoints, as transformers'
# models/internvl/convert_internvl_weights_to_hf.py writes it: ChatML, `<IMG_CONTEXT>\n` per image.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values()]
TINY_MAX_TILES = 4


@dataclass
class TiledEncoding(BaseModelOutputWithPooling):
    """Image features of a batch as the model merges them (`pooler_output` [1, total, D]) and per image its
    number of feature tokens (`lengths`, in image order)."""

    lengths: tuple | None = None


@lru_cache(maxsize=None)
def image_only_processor_class():
    """`InternVLProcessor` without its video processor (which needs torchvision): same images, same text."""
    from transformers import InternVLProcessor

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        """InternVL's processor for images and text only (no `video_processor` attribute)."""

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                     **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template, **kwargs)

    return ImageOnlyInternVLProcessor


def shuffle_groups(model: torch.nn.Module, side: int) -> torch.Tensor:
    """[tokens, r*r] patch indices (row-major over a side x side grid) that the model's own pixel shuffle puts
    into each output token (r = 1 / downsample_ratio)."""
    idx = torch.arange(side * side, dtype=torch.float32).view(1, side, side, 1)
    out = model.model.pixel_shuffle(idx, scale_factor=model.config.downsample_ratio)
    return out.reshape(-1, out.shape[-1]).long()


def tokens_per_tile(cfg: Any) -> int:
    """Language-model tokens per tile of an InternVL config: (image side / patch)^2 * downsample_ratio^2."""
    vc = cfg.vision_config
    size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    return int(round((size // patch) ** 2 * cfg.downsample_ratio ** 2))


@FAMILIES.register("internvl")
class InternVL(ModelFamily):
    """InternVL3 / InternVL3.5 (OpenGVLab `-hf` checkpoints: InternViT-300M + Qwen2.5 / Qwen3)."""

    name = "internvl"
    model_types = ("internvl",)
    sites = {
        "decoder_layers": "model.language_model.layers",
        "attention": "self_attn",
        "final_norm": "model.language_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.language_model.embed_tokens",
        "vision_layers": "model.vision_tower.encoder.layer",  # InternViT blocks
        "vision_tower": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "qformer": None,
    }
    vision_keys = ("pixel_values",)
    vision_attention = "attention"  # InternViT blocks name their attention `attention`
    _image_ids: set = set()  # the <IMG_CONTEXT> ids of the loaded checkpoints (see image_token_id)

    def intervention_defaults(self, intervention: str, model: Any) -> dict:
        """DAMRO (not in its paper): LLaVA's alpha 2 and topk 10, topk capped at the tokens of one tile."""
        if intervention != "damro":
            return {}
        return {"alpha": 2.0, "topk": min(10, tokens_per_tile(model.config))}

    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """The image-only processor (GotOcr2 PIL image processor, tokenizer, chat template) of a checkpoint."""
        return image_only_processor_class().from_pretrained(path, backend="pil")

    # ---- inputs and image encoding -------------------------------------------------------------------
    def tokens_per_tile(self, adapter: Any) -> int:
        """Language-model tokens per tile (see `tokens_per_tile` of a config)."""
        return tokens_per_tile(adapter.model.config)

    def vision_inputs(self, inputs: dict) -> dict:
        """The tile tensor and, per image (one per row), its tile count read off the prompt ids."""
        if "pixel_values" not in inputs:
            return {}
        vis = {"pixel_values": inputs["pixel_values"]}
        ids = inputs["input_ids"]
        n_tokens = torch.isin(ids, torch.tensor(sorted(self._image_ids), device=ids.device)).sum(-1)
        total = int(vis["pixel_values"].shape[0])
        per_tile = int(n_tokens.sum()) // total if total else 0
        if not per_tile or int(n_tokens.sum()) != per_tile * total or bool((n_tokens % per_tile).any()):
            raise ValueError(f"internvl: {int(n_tokens.sum())} image tokens do not split into {total} tiles")
        vis["num_patches"] = (n_tokens // per_tile).to(torch.long)
        return vis

    def image_token_id(self, model: torch.nn.Module) -> int:
        """`<IMG_CONTEXT>`'s id, also remembered for `vision_inputs` (which sees only the batch inputs; every
        adapter of this family registers its id here when it is built)."""
        token = int(model.config.image_token_id)
        self._image_ids.add(token)
        return token

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """The model's tile features (configured layer and strategy), joined per image."""
        cfg = adapter.model.config
        out = adapter.model.model.get_image_features(
            pixel_values=vis["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)
        tiles = out.pooler_output  # [sum tiles, tokens, D]
        per_image = tiles.split([int(n) for n in vis["num_patches"]])
        return self.with_features(None, [t.reshape(-1, t.shape[-1]) for t in per_image])

    def image_features(self, encoding: Any) -> list[torch.Tensor]:
        """Per image, its [tiles * tokens, D] features."""
        return list(encoding.pooler_output[0].split(list(encoding.lengths)))

    def with_features(self, encoding: Any, features: Sequence[torch.Tensor]) -> Any:
        """A `TiledEncoding` of per-image features."""
        feats = list(features)
        return TiledEncoding(pooler_output=torch.cat(feats)[None], lengths=tuple(int(f.shape[0]) for f in feats))

    def split_pixels(self, vis: dict) -> list[torch.Tensor]:
        """Per image, its tiles [n_i, 3, H, W] (thumbnail last)."""
        return list(vis["pixel_values"].split([int(n) for n in vis["num_patches"]]))

    def join_pixels(self, vis: dict, pieces: Sequence[torch.Tensor]) -> dict:
        """`vis` with the tile tensor rebuilt from per-image tiles."""
        return {**vis, "pixel_values": torch.cat(list(pieces)),
                "num_patches": torch.tensor([p.shape[0] for p in pieces], device=vis["num_patches"].device)}

    # ---- DAMRO -----------------------------------------------------------------------------------------
    def cls_patch_attention(self, adapter: Any, vis: dict):
        """(encoding, per image the CLS attention summed over each token's 2x2 patch group [N, tokens], None),
        on each image's whole-image tile (its last tile)."""
        from harness.models.vision_attention import capture, encoder_layer_index

        cfg = adapter.model.config
        if cfg.vision_feature_select_strategy != "default" or not isinstance(cfg.vision_feature_layer, int):
            raise NotImplementedError("damro on internvl needs one vision_feature_layer and the 'default' "
                                      "strategy (CLS dropped)")
        n = len(adapter.site("vision_layers"))
        layer = f"{adapter.site_path('vision_layers')}.{encoder_layer_index(cfg.vision_feature_layer, n)}.attention"
        with capture(adapter.model, {"q": f"{layer}.q_norm", "k": f"{layer}.k_norm"}) as st:
            enc = self.encode_images(adapter, vis)
        last = torch.cumsum(vis["num_patches"], 0) - 1
        q, k = st["q"][last].float(), st["k"][last].float()
        heads = cfg.vision_config.num_attention_heads
        b, t, c = q.shape
        q = q.view(b, t, heads, c // heads).transpose(1, 2)[:, :, :1]
        k = k.view(b, t, heads, c // heads).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1).mean(1)[:, 0, 1:]
        groups = shuffle_groups(adapter.model, int(round((t - 1) ** 0.5))).to(attn.device)
        return enc, attn[:, groups].sum(-1), None

    def topk_features(self, adapter, encoding, extras, idx, vis, reference_cls_offset):
        """The kept tokens of each image's whole-image tile, in descending-attention order (k image tokens)."""
        per_tile = self.tokens_per_tile(adapter)
        return [f[-per_tile:][i] for f, i in zip(self.image_features(encoding), idx)], True

    # ---- diagnosis -----------------------------------------------------------------------------------
    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """A one-tile image: its token grid, each token a 2x2 patch block after the CLS (pixel shuffle keeps the
        blocks row-major, as `shuffle_groups` shows), relevancy spread evenly over a token's patches. Several
        tiles: a bar per token (the diagnosis draws over, and pushes relevancy through, the first crop only,
        while InternVL's whole-image tile is the last)."""
        cfg = adapter.model.config
        per_tile = tokens_per_tile(cfg)
        side = int(round(per_tile ** 0.5))
        patches = int(round(side / cfg.downsample_ratio))
        if span_len == per_tile and side * side == per_tile:
            return {"kind": "grid", "side": side, "skip": 0, "vit_offset": 1, "pool": patches // side}
        return super().span_geometry(adapter, inputs, span_len)

    # ---- tiny model ----------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """InternViT (56 px tiles, a 4x4 grid plus CLS, 2x2 tokens after pixel shuffle), Qwen2 with grouped-query
        attention, at most 4 tiles (+ thumbnail) per image, the -hf chat template."""
        import transformers
        from transformers import InternVLConfig, InternVLForConditionalGeneration

        tok = tp.chat_tokenizer(QWEN2_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", image_token="<IMG_CONTEXT>")
        tok._set_model_specific_special_tokens(IMAGE_TOKENS)
        s = tp.TINY_IMAGE
        vision = dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, image_size=s, patch_size=14, use_mean_pooling=True)
        cfg = InternVLConfig(vision_config=vision,
                             text_config=tp.text_config("qwen2", len(tok), tok, tie_word_embeddings=False),
                             image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
                             downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
                             tie_word_embeddings=False)
        model = InternVLForConditionalGeneration(cfg)
        # InternViT's ImageNet normalisation, as the -hf checkpoints' preprocessor_config.json
        ip = transformers.GotOcr2ImageProcessorPil(size={"height": s, "width": s}, crop_to_patches=True,
                                                   min_patches=1, max_patches=TINY_MAX_TILES,
                                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        proc = image_only_processor_class()(image_processor=ip, tokenizer=tok, image_seq_length=4,
                                            chat_template=INTERNVL_TEMPLATE)
        tp.save(model, proc, out)


__all__ = ["INTERNVL_TEMPLATE", "InternVL", "TiledEncoding", "image_only_processor_class", "shuffle_groups"]
