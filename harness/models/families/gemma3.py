"""Gemma 3 (`Gemma3ForConditionalGeneration`): SigLIP (no CLS token), average pooling to `mm_tokens_per_image`
tokens (256 in the real checkpoints: 64x64 patches pooled 4x4), an RMS-normed linear projection, Gemma 3 text
(sliding-window and global layers, grouped-query attention).

An image is `<start_of_image>` + `mm_tokens_per_image` x `<image_soft_token>` + `<end_of_image>` (the
processor expands the chat template's `<start_of_image>`); only the soft tokens receive features. In the
prefill the image tokens attend to each other bidirectionally: the model builds that mask from
`token_type_ids` (1 on soft tokens), a row input here (`row_keys` / `row_kwargs`), so every contrastive view
rebuilds it from its own prompt ids; decoding steps are causal (as `generate` passes no token types after the
first step). Pan-and-scan is off (the processor default): one crop per image.

The chat template starts with `{{ bos_token }}`, so the prompt is tokenised without adding special tokens
(adding them would double the BOS).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.models.tiny_vocab import tiny_vocabulary
from harness.registry import FAMILIES

# The chat template of google/gemma-3-{4b,12b,27b}-it (tokenizer_config.json / chat_template.json).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)
# Gemma's specials in its order (pad 0, eos 1, bos 2, unk 3), then the turn and image markers
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
TINY_TOKENS_PER_IMAGE = 4  # 4x4 SigLIP patches average-pooled 2x2


@FAMILIES.register("gemma3")
class Gemma3(ModelFamily):
    """Gemma 3 4B / 12B / 27B instruction-tuned (google `-it` checkpoints)."""

    name = "gemma3"
    model_types = ("gemma3",)
    sites = {
        "decoder_layers": "model.language_model.layers",
        "attention": "self_attn",
        "final_norm": "model.language_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.language_model.embed_tokens",
        "vision_layers": "model.vision_tower.encoder.layers",  # SigLIP encoder blocks
        "vision_tower": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "qformer": None,
    }
    row_keys = ("token_type_ids",)
    text_kwargs = {"add_special_tokens": False}  # the chat template starts with the BOS
    damro_unsupported = ("its SigLIP vision encoder has no CLS token, and DAMRO ranks patches by the CLS token's "
                         "attention")

    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """The checkpoint's `Gemma3Processor` with the PIL image processor."""
        from transformers import Gemma3Processor

        return Gemma3Processor.from_pretrained(path, backend="pil")

    def process(self, processor: Any, images: Sequence[Any], prompts: Sequence[str]) -> dict:
        """Processor output (left-padded); no special tokens added, the chat template already holds the BOS."""
        return processor(images=[[im] for im in images], text=list(prompts), return_tensors="pt", padding=True,
                         **self.text_kwargs)

    def row_kwargs(self, adapter: Any, input_ids: torch.Tensor) -> dict:
        """`token_type_ids`: 1 on the image soft tokens (the bidirectional prefill block), 0 elsewhere."""
        return {"token_type_ids": (input_ids == adapter.image_token_id).long()}

    # ---- image encoding ----------------------------------------------------------------------------------
    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """SigLIP, average pooling and projection: one [mm_tokens_per_image, D] entry per image."""
        return adapter.model.model.get_image_features(pixel_values=vis["pixel_values"], return_dict=True)

    def with_features(self, encoding: Any, features: Sequence[torch.Tensor]) -> Any:
        """Per-image features stacked [N, T, D] (the model merges `pooler_output` as one tensor)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=torch.stack(list(features)))

    # ---- diagnosis -----------------------------------------------------------------------------------
    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """The soft tokens are a square grid of SigLIP patches average-pooled k x k (k = 4 in the real models),
        row-major over the processed (square, resized) image; SigLIP has no CLS token (``vit_offset`` 0)."""
        cfg = adapter.model.config
        patches = cfg.vision_config.image_size // cfg.vision_config.patch_size
        side = int(round(span_len ** 0.5))
        if side * side == span_len and patches % side == 0:
            return {"kind": "grid", "side": side, "skip": 0, "vit_offset": 0, "pool": patches // side}
        return super().span_geometry(adapter, inputs, span_len)

    # ---- tiny model ----------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """SigLIP (56 px, a 4x4 grid) pooled to 2x2 = 4 tokens, Gemma 3 text (4 layers alternating a sliding
        window of 16 tokens, shorter than most prompts, and global attention; head_dim 16, 4 heads, 2 key/value
        heads), Gemma's chat template and specials.

        The real models have 5 sliding layers per global one and a 1024-token window, longer than any prompt
        here; the tiny window is short so that the sliding mask matters, and global layers alternate so that a
        guided middle layer sees the image from the last position."""
        import transformers
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor

        tok = tp.word_tokenizer(tiny_vocabulary(), GEMMA_SPECIALS, "<bos>", "<eos>", "<pad>", "<unk>", "left")
        tok.add_special_tokens({"additional_special_tokens": GEMMA_SPECIALS[4:]})
        tok._set_model_specific_special_tokens(IMAGE_TOKENS)
        ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}
        text = tp.text_config("gemma3_text", len(tok), tok, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=16, hidden_activation="gelu_pytorch_tanh",
                              layer_types=["sliding_attention", "full_attention"] * 2)
        cfg = Gemma3Config(text_config=text, vision_config={**tp.siglip_vision(), "vision_use_head": False},
                           mm_tokens_per_image=TINY_TOKENS_PER_IMAGE, boi_token_index=ids["<start_of_image>"],
                           eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
        model = Gemma3ForConditionalGeneration(cfg)
        # the library initialises the projection to zeros (trained weights replace it): random here, so that
        # the tiny model's answers depend on the image
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.1)
        model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]  # as the -it checkpoints
        s = tp.TINY_IMAGE
        # SigLIP's normalisation (mean = std = 0.5) and a square resize, as gemma-3-*-it preprocessor_config.json
        ip = transformers.Gemma3ImageProcessorPil(size={"height": s, "width": s}, image_mean=[0.5, 0.5, 0.5],
                                                  image_std=[0.5, 0.5, 0.5], do_pan_and_scan=False)
        proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                               image_seq_length=TINY_TOKENS_PER_IMAGE)
        tp.save(model, proc, out)


__all__ = ["GEMMA3_TEMPLATE", "Gemma3"]
