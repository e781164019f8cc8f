"""Tiny offline variants of each supported architecture: real transformers classes, small random weights.

Each tiny model is built from config with a fixed seed, saved once to a cache folder and then
loaded back through the same `from_pretrained` path that real checkpoints use.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from harness.models.tiny_vocab import tiny_vocabulary

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
BUILD_VERSION = 3  # bump when a builder changes, so cached tiny models are rebuilt

# The official chat templates of the real checkpoints these tiny models stand for.
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# llava-hf/llava-v1.6-vicuna-7b-hf uses the vicuna system prompt before the same USER/ASSISTANT turns.
LLAVA_NEXT_VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ \"A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. \" }}{% endif %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

TINY_IMAGE = 56  # pixels; patch 14 -> a 4x4 grid


def _word_tokenizer(words: list[str], specials: list[str], bos: str | None, eos: str | None,
                    pad: str, unk: str, padding_side: str):
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


def _llama_tokenizer():
    tok = _word_tokenizer(tiny_vocabulary(), SPECIALS, "<s>", "</s>", "<pad>", "<unk>", "left")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def _text_config(family: str, vocab_size: int, tok) -> dict:
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if family == "opt":
        return dict(model_type="opt", num_hidden_layers=4, ffn_dim=128, word_embed_proj_dim=64,
                    max_position_embeddings=512, **{k: v for k, v in common.items() if k != "intermediate_size"})
    if family == "mistral":
        return dict(model_type="mistral", num_hidden_layers=4, num_key_value_heads=2,
                    max_position_embeddings=1024, **common)
    return dict(model_type="llama", num_hidden_layers=4, num_key_value_heads=4,
                max_position_embeddings=1024, **common)


def _clip_vision() -> dict:
    return dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=2, image_size=TINY_IMAGE, patch_size=14, projection_dim=32)


def _clip_image_processor(pil_cls: str, **extra):
    import transformers

    cls = getattr(transformers, pil_cls)
    return cls(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}, **extra)


def build_tiny_llava(out: Path) -> None:
    """A LLaVA-1.5-architecture model (CLIP vision, MLP projector, Llama text) with a word tokenizer."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    cfg = LlavaConfig(vision_config=_clip_vision(), text_config=_text_config("llama", len(tok), tok),
                      image_token_index=image_id, image_seq_length=16, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg)
    proc = LlavaProcessor(image_processor=_clip_image_processor("CLIPImageProcessorPil"), tokenizer=tok,
                          patch_size=14, vision_feature_select_strategy="default", chat_template=LLAVA15_TEMPLATE,
                          num_additional_image_tokens=1)
    _save(model, proc, out)


def build_tiny_llava_next(out: Path) -> None:
    """A LLaVA-NeXT (vicuna) model with AnyRes tiling over small grid pinpoints."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    import transformers

    tok = _llama_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    pinpoints = [[TINY_IMAGE, TINY_IMAGE], [TINY_IMAGE, 2 * TINY_IMAGE], [2 * TINY_IMAGE, TINY_IMAGE],
                 [2 * TINY_IMAGE, 2 * TINY_IMAGE]]
    cfg = LlavaNextConfig(vision_config=_clip_vision(), text_config=_text_config("llama", len(tok), tok),
                          image_token_index=image_id, image_grid_pinpoints=pinpoints, image_seq_length=16)
    model = LlavaNextForConditionalGeneration(cfg)
    ip = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE},
        image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", chat_template=LLAVA_NEXT_VICUNA_TEMPLATE,
                              num_additional_image_tokens=1)
    _save(model, proc, out)


def _blip_parts(text_family: str):
    import transformers

    if text_family == "opt":
        tok = _word_tokenizer(tiny_vocabulary(), ["<pad>", "</s>", "<unk>", "<image>"], "</s>", "\n", "<pad>",
                              "<unk>", "left")
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    else:
        tok = _llama_tokenizer()
    tok.image_token = "<image>"
    # BLIP's vision config initialises with initializer_range=1e-10, which would make a random tiny
    # model nearly blind to its image; 0.02 (the text models' default) lets the image matter.
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=TINY_IMAGE, patch_size=14, initializer_range=0.02)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   encoder_hidden_size=32, cross_attention_frequency=1)
    ip = transformers.BlipImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return tok, vision, qformer, ip


def build_tiny_instructblip(out: Path) -> None:
    """An InstructBLIP (Vicuna) model: BLIP vision, instruction-aware Q-Former, Llama text."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

    tok, vision, qformer, ip = _blip_parts("llama")
    qtok = _word_tokenizer(tiny_vocabulary(), ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS]", "[SEP]", "[PAD]",
                           "[UNK]", "right")
    qformer["vocab_size"] = len(qtok)
    qformer["pad_token_id"] = qtok.pad_token_id
    cfg = InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                             text_config=_text_config("llama", len(tok), tok), num_query_tokens=8,
                             image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = InstructBlipForConditionalGeneration(cfg)
    proc = InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=8)
    _save(model, proc, out)


def build_tiny_blip2(out: Path) -> None:
    """A BLIP-2 (OPT) model: BLIP vision, Q-Former, OPT text."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    tok, vision, qformer, ip = _blip_parts("opt")
    qformer["vocab_size"] = 64
    cfg = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=_text_config("opt", len(tok), tok),
                      num_query_tokens=8, image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(cfg)
    proc = Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=8)
    _save(model, proc, out)


BUILDERS = {
    "tiny_llava": build_tiny_llava,
    "tiny_llava_next": build_tiny_llava_next,
    "tiny_instructblip": build_tiny_instructblip,
    "tiny_blip2": build_tiny_blip2,
}


def _save(model, proc, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)


def tiny_cache_dir() -> Path:
    """Where tiny models are saved: $HALLUC_BENCH_CACHE or ~/.cache/halluc_bench."""
    root = os.environ.get("HALLUC_BENCH_CACHE") or Path.home() / ".cache" / "halluc_bench"
    return Path(root) / "tiny_models"


def ensure_tiny_model(name: str, seed: int = 0) -> Path:
    """The folder of tiny model `name`, built (seeded, deterministic) and saved on first use."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; valid choices: {', '.join(sorted(BUILDERS))}")
    import transformers

    key = hashlib.sha256(json.dumps([name, seed, BUILD_VERSION, transformers.__version__]).encode()).hexdigest()[:12]
    out = tiny_cache_dir() / f"{name}-{key}"
    if (out / "DONE").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    torch.manual_seed(seed)
    BUILDERS[name](tmp)
    (tmp / "DONE").write_text("ok\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
