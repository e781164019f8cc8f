"""Per-token attention and relevancy maps of a VLM's answer onto its image.

One teacher-forced forward pass over ``prompt + answer`` (the answer is generated greedily first when
none is given) records, through forward hooks on the attention modules (eager attention is required),
every decoder, vision-encoder and Q-Former attention matrix. Then, for each answer token t:

- **attention**: the attention weights of the query row that *predicted* token t (the position before
  it, i.e. the generate() step that emitted it) onto the image-token span, averaged over heads; kept
  per decoder layer, so a layer range can be averaged later (``attention_map``);
- **relevancy** (Chefer et al., "Generic Attention-model Explainability", ICCV 2021, as used by
  LVLM-Stethoscope): the gradient of token t's logit with respect to every attention matrix gives
  ``Ā = mean_heads((∇A ⊙ A)⁺)`` per layer; the decoder rollout ``R = Π_l (I + Ā_l)`` (R += Ā R, layer
  by layer) read at the predicting row gives the relevancy of every input position, kept on the image
  span. It is non-negative.
- **relevancy through the vision side**: LLaVA families roll the vision encoder out the same way
  (``R_ii``, per crop) and push the image-token relevancy back to the encoder's patches
  (``r_img · R_ii[patch rows, patches]``). BLIP families roll out the Q-Former (self-attention rule
  on queries, and the bi-modal rule ``R_qi += R̄_qqᵀ Ā_cross R̄_ii`` for its cross-attention, with the
  residual normalisation R̄ of Chefer et al.) and push the query-token relevancy to patches
  (``r_q · R_qi[:, patches]``).

How the image span maps back to the image (``Trace.views``):

- LLaVA-1.5: the span is the encoder's square patch grid (sqrt of the span length; a leading CLS
  token is dropped under the ``full`` feature strategy) over the processed image (the center crop
  the model sees);
- LLaVA-NeXT: the first h*w tokens are the base crop (the whole image resized to one square crop):
  view ``base`` over the processed base crop; the remaining tokens are the AnyRes tiles, unpadded and
  with one ``image_newline`` token per row: view ``tiles`` (newline tokens dropped) over the original
  image (the unpadded tile grid covers it exactly). Vision-encoder relevancy is computed per crop and
  reassembled the same way;
- BLIP-2 / InstructBLIP: the span holds the Q-Former's query tokens, which do not map to patches:
  view ``queries`` is a bar per query token; view ``patches`` pushes the per-query values through the
  Q-Former (attention: its cross-attention averaged over layers and heads; relevancy: the Q-Former
  relevancy above) onto the vision encoder's patch grid over the processed image.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from harness.hooks import forward_hooks
from harness.models.adapter import VLMAdapter

VISION_ATTENTION = "self_attn"  # the attention module inside a CLIP / BLIP vision encoder layer


@dataclass
class View:
    """One way of showing a map over the image span: a grid of cells, drawn over an image or as bars."""

    name: str  # "patches" | "base" | "tiles" | "queries" | "tokens"
    rows: int
    cols: int
    overlay: str | None  # image it is drawn over: "model" (processed image), "original", or None (bars)
    label: str = ""


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
    span: tuple[int, int]  # image-token span in the full sequence
    positions: list[int]  # the query row that predicted each answer token
    attention: torch.Tensor  # [layers, T, span] head-mean attention of the predicting row onto the span
    relevancy: torch.Tensor | None = None  # [T, span] decoder-rollout relevancy of the image tokens
    patch_relevancy: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> [T, rows, cols]
    relevancy_image_share: list[float] = field(default_factory=list)  # relevancy mass on the image span
    lens: list[list[list[tuple[str, int, float]]]] = field(default_factory=list)  # [T][layer][k]
    views: list[View] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)  # "model", "original" -> PIL images
    generated: bool = True  # False: teacher-forced on a given answer
    geometry: dict = field(default_factory=dict)  # family-specific span layout (see span_views)

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


# ------------------------------------------------------------------ answers and inputs
def encode_answer(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of a recorded answer as the model would have generated it after the prompt.

    SentencePiece tokenizers add the word-start marker themselves; byte-level BPE tokenizers (GPT-2 /
    OPT) need the space that separates the answer from the prompt, so it is prefixed for them.
    """
    text = answer.strip()
    probe = tokenizer.convert_ids_to_tokens(tokenizer(" a", add_special_tokens=False)["input_ids"])
    if probe and str(probe[0]).startswith("Ġ"):
        text = " " + text
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(decoded text, each token's piece of it, each token's [start, end) offsets), by incremental decoding."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    pieces, offsets, prev = [], [], ""
    for k in range(len(ids)):
        cur = tokenizer.decode(list(ids[:k + 1]), skip_special_tokens=True)
        common = len(prev) if cur.startswith(prev) else len(_common_prefix(prev, cur))
        start, end = min(common, len(text)), min(len(cur), len(text))
        if offsets:
            start = max(start, offsets[-1][1])
        end = max(end, start)
        offsets.append((start, end))
        piece = text[start:end]
        if not piece.strip():
            piece = str(tokenizer.convert_ids_to_tokens(int(ids[k])))
        pieces.append(piece)
        prev = cur
    return text, pieces, offsets


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def generate_answer_ids(adapter: VLMAdapter, batch: Any, max_new_tokens: int) -> list[int]:
    """Greedy answer ids for a one-row batch, cut before the first EOS / padding."""
    ids = adapter.generate_ids(batch, {"strategy": "greedy", "max_new_tokens": int(max_new_tokens)})
    stop = {adapter.tokenizer.eos_token_id, adapter.tokenizer.pad_token_id}
    gen_eos = getattr(getattr(adapter.model, "generation_config", None), "eos_token_id", None)
    stop.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    out = []
    for tok in ids[0].tolist():
        if tok in stop:
            break
        out.append(int(tok))
    return out


def forced_inputs(batch: Any, answer_ids: Sequence[int]) -> dict:
    """The batch's model inputs with ``answer_ids`` appended to ``input_ids`` / ``attention_mask`` (one row)."""
    inputs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.inputs.items()}
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("diagnosis works on one (image, question) row at a time")
    extra = torch.tensor([list(answer_ids)], dtype=ids.dtype, device=ids.device)
    inputs["input_ids"] = torch.cat([ids, extra], dim=1)
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
    return inputs


# ------------------------------------------------------------------ capture
@dataclass
class Captured:
    """Attention matrices (graph-attached) and decoder hidden states recorded during one forward pass."""

    decoder: list[torch.Tensor] = field(default_factory=list)
    vision: list[torch.Tensor] = field(default_factory=list)
    qformer_self: list[torch.Tensor] = field(default_factory=list)
    qformer_cross: list[torch.Tensor] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)  # decoder layer outputs [1, n, H]


def _attn_hook(store: list, path: str):
    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(f"{path} returned no attention weights: diagnosis needs "
                               "attn_implementation=eager (set model.attn_implementation=eager)")
        store.append(weights)
    return hook


def _hidden_hook(store: list):
    def hook(module, args, output):
        store.append(output[0] if isinstance(output, tuple) else output)
    return hook


def capture_hooks(adapter: VLMAdapter, cap: Captured, vision: bool = True) -> dict:
    """{module path: hook} recording decoder attentions and outputs, and (optionally) vision / Q-Former attentions."""
    hooks: dict = {}
    dec, attn = adapter.site_path("decoder_layers"), adapter.site_path("attention")
    for i in range(adapter.num_layers):
        hooks[f"{dec}.{i}.{attn}"] = _attn_hook(cap.decoder, f"{dec}.{i}.{attn}")
        hooks[f"{dec}.{i}"] = _hidden_hook(cap.hidden)
    if not vision:
        return hooks
    vpath = adapter.sites.get("vision_layers")
    if vpath:
        for i in range(len(adapter.site("vision_layers"))):
            p = f"{vpath}.{i}.{VISION_ATTENTION}"
            hooks[p] = _attn_hook(cap.vision, p)
    qpath = adapter.sites.get("qformer")
    if qpath:
        for i, layer in enumerate(adapter.site("qformer").encoder.layer):
            p = f"{qpath}.encoder.layer.{i}.attention.attention"
            hooks[p] = _attn_hook(cap.qformer_self, p)
            if getattr(layer, "has_cross_attention", False):
                p = f"{qpath}.encoder.layer.{i}.crossattention.attention"
                hooks[p] = _attn_hook(cap.qformer_cross, p)
    return hooks


@contextmanager
def _grad_through(model: torch.nn.Module) -> Iterator[None]:
    """Build an autograd graph through the model (frozen parameters temporarily require grad)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


# ------------------------------------------------------------------ span geometry
def _grid_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def span_geometry(adapter: VLMAdapter, inputs: dict, span_len: int) -> dict:
    """How the image span maps back to the image (see the module docstring); ``kind`` names the layout."""
    cfg = adapter.model.config
    fam = adapter.family
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    if fam == "llava":
        off = 1 if strategy == "full" else 0
        side = _grid_side(span_len - off)
        if side:
            return {"kind": "grid", "side": side, "skip": off, "vit_offset": 1 - off}
    elif fam == "llava_next":
        vc = cfg.vision_config
        h = w = vc.image_size // vc.patch_size
        if strategy == "default" and span_len > h * w and "image_sizes" in inputs:
            from transformers.models.llava_next.modeling_llava_next import (get_anyres_image_grid_shape,
                                                                            unpad_image)

            size = inputs["image_sizes"][0].tolist()
            nph, npw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, vc.image_size)
            idx = torch.arange(nph * h * npw * w).view(1, nph * h, npw * w)
            un = unpad_image(idx, size)[0]  # [R, C] padded-grid flat index of each kept cell
            rows, cols = un.shape
            if h * w + rows * (cols + 1) == span_len:
                return {"kind": "anyres", "h": h, "w": w, "nph": nph, "npw": npw, "rows": rows, "cols": cols,
                        "unpad": un}
        if span_len == h * w:
            return {"kind": "grid", "side": h, "skip": 0, "vit_offset": 1}
    elif fam in ("blip2", "instructblip"):
        vc = cfg.vision_config
        side = vc.image_size // vc.patch_size
        return {"kind": "queries", "n": span_len, "side": side}
    return {"kind": "tokens", "n": span_len}


def span_views(geometry: dict) -> list[View]:
    """The views of a span layout."""
    kind = geometry["kind"]
    if kind == "grid":
        s = geometry["side"]
        return [View("patches", s, s, "model", "image patches (the crop the model sees)")]
    if kind == "anyres":
        h, w = geometry["h"], geometry["w"]
        return [View("base", h, w, "model", "base crop (whole image, resized)"),
                View("tiles", geometry["rows"], geometry["cols"], "original", "AnyRes tiles (unpadded)")]
    if kind == "queries":
        s = geometry["side"]
        return [View("queries", 1, geometry["n"], None, "Q-Former query tokens"),
                View("patches", s, s, "model", "patches, through the Q-Former")]
    return [View("tokens", 1, geometry["n"], None, "image tokens")]


def to_views(geometry: dict, values: torch.Tensor, qformer_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Span values [..., span] -> {view name: [..., rows, cols]} for the span-linear views of a layout.

    ``qformer_map`` [queries, patches] pushes query values to patches for BLIP layouts (view ``patches``).
    """
    lead = values.shape[:-1]
    kind = geometry["kind"]
    if kind == "grid":
        s = geometry["side"]
        return {"patches": values[..., geometry["skip"]:].reshape(*lead, s, s)}
    if kind == "anyres":
        h, w, rows, cols = geometry["h"], geometry["w"], geometry["rows"], geometry["cols"]
        base = values[..., :h * w].reshape(*lead, h, w)
        tiles = values[..., h * w:].reshape(*lead, rows, cols + 1)[..., :cols]
        return {"base": base, "tiles": tiles}
    if kind == "queries":
        out = {"queries": values.reshape(*lead, 1, geometry["n"])}
        if qformer_map is not None:
            s = geometry["side"]
            out["patches"] = (values.float() @ qformer_map.float()).reshape(*lead, s, s)
        return out
    return {"tokens": values.reshape(*lead, 1, geometry["n"])}


# ------------------------------------------------------------------ relevancy rules
def gradcam(attn: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Ā = mean over heads of (∇A ⊙ A)⁺ : [batch, heads, q, k] -> [batch, q, k] (zeros without a gradient)."""
    a = attn.detach().float()
    if grad is None:
        return torch.zeros(a.shape[0], *a.shape[2:], device=a.device)
    return (grad.float() * a).clamp(min=0).mean(dim=1)


def rollout(cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """Self-attention rule R = Π (I + Ā_l) applied layer by layer (R += Ā R); cams are [batch, n, n]."""
    b, n = cams[0].shape[0], cams[0].shape[-1]
    R = torch.eye(n, device=cams[0].device).expand(b, n, n).clone()
    for cam in cams:
        R = R + cam @ R
    return R


def rollout_row(cams: Sequence[torch.Tensor], row: int) -> torch.Tensor:
    """Row ``row`` of the rollout of [n, n] cams without forming R: v ← v (I + Ā), last layer first."""
    n = cams[0].shape[-1]
    v = torch.zeros(n, device=cams[0].device)
    v[row] = 1.0
    for cam in reversed(list(cams)):
        v = v + v @ cam
    return v


def _normalize_residual(R: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s R̄: the non-identity part of R with unit row sums, plus the identity."""
    eye = torch.eye(R.shape[-1], device=R.device)
    S = (R - eye).clamp(min=0)
    S = S / S.sum(-1, keepdim=True).clamp(min=1e-12)
    return S + eye


def qformer_relevancy(self_cams: Sequence[torch.Tensor], cross_cams: Sequence[torch.Tensor],
                      has_cross: Sequence[bool], R_ii: torch.Tensor, num_queries: int) -> torch.Tensor:
    """[queries, 1 + patches] relevancy of the vision tokens for each Q-Former query (cams without batch dim)."""
    n = self_cams[0].shape[-1]
    R_qq = torch.eye(n, device=R_ii.device)
    R_qi = torch.zeros(n, R_ii.shape[-1], device=R_ii.device)
    crosses = iter(cross_cams)
    for cam, cross in zip(self_cams, has_cross):
        R_qq, R_qi = R_qq + cam @ R_qq, R_qi + cam @ R_qi
        if cross:
            c = next(crosses)  # [queries, 1 + patches]
            nq = c.shape[0]
            R_qi[:nq] = R_qi[:nq] + _normalize_residual(R_qq[:nq, :nq]).T @ c @ _normalize_residual(R_ii)
    return R_qi[:num_queries]


# ------------------------------------------------------------------ images
def model_view_image(adapter: VLMAdapter, pixel_values: torch.Tensor):
    """The processed image as the model sees it (base crop for LLaVA-NeXT), de-normalised to a PIL image."""
    import numpy as np
    from PIL import Image

    px = pixel_values[0]
    if px.dim() == 4:
        px = px[0]
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
    inputs = forced_inputs(batch, answer_ids)
    span = adapter.image_spans(inputs["input_ids"])[0]
    if span[1] <= span[0]:
        raise ValueError("no image tokens in the prompt")
    positions = [prompt_len + t - 1 for t in range(len(answer_ids))]
    rows = torch.tensor(positions)
    geometry = span_geometry(adapter, inputs, span[1] - span[0])

    cap = Captured()
    model = adapter.model
    ctx = _grad_through(model) if relevancy else torch.no_grad()
    with ctx, forward_hooks(model, capture_hooks(adapter, cap, vision=relevancy or geometry["kind"] == "queries")):
        out = model(**inputs, use_cache=False)
        logits = out.logits[0]
        # attention of each predicting row onto the image span, per layer (head mean)
        attention = torch.stack([a[0][:, positions, span[0]:span[1]].detach().float().mean(0).cpu()
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
            rel, share, patch_rel = _relevancy(adapter, cap, logits, answer_ids, positions, span, geometry)

    text, pieces, offsets = answer_pieces(adapter.tokenizer, answer_ids)
    views = span_views(geometry)
    if geometry["kind"] == "queries" and qmap is None:
        views = [v for v in views if v.name != "patches"]
    images = {"model": model_view_image(adapter, inputs["pixel_values"]), "original": image}
    del cap, out, logits
    return Trace(model=adapter.name, family=adapter.family, question=question, prompt=batch.prompts[0],
                 answer=text, token_ids=answer_ids, token_texts=pieces, token_offsets=offsets, span=span,
                 positions=positions, attention=attention, relevancy=rel, patch_relevancy=patch_rel,
                 relevancy_image_share=share, lens=lens, views=views, images=images, generated=generated,
                 geometry=geometry)


def _relevancy(adapter: VLMAdapter, cap: Captured, logits: torch.Tensor, answer_ids: list[int],
               positions: list[int], span: tuple[int, int], geometry: dict):
    """Decoder relevancy [T, span], its image share per token, and vision-side relevancy per view."""
    tensors = cap.decoder + cap.vision + cap.qformer_self + cap.qformer_cross
    nd, nv, nqs = len(cap.decoder), len(cap.vision), len(cap.qformer_self)
    has_cross = [getattr(layer, "has_cross_attention", False) for layer in adapter.site("qformer").encoder.layer] \
        if nqs else []
    rels, shares, patch_rows = [], [], []
    for t, (q, tok) in enumerate(zip(positions, answer_ids)):
        grads = torch.autograd.grad(logits[q, tok], tensors, retain_graph=True, allow_unused=True)
        dec_cams = [gradcam(a, g)[0] for a, g in zip(cap.decoder, grads[:nd])]
        v = rollout_row(dec_cams, q)
        r_img = v[span[0]:span[1]]
        others = v.sum() - v[q]
        shares.append(float(r_img.sum() / others) if others > 0 else 0.0)
        rels.append(r_img.cpu())
        if not nv:
            continue
        vit_cams = [gradcam(a, g) for a, g in zip(cap.vision, grads[nd:nd + nv])]  # [crops, N, N]
        R_ii = rollout(vit_cams)
        if geometry["kind"] == "queries" and nqs:
            self_cams = [gradcam(a, g)[0] for a, g in zip(cap.qformer_self, grads[nd + nv:nd + nv + nqs])]
            cross_cams = [gradcam(a, g)[0] for a, g in zip(cap.qformer_cross, grads[nd + nv + nqs:])]
            R_qi = qformer_relevancy(self_cams, cross_cams, has_cross, R_ii[0], geometry["n"])
            s = geometry["side"]
            patch_rows.append({"patches": (r_img @ R_qi[:, 1:]).reshape(s, s).cpu()})
        elif geometry["kind"] == "grid":
            off, s = geometry["vit_offset"], geometry["side"]
            r = r_img[geometry["skip"]:]
            patch_rows.append({"patches": (r @ R_ii[0][off:off + r.numel(), 1:]).reshape(s, s).cpu()})
        elif geometry["kind"] == "anyres":
            patch_rows.append(_anyres_vision_relevancy(geometry, r_img, R_ii))
    patch_rel = {k: torch.stack([p[k] for p in patch_rows]) for k in (patch_rows[0] if patch_rows else {})}
    return torch.stack(rels), shares, patch_rel


def _anyres_vision_relevancy(g: dict, r_img: torch.Tensor, R_ii: torch.Tensor) -> dict:
    """LLaVA-NeXT: push base-crop and tile-token relevancy through each crop's encoder rollout."""
    h, w, nph, npw, rows, cols = g["h"], g["w"], g["nph"], g["npw"], g["rows"], g["cols"]
    base = (r_img[:h * w] @ R_ii[0][1:, 1:]).reshape(h, w)
    tiles = r_img[h * w:].reshape(rows, cols + 1)[:, :cols]
    un = g["unpad"].to(r_img.device)
    padded = torch.zeros(nph * h * npw * w, device=r_img.device)
    padded[un.flatten()] = tiles.flatten()
    padded = padded.view(nph, h, npw, w)
    out = torch.zeros_like(padded)
    for i in range(nph):
        for j in range(npw):
            crop = 1 + i * npw + j
            if crop >= R_ii.shape[0]:
                continue
            out[i, :, j, :] = (padded[i, :, j, :].reshape(-1) @ R_ii[crop][1:, 1:]).view(h, w)
    tiles_out = out.reshape(-1)[un.flatten()].view(rows, cols)
    return {"base": base.cpu(), "tiles": tiles_out.cpu()}
