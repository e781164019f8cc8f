"""The contract of a model family: everything the harness needs to know about one VLM architecture.

A family is one class in one module of `harness.models.families`, registered by name with
`@FAMILIES.register("<name>")` and matched to a checkpoint by its `config.model_type`. Interventions,
diagnosis, tests, goldens and benchmarks ask `adapter.spec` (the family object) instead of switching on
family names. What a family holds:

- `sites`: abstract site -> module path (pyvene-style): `decoder_layers`, `attention` (inside a block),
  `final_norm`, `lm_head`, `embed_tokens`, `vision_layers`, `vision_tower`, `projector`, `qformer`;
- the prompt (`prompt_template`, else the checkpoint's chat template) and how a batch is processed;
- which prompt positions hold image features (`image_token_mask`; contiguous or not, one image or tiles);
- image encoding the contrastive engine needs: `encode_images` (the model's own image features, one entry
  per image), `with_features`, `concat_encodings`, per-image pixel tensors for pixel-space views (VCD);
- the language-model side of a decoding engine: `position_ids` (1D, or Qwen's M-RoPE), `prefill`, `step`;
- the vision-attention recipe DAMRO uses (`cls_patch_attention`, `topk_features`) or the reason it has none;
- how the image span maps back to the image for diagnosis (`span_geometry`);
- the tiny offline builder (`build_tiny`) and paper defaults of interventions (`intervention_defaults`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

SITE_NAMES = ("decoder_layers", "attention", "final_norm", "lm_head", "embed_tokens", "vision_layers",
              "vision_tower", "projector", "qformer")


class ModelFamily:
    """Base class: the defaults fit a LLaVA-style model (one image-token run per image, 1D positions)."""

    #: registry name, the value of `family:` in model configs
    name: str = ""
    #: `config.model_type` values of the checkpoints this family serves
    model_types: tuple[str, ...] = ()
    #: abstract site -> dotted module path (None: the model has no such part)
    sites: dict[str, str | None] = {}
    #: a `str.format` template with `{question}`; None: the checkpoint's chat template
    prompt_template: str | None = None
    #: batch inputs the image encoder reads (pixel tensors, sizes, grids, Q-Former text)
    vision_keys: tuple[str, ...] = ("pixel_values",)
    #: batch inputs aligned with the prompt tokens, rebuilt from input_ids for every view (see `row_kwargs`)
    row_keys: tuple[str, ...] = ()
    #: process rows one by one and pad ourselves (BLIP: its processor pads between query tokens and text)
    rows_separately: bool = False
    #: extra processor keyword arguments for an already templated prompt, wherever one is processed
    #: (e.g. `add_special_tokens=False` where the chat template itself holds the BOS)
    text_kwargs: dict = {}
    #: why DAMRO cannot run on this family (None: it can)
    damro_unsupported: str | None = None
    #: why vision-side steering directions (VTI's per-patch-position ones, VaLSe's patch masks) do not apply
    #: to this family (None: they do)
    steering_vision_unsupported: str | None = None
    #: the attention module inside a vision block whose output carries its weights (diagnosis reads them);
    #: None: the encoder's attention returns no weights (vision-side relevancy is then not computed)
    vision_attention: str | None = "self_attn"

    # ---- identity and tiny model ----------------------------------------------------------------------
    @property
    def tiny_name(self) -> str:
        """The name of this family's tiny offline model (and of its config `configs/model/tiny_<name>.yaml`)."""
        return f"tiny_{self.name}"

    def build_tiny(self, out: Path) -> None:
        """Build the tiny offline model and processor of this architecture (seeded by the caller), save to `out`."""
        raise NotImplementedError(f"model family {self.name!r} has no tiny builder")

    def intervention_defaults(self, intervention: str, model: Any) -> dict:
        """Per-model defaults of an intervention's parameters (the paper's values where it has them); `model` is a
        ModelInfo (family object and HF config)."""
        return {}

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # ---- prompts and inputs --------------------------------------------------------------------------
    def load_processor(self, path: str, trust_remote_code: bool = False) -> Any:
        """The checkpoint's processor (PIL image backend); a family overrides it when the auto class does not fit."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, backend="pil")

    def image_token_id(self, model: torch.nn.Module) -> int:
        """The id of the placeholder token whose positions receive image features."""
        cfg = model.config
        return int(cfg.image_token_id if getattr(cfg, "image_token_id", None) is not None
                   else cfg.image_token_index)

    def process(self, processor: Any, images: Sequence[Any], prompts: Sequence[str]) -> dict:
        """Processor output for a batch (left-padded), one image per prompt."""
        return processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)

    def image_token_mask(self, adapter: Any, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean [B, L]: the positions that hold image features."""
        return input_ids == adapter.image_token_id

    def row_kwargs(self, adapter: Any, input_ids: torch.Tensor) -> dict:
        """Model inputs aligned with the tokens (e.g. token type ids), rebuilt for any prompt ids."""
        return {}

    # ---- image encoding ------------------------------------------------------------------------------
    def vision_inputs(self, inputs: dict) -> dict:
        """The entries of a batch's inputs the image encoder uses."""
        return {k: inputs[k] for k in self.vision_keys if k in inputs}

    def encode_images(self, adapter: Any, vis: dict) -> Any:
        """The model's own image encoding of `vis` (an output whose `pooler_output` has one entry per image)."""
        return adapter.model.get_image_features(**vis, return_dict=True)

    def image_features(self, encoding: Any) -> list[torch.Tensor]:
        """Per image, the [n_i, D] features that fill its image tokens."""
        return list(encoding.pooler_output)

    def with_features(self, encoding: Any, features: Sequence[torch.Tensor]) -> Any:
        """A copy of `encoding` whose per-image features are `features` (e.g. a DAMRO top-k subset)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=list(features))

    def concat_encodings(self, encodings: Sequence[Any]) -> Any:
        """Several encodings (views of a batch) as one, images in order."""
        return self.with_features(encodings[0], [f for e in encodings for f in self.image_features(e)])

    def split_encoding(self, encoding: Any, start: int, end: int) -> Any:
        """The encoding of images start..end-1 only."""
        return self.with_features(encoding, self.image_features(encoding)[start:end])

    def split_pixels(self, vis: dict) -> list[torch.Tensor]:
        """Per image, its part of the pixel tensor (what a pixel-space view such as VCD's noise alters)."""
        return list(vis["pixel_values"].unbind(0))

    def join_pixels(self, vis: dict, pieces: Sequence[torch.Tensor]) -> dict:
        """`vis` with its pixel tensor rebuilt from per-image pieces (inverse of `split_pixels`)."""
        return {**vis, "pixel_values": torch.stack(list(pieces))}

    def concat_vision_inputs(self, parts: Sequence[dict]) -> dict:
        """Several vision-input dicts (same keys, e.g. two views of a batch) as one, images in order."""
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def image_kwargs(self, inputs: dict) -> dict:
        """Per-image model inputs the language-model forward still needs next to the encoding (grids, sizes)."""
        return {}

    # ---- the language model inside a decoding engine ---------------------------------------------------
    def position_ids(self, adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     image_kwargs: dict) -> torch.Tensor:
        """Prefill position ids of left-padded rows ([B, L]; M-RoPE families [3, B, L])."""
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    def next_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Position ids of the token after the last one, per row (every axis advances by one)."""
        return position_ids[..., -1:] + 1

    def prefill(self, adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, encoding: Any, image_kwargs: dict) -> Any:
        """One forward over the prompts with their image encoding: output with last-position logits and cache."""
        kwargs = {**self.row_kwargs(adapter, input_ids), **image_kwargs}
        if encoding is not None:
            kwargs["mm_encoder_outputs"] = {"image": encoding}
        return adapter.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, return_dict=True, **kwargs)

    def language_model(self, adapter: Any) -> torch.nn.Module:
        """The module that maps (token ids, mask, positions, cache) to next-token logits."""
        return adapter.model

    def step(self, adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor, cache: Any) -> Any:
        """One decoding step with the KV cache: last-position logits and the updated cache."""
        return self.language_model(adapter)(input_ids=input_ids, attention_mask=attention_mask,
                                            position_ids=position_ids, cache=cache, use_cache=True,
                                            logits_to_keep=1, return_dict=True)

    # ---- DAMRO ---------------------------------------------------------------------------------------
    def check_damro(self) -> None:
        """Raise a ValueError naming the reason when DAMRO's CLS-attention recipe does not apply."""
        if self.damro_unsupported:
            raise ValueError(f"damro cannot run on model family {self.name!r}: {self.damro_unsupported}")

    def cls_patch_attention(self, adapter: Any, vis: dict) -> tuple[Any, torch.Tensor, Any]:
        """(image encoding, CLS-to-patch attention [N, P] of the images DAMRO ranks, recipe extras)."""
        self.check_damro()
        raise NotImplementedError

    def topk_features(self, adapter: Any, encoding: Any, extras: Any, idx: torch.Tensor, vis: dict,
                      reference_cls_offset: bool) -> tuple[list[torch.Tensor], bool]:
        """(per-row features of DAMRO's contrastive view from the top-k patch indices, whether the image span
        shrinks to their length)."""
        raise NotImplementedError

    # ---- diagnosis -----------------------------------------------------------------------------------
    def model_view_pixels(self, adapter: Any, inputs: dict) -> torch.Tensor:
        """The first image's normalised pixels [C, H, W] as the model sees them (LLaVA-NeXT: the base crop)."""
        px = inputs["pixel_values"][0]
        return px[0] if px.dim() == 4 else px

    def span_geometry(self, adapter: Any, inputs: dict, span_len: int) -> dict:
        """How an image span of `span_len` tokens maps back to the image (see harness.diagnosis.span_geometry)."""
        return {"kind": "tokens", "n": span_len}
