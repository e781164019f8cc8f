"""Idefics3 and SmolVLM (`Idefics3ForConditionalGeneration`, `SmolVLMForConditionalGeneration`): SigLIP (no
CLS token), a pixel-shuffle connector, a Llama (Idefics3) or SmolLM2 (SmolVLM) text model.

The two model types share one architecture (transformers' `modular_smolvlm` derives SmolVLM from Idefics3:
same module names, same `get_image_features`, same forward), so one family serves both.

An image is resized so its longest edge is at most `size["longest_edge"]`, then up to a multiple of
`max_image_size` and split into `rows x cols` square tiles, followed by a global image (the whole image
resized to one tile). Each tile goes through the vision encoder alone; the connector's pixel shuffle merges
`scale_factor x scale_factor` patches into one token, so a tile is `image_seq_len = (side / scale)^2` tokens in
row-major order over its (side / scale)^2 grid. The prompt (processor's `get_image_prompt_string`) holds, per tile,
`<fake_token_around_image><row_r_col_c>` then its `<image>` run, a newline after each tile row, then
`\\n<fake_token_around_image><global-img>` + the global run + `<fake_token_around_image>`: the image positions
are NOT one contiguous run. `image_token_mask` marks exactly the `<image>` positions (tiles in order, then the
global image); the span geometry `tiles` maps them back.

`pixel_values` is [B, max_tiles, 3, S, S] with all-zero padding tiles (dropped by the model) and a
`pixel_attention_mask` [B, max_tiles, S, S].

SmolVLM checkpoints (model_type `smolvlm`) ship `SmolVLMProcessor`, which insists on a video processor
(torchvision) and `num2words`; `ImageOnlySmolVLMProcessor` keeps its image and text path only.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.models.families import tiny_parts as tp
from harness.models.families.base import ModelFamily
from harness.registry import FAMILIES

# The chat template of HuggingFaceM4/Idefics3-8B-Llama3 (its chat_template.json; transformers'
# tests/models/idefics3/test_processing_idefics3.py::test_apply_chat_template renders with it):
# "<|begin_of_text|>User:<image>Question<end_of_utterance>\nAssistant:".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>"]
ROW_COL_TOKENS = [f"<row_{r + 1}_col_{c + 1}>" for r in range(6) for c in range(6)]  # as the processor lists them
TINY_SCALE = 2  # pixel-shuffle factor of the tiny model (Idefics3-8B: 2; SmolVLM: 3 or 4)


@lru_cache(maxsize=None)
def image_only_smolvlm_processor_class():
    """`SmolVLMProcessor` without its video processor (torchvision) and without the `num2words` requirement
    (only its video prompts use it): the image and text path is the library's own."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
        """SmolVLM's processor for images and text only (no `video_processor` attribute)."""

        def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
            self.image_token = getattr(tokenizer, "image_token", "<image>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
            self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
            self.image_seq_len = image_seq_len
            self.video_token = getattr(tokenizer, "video_token", "<video>")
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            """The mixin's chat templating (SmolVLM's own only adds its video processor's frame defaults)."""
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return ImageOnlySmolVLMProcessor


def tile_layout(adapter: Any, input_ids: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the tile grid of the image in a prompt row (0, 0: a global image only), read from its
    `<row_r_col_c>` tokens."""
    tok = adapter.tokenizer
    present = set(input_ids.tolist())
    rows = cols = 0
    for r in range(6):
        for c in range(6):
            if tok.convert_tokens_to_ids(f"<row_{r + 1}_col_{c + 1}>") in present:
                rows, cols = max(rows, r + 1), max(cols, c + 1)
    return rows, cols


@FAMILIES.register("idefics3")
class Idefics3(ModelFamily):
    """Idefics3-8B-Llama3, SmolVLM (model_type idefics3) and SmolVLM2 (model_type smolvlm)."""

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    sites = {
        "decoder_layers": "model.text_model.layers",
        "attention": "self_attn",
        "final_norm": "model.text_model.norm",
        "lm_head": "lm_head",
        "embed_tokens": "model.text_model.embed_tokens",
        "vision_layers": "model.vision_model.encoder.layers",  # SigLIP encoder blocks
        "vision_tower": "model.vision_model",
        "projector": "model.connector",
        "qformer": None,
    }
    vision_keys = ("pixel_values", "pixel_attention_mask")
    damro_unsupported = ("its SigLIP vision encoder has no CLS token, and DAMRO ranks patches by the CLS token's "
                         "attention")

    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """Idefics3 checkpoints: the auto processor (PIL backend); SmolVLM ones: the image-only processor."""
        from transformers import AutoConfig

        if AutoConfig.from_pretrained(path).model_type == "smolvlm":
            return image_only_smolvlm_processor_class().from_pretrained(path, backend="pil")
        return super().load_processor(path, trust_remote_code)

    def process(self, processor: Any, images: Sequence[Any], prompts: Sequence[str]) -> dict:
        """Processor output for a batch (left-padded): images nested one per prompt (SmolVLM's processor reads a
        flat list as the images of one prompt)."""
        return processor(images=[[im] for im in images], text=list(prompts), return_tensors="pt", padding=True)

    # ---- pixels per image ----------------------------------------------------------------------------
    def split_pixels(self, vis: dict) -> list[torch.Tensor]:
        """Per image, its real tiles [n_i, 3, S, S] (global image last), without the all-zero tiles that pad a
        batch (the model drops all-zero tiles too), so an image's VCD noise does not depend on its batch. (A real
        tile is never all zero: no 8-bit value equals SigLIP's normalisation mean 0.5.)"""
        pieces = []
        for tiles in vis["pixel_values"].unbind(0):
            real = tiles.flatten(1).ne(0).any(-1).nonzero()
            pieces.append(tiles[: int(real[-1]) + 1 if real.numel() else tiles.shape[0]])
        return pieces

    def join_pixels(self, vis: dict, pieces: Sequence[torch.Tensor]) -> dict:
        """`vis` with its pixel tensor rebuilt from per-image tiles, zero-padded to the original tile count."""
        n = vis["pixel_values"].shape[1]
        pads = [torch.cat([p, p.new_zeros(n - p.shape[0], *p.shape[1:])]) for p in pieces]
        return {**vis, "pixel_values": torch.stack(pads)}

    def concat_vision_inputs(self, parts: Sequence[dict]) -> dict:
        """Vision inputs of several batches as one: pixel tensors and masks zero-padded to the most tiles (padding
        tiles are all zero, which the model drops)."""
        n = max(p["pixel_values"].shape[1] for p in parts)
        out = {}
        for k in parts[0]:
            ts = [p[k] for p in parts]
            if k in ("pixel_values", "pixel_attention_mask"):
                ts = [torch.cat([t, t.new_zeros(t.shape[0], n - t.shape[1], *t.shape[2:])], 1) for t in ts]
            out[k] = torch.cat(ts)
        return out

    # ---- diagnosis -----------------------------------------------------------------------------------
    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """Tiles (row-major, each a side x side token grid) then the global image, over the image positions."""
        cfg = adapter.model.config
        vc = cfg.vision_config
        side = vc.image_size // vc.patch_size // cfg.scale_factor
        rows, cols = tile_layout(adapter, inputs["input_ids"][0])
        if (rows * cols + 1) * side * side == span_len:
            return {"kind": "tiles", "side": side, "rows": rows, "cols": cols, "scale": cfg.scale_factor}
        return super().span_geometry(adapter, inputs, span_len)

    # ---- tiny model ----------------------------------------------------------------------------------
    def build_tiny(self, out: Path) -> None:
        """SigLIP-style Idefics3 vision encoder (56 px tiles, a 4x4 patch grid, pixel shuffle 2: 4 tokens a tile),
        Llama text with grouped-query attention (4 heads, 2 key/value heads), an image processor that makes a
        landscape photo 2x2 tiles of 56 px plus the global image, and the Idefics3-8B-Llama3 chat template."""
        import transformers
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

        tok = tp.chat_tokenizer(IDEFICS3_SPECIALS, eos="<end_of_utterance>", pad="<|end_of_text|>",
                                image_token="<image>", extra=ROW_COL_TOKENS)
        s = tp.TINY_IMAGE
        vision = {k: v for k, v in tp.siglip_vision().items() if k != "model_type"}
        cfg = Idefics3Config(
            vision_config={**vision, "model_type": "idefics3_vision"},
            text_config=tp.text_config("llama", len(tok), tok, num_key_value_heads=2),
            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=TINY_SCALE,
            tie_word_embeddings=False)
        model = Idefics3ForConditionalGeneration(cfg)
        # SigLIP's normalisation (mean = std = 0.5), as Idefics3-8B-Llama3's preprocessor_config.json
        ip = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 2 * s}, max_image_size={"longest_edge": s},
                                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(s // 14 // TINY_SCALE) ** 2,
                                 chat_template=IDEFICS3_TEMPLATE)
        tp.save(model, proc, out)


__all__ = ["IDEFICS3_TEMPLATE", "Idefics3", "image_only_smolvlm_processor_class", "tile_layout"]
