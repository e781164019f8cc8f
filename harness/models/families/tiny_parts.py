"""Shared pieces of the tiny offline models: word-level tokenizers, small text / vision configs, saving.

Tiny models are real transformers classes with small random weights, built from config with a fixed seed
(`harness.models.tiny.ensure_tiny_model`), saved once and loaded back through `from_pretrained` like real
checkpoints. Each family's `build_tiny` uses these pieces.
"""
from __future__ import annotations

from pathlib import Path

from harness.models.tiny_vocab import tiny_vocabulary

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TINY_IMAGE = 56  # pixels; patch 14 -> a 4x4 grid


def word_tokenizer(words: list[str], specials: list[str], bos: str | None, eos: str | None,
                   pad: str, unk: str, padding_side: str):
    """A fast word-level tokenizer over `specials + words` (lower-cased, whitespace/punctuation split)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    if bos:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        padding_side=padding_side, model_max_length=2048,
    )


def llama_tokenizer():
    """The tiny Llama-style tokenizer (<s> prefix, </s> end, <pad>, an <image> special token)."""
    tok = word_tokenizer(tiny_vocabulary(), SPECIALS, "<s>", "</s>", "<pad>", "<unk>", "left")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def chat_tokenizer(specials: list[str], eos: str, pad: str, image_token: str, extra: list[str] = ()):
    """A tiny tokenizer without BOS for chat-template models (Qwen, InternVL, Idefics): `specials` first."""
    tok = word_tokenizer(tiny_vocabulary(), ["<unk>"] + list(specials), None, eos, pad, "<unk>", "left")
    tok.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in (eos, pad)]
                            + list(extra)})
    tok.image_token = image_token
    return tok


def text_config(kind: str, vocab_size: int, tok, **over) -> dict:
    """A 4-layer, 4-head, hidden-64 text config of `kind` (llama, mistral, opt, qwen2, ...) for a tokenizer."""
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "opt":
        cfg = dict(model_type="opt", num_hidden_layers=4, ffn_dim=128, word_embed_proj_dim=64,
                   max_position_embeddings=512, **{k: v for k, v in common.items() if k != "intermediate_size"})
    elif kind == "mistral":
        cfg = dict(model_type="mistral", num_hidden_layers=4, num_key_value_heads=2,
                   max_position_embeddings=1024, **common)
    elif kind == "llama":
        cfg = dict(model_type="llama", num_hidden_layers=4, num_key_value_heads=4,
                   max_position_embeddings=1024, **common)
    else:  # grouped-query attention (2 key/value heads for 4 query heads), as the real Qwen / Llama-3 models
        cfg = dict(model_type=kind, num_hidden_layers=4, num_key_value_heads=2, max_position_embeddings=1024,
                   **common)
    cfg.update(over)
    return cfg


def clip_vision() -> dict:
    """A 3-layer CLIP vision config over 56x56 images (patch 14: a 4x4 grid plus CLS)."""
    return dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=2, image_size=TINY_IMAGE, patch_size=14, projection_dim=32)


def siglip_vision(image_size: int = TINY_IMAGE, patch_size: int = 14) -> dict:
    """A 3-layer SigLIP vision config (no CLS token)."""
    return dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=2, image_size=image_size, patch_size=patch_size)


def clip_image_processor(pil_cls: str, **extra):
    """A PIL image processor of class `pil_cls` resizing and center-cropping to the tiny image size."""
    import transformers

    cls = getattr(transformers, pil_cls)
    return cls(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}, **extra)


def save(model, proc, out: Path) -> None:
    """Save a tiny model and its processor to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
