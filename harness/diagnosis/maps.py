"""Per-token attention and relevancy maps of a VLM's answer onto its image.

One teacher-forced forward pass over ``prompt + answer`` (the answer is generated greedily first when
none is given) records, through forward hooks on the attention modules (eager attention is required),
every decoder, vision-encoder and Q-Former attention matrix. Then, for each answer token t:

- **attention**: the attention weights of the query row that *predicted* token t (the position before
  it, i.e. the generate() step that emitted it) onto the image-token span, averaged over heads; kept
  per decoder layer, so a layer range can be averaged later (``attention_map``);
- **relevancy** (Chefer et al., ICCV 2021, as used by LVLM-Stethoscope): the decoder rollout of
  gradient-weighted attention read at the predicting row, kept on the image span, and pushed further
  through the vision encoder / Q-Former to the encoder's patches (``harness.diagnosis.relevancy``).

How the image span maps back to the image (``Trace.views``): ``harness.diagnosis.span_geometry``.
The pieces live in their own modules and are re-exported here: ``answer_tokens`` (answer ids, text
pieces, forced inputs), ``attention_capture`` (the hooks), ``relevancy`` (the rules and rollouts),
``span_geometry`` (layouts and views).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from harness.diagnosis.answer_tokens import (answer_pieces, encode_answer, forced_inputs,
                                             generate_answer_ids)
from harness.diagnosis.attention_capture import Captured, attention_modules, capture_hooks, grad_through
from harness.diagnosis.relevancy import answer_relevancy, gradcam, qformer_relevancy, rollout, rollout_row
from harness.diagnosis.span_geometry import View, span_geometry, span_views, to_views
from harness.hooks import forward_hooks
from harness.models.adapter import VLMAdapter
from interventions.attention_fn import eager_attention

__all__ = ["Captured", "Trace", "View", "answer_pieces", "answer_relevancy", "attention_map",
           "capture_hooks", "encode_answer", "forced_inputs", "generate_answer_ids", "grad_through", "gradcam",
           "layer_indices", "model_view_image", "qformer_relevancy", "rollout", "rollout_row", "span_geometry",
           "span_views", "to_views", "trace_answer"]


@dataclass
class Trace:
    """Everything the report needs about one (image, question, answer) triple."""

    model: str
    family: str
    question: str
    prompt: str
    answer: str  # the decoded answer text (token offsets and CHAIR refer to it)
    token_ids: list[int]
    token_texts: list[str]  # each token's piece of ``answer``
    token_offsets: list[tuple[int, int]]  # [start, end) of each token in ``answer``
    span: tuple[int, int]  # [first, last + 1) of the image tokens in the full sequence
    positions: list[int]  # the query row that predicted each answer token
    attention: torch.Tensor  # [layers, T, span] head-mean attention of the predicting row onto the image tokens
    relevancy: torch.Tensor | None = None  # [T, span] decoder-rollout relevancy of the image tokens
    patch_relevancy: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> [T, rows, cols]
    relevancy_image_share: list[float] = field(default_factory=list)  # relevancy mass on the image span
    lens: list[list[list[tuple[str, int, float]]]] = field(default_factory=list)  # [T][layer][k]
    views: list[View] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)  # "model", "original" -> PIL images
    generated: bool = True  # False: teacher-forced on a given answer
    geometry: dict = field(default_factory=dict)  # family-specific span layout (see span_views)
    image_positions: list[int] = field(default_factory=list)  # the image tokens (the "span" axis), in order

    @property
    def num_layers(self) -> int:
        """Number of decoder layers the attention is kept for."""
        return int(self.attention.shape[0])


# ------------------------------------------------------------------ layer ranges
def layer_indices(layers: Any, num_layers: int) -> list[int]:
    """Decoder layer indices for a range spec: None (all), an int, [first, last] inclusive, or "a-b" / "a:b".

    Negative numbers count from the end (-1 is the last layer).
    """
    if layers is None or layers == "" or layers == "all":
        return list(range(num_layers))
    if isinstance(layers, str):
        sep = ":" if ":" in layers else "-" if "-" in layers.lstrip("-") else None
        if sep is None:
            layers = int(layers)
        else:
            head, _, tail = layers.lstrip("-").partition(sep)
            first = ("-" if layers.startswith("-") else "") + head
            layers = [int(first), int(tail)]
    if isinstance(layers, int):
        layers = [layers, layers]
    vals = [int(x) for x in layers]
    if len(vals) != 2:
        raise ValueError(f"layers={layers!r}: give [first, last] (inclusive), an int, or null for all")
    first, last = (v + num_layers if v < 0 else v for v in vals)
    if not (0 <= first <= last < num_layers):
        raise ValueError(f"layers={layers!r} is not a range inside 0..{num_layers - 1}")
    return list(range(first, last + 1))


def attention_map(trace: Trace, layers: Any = None) -> torch.Tensor:
    """[T, span] attention of each answer token onto the image span, averaged over the chosen layers and heads."""
    idx = layer_indices(layers, trace.num_layers)
    return trace.attention[idx].mean(0)


# ------------------------------------------------------------------ images
def model_view_image(adapter: VLMAdapter, inputs: dict):
    """The processed image as the model sees it (the family's `model_view_pixels`), de-normalised to a PIL image."""
    import numpy as np
    from PIL import Image

    px = adapter.spec.model_view_pixels(adapter, inputs)
    ip = getattr(adapter.processor, "image_processor", None)
    mean = torch.tensor(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0]).view(3, 1, 1)
    std = torch.tensor(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0]).view(3, 1, 1)
    img = (px.detach().float().cpu() * std + mean).clamp(0, 1)
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


# ------------------------------------------------------------------ the trace
def trace_answer(adapter: VLMAdapter, image: Any, question: str, answer: str | None = None,
                 answer_ids: Sequence[int] | None = None, max_new_tokens: int = 32, relevancy: bool = True,
                 lens_top_k: int = 5) -> Trace:
    """Maps for every answer token of one (image, question): generated greedily, or teacher-forced on ``answer``.

    ``image`` is a PIL image. ``relevancy=False`` skips the backward passes (attention and logit lens only).
    """
    from harness.diagnosis.logit_lens import logit_lens

    batch = adapter.prepare([image], [question])
    generated = answer is None and answer_ids is None
    if answer_ids is None:
        answer_ids = (generate_answer_ids(adapter, batch, max_new_tokens) if answer is None
                      else encode_answer(adapter.tokenizer, answer))
    answer_ids = [int(t) for t in answer_ids]
    if not answer_ids:
        raise ValueError("the answer has no tokens to diagnose")
    prompt_len = batch.inputs["input_ids"].shape[1]
    inputs = forced_inputs(batch, answer_ids, adapter)
    image_pos = adapter.image_positions(inputs["input_ids"])[0]  # the image tokens, in order (maybe not contiguous)
    if image_pos.numel() == 0:
        raise ValueError("no image tokens in the prompt")
    span = (int(image_pos[0]), int(image_pos[-1]) + 1)
    positions = [prompt_len + t - 1 for t in range(len(answer_ids))]
    geometry = span_geometry(adapter, inputs, image_pos.numel())

    cap = Captured()
    model = adapter.model
    ctx = grad_through(model) if relevancy else torch.no_grad()
    hooks = capture_hooks(adapter, cap, vision=relevancy or geometry["kind"] == "queries")
    with ctx, eager_attention(attention_modules(model, hooks)), forward_hooks(model, hooks):
        out = model(**inputs, use_cache=False)
        logits = out.logits[0]
        # attention of each predicting row onto the image span, per layer (head mean)
        attention = torch.stack([a[0][:, positions][..., image_pos.to(a.device)].detach().float().mean(0).cpu()
                                 for a in cap.decoder])
        hidden = [h[0, positions].detach() for h in cap.hidden]
        lens = logit_lens(adapter, hidden, top_k=lens_top_k)

        qmap = None
        if geometry["kind"] == "queries" and cap.qformer_cross:
            # mean cross-attention of each query onto the patches (CLS dropped), over layers and heads
            cross = torch.stack([c[0].detach().float().mean(0) for c in cap.qformer_cross]).mean(0)
            qmap = cross[:geometry["n"], 1:].cpu()
        geometry["qformer_attention"] = qmap

        rel, share, patch_rel = None, [], {}
        if relevancy:
            rel, share, patch_rel = answer_relevancy(adapter, cap, logits, answer_ids, positions, image_pos,
                                                         geometry)

    text, pieces, offsets = answer_pieces(adapter.tokenizer, answer_ids)
    views = span_views(geometry)
    if geometry["kind"] == "queries" and qmap is None:
        views = [v for v in views if v.name != "patches"]
    images = {"model": model_view_image(adapter, inputs), "original": image}
    del cap, out, logits
    return Trace(model=adapter.name, family=adapter.family, question=question, prompt=batch.prompts[0],
                 answer=text, token_ids=answer_ids, token_texts=pieces, token_offsets=offsets, span=span,
                 positions=positions, attention=attention, relevancy=rel, patch_relevancy=patch_rel,
                 relevancy_image_share=share, lens=lens, views=views, images=images, generated=generated,
                 geometry=geometry, image_positions=image_pos.tolist())
