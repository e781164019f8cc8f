"""`head_guide`: heads-guided attention intervention of "Devils in Middle Layers of Large Vision-Language
Models" (Jiang et al., 2024, arXiv:2411.16724).

In the guided decoder layers, before the softmax, the attention logits of the *last query row* towards the
image tokens are raised, in every head, by `alpha` times the mean over heads of their absolute value:

    s[b, h, -1, j] += alpha * mean_h' |s[b, h', -1, j]|      for j in the image span of row b

with `s = q @ k^T / sqrt(d)` (the scaled logits the model adds its mask to). Everything else (other rows,
other columns, other layers) is unchanged; the softmax then renormalises the row, moving attention mass
towards the image in proportion to how much the heads agree on each image token.

Reference behaviour (github.com/ZhangqiJiang07/middle_layers_indicating_hallucinations):
- `modify_attention.py` `llama_new_forward`: the "### shift visual attention" block edits
  `attn_weights[:, :, -1, img_start_idx:img_end_idx] += alpha * attn_weights[:, :, -1, span].abs()
  .mean(dim=1, keepdim=True)` after the mask was added and before the fp32 softmax. So: absolute value of
  the scaled logits, mean over all heads (dim 1), the same value added to every head, last query row only.
  `aggregation: mean` here (commit cf5311b, whose `alpha` keyword `chair_eval.py` and the README call).
  Another version of the file (commit bc5d76e, the strength named `beta`) also has `aggregation ==
  "topK"`: the mean |logit| over the top-k heads ranked by softmax attention mass (mask included) on the
  image span of the last row, added to every head (`aggregation: topk`, `top_k`); nothing in the
  repository's scripts selects it.
- The last row is the last prompt token at prefill and the new token at every decoding step (q_len = 1),
  so each generated token is guided; the span stays at the same key (cache) positions.
- `llama_head_guide` guides `range(l0, l1)` for `guided_layer_range = [l0, l1]` (a 1-element list guides
  that one layer), and `chair_eval.py` turns `--guide-range 5,18` into `[5, 19]`: layers 5..18 *inclusive*
  for LLaVA-1.5-7B (0-indexed decoder blocks; the log file name says `layers_5-19`). Here `layers: [5, 18]`
  with `layers_inclusive: true` (false: Python-range end, exclusive). Layers outside the model's decoder
  stack raise a ValueError naming the valid range.
- The patched forward replaced LlamaSdpaAttention.forward under transformers 4.37.2 (requirements.txt).
  With batch size 1 and no padding, 4.37's `_prepare_4d_causal_attention_mask_for_sdpa` returns
  `attention_mask=None` (SDPA would use `is_causal`), and the patched eager code adds no mask at all: in the
  guided layers the prefill attention is *bidirectional*. Here the causal mask is kept
  (`reference_prefill_mask: false`, the default); `reference_prefill_mask: true` reproduces the reference:
  in guided layers at prefill (q_len > 1) every query row gets the last row's mask, i.e. no causal mask but
  still key-padding masking (identical to the reference for its batch size 1 without padding; padded
  query rows stay harmless). Decoding steps have one query row, so this option only changes the prefill.
  Note that with `reference_prefill_mask: true`, `alpha: 0` is *not* the baseline.
- The reference adds the bonus to logits that already include the mask (0 on the image span of the last
  row, which is never masked: it is causally visible and never padding) and clamps at finfo.min; the
  values on the span are identical here.
- The reference computes in the model dtype (fp16 there); so does this (eager attention's op order:
  logits in the query dtype, fp32 softmax cast back).

Mechanism: `interventions.attention_fn.edit_attention_logits` (an `AttentionInterface` attention function,
active for the batch's session only, only for the guided layers; the language model's previous attention
implementation is restored afterwards). Works for every family whose language model dispatches through
`AttentionInterface` (LLaMA/Vicuna/Mistral in LLaVA-1.5/NeXT and InstructBLIP, OPT in BLIP-2).
The guided columns are each row's image-token positions as the model family defines them
(`adapter.image_token_mask(input_ids)`: LLaVA's 576-token run, LLaVA-NeXT's base crop and tiles, BLIP's
query tokens, Qwen's image pads, Idefics3's tiles without their row/column marker tokens); left padding moves
them per row; in a sliding-window layer whose KV cache keeps only the last keys (Gemma 3) the columns shift
with the window (image keys that left it are masked anyway); beam search rows (`B * num_beams`,
repeat-interleaved by `generate`) reuse their input row's.

Layers: `layers: null` (the default) guides the paper's relative depth of the model
(`proportional_layers`: 5..18 on the 32-block LLaVA-1.5-7B, exactly the paper's range; 6..23 on 13B;
1..2 on the 4-block tiny models). A NaN or negative alpha is an error.
`alpha: 0` with `reference_prefill_mask: false` reproduces the baseline bit for bit under eager attention
(the edit adds exact zeros); under another implementation it installs nothing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch

from harness.errors import ConfigValueError
from harness.registry import INTERVENTIONS
from interventions.attention_fn import active_implementation, edit_attention_logits
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import active_rows

AGGREGATIONS = ("mean", "topk")


def resolve_layers(layers: Any, inclusive: bool = True) -> list[int]:
    """Decoder-block indices from `[start, end]` (end inclusive unless told) or `[layer]`."""
    if isinstance(layers, int):
        layers = [layers]
    layers = [int(x) for x in (layers or [])]
    if len(layers) == 1:
        return layers
    if len(layers) != 2:
        raise ValueError(f"head_guide.layers={layers}: give [start, end] (a range) or [layer]")
    start, end = layers
    out = list(range(start, end + 1 if inclusive else end))
    if not out:
        raise ValueError(f"head_guide.layers={layers} (inclusive={inclusive}) selects no layer")
    return out


PAPER_RANGE = (5, 18)  # LLaVA-1.5-7B's 32 decoder blocks (chair_eval.py --guide-range 5,18, inclusive)
PAPER_DEPTH = 32


def proportional_layers(num_layers: int) -> list[int]:
    """[start, end] (inclusive) at the paper's relative depth: floor(5n/32 + 1/2) .. floor(18n/32 + 1/2).

    Equals the paper's 5..18 on LLaVA-1.5-7B (32 blocks); 6..23 on 13B (40), 1..2 on the 4-block tiny models.
    """
    start, end = (math.floor(x * num_layers / PAPER_DEPTH + 0.5) for x in PAPER_RANGE)
    return [min(start, num_layers - 1), min(max(end, start), num_layers - 1)]


def image_columns(image_mask: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """Boolean [rows, 1, 1, length]: True on each row's image-token keys (rows = prompt rows * beams).

    `image_mask` [n, P] marks the prompt's image positions (the family's, contiguous or not); keys beyond
    the prompt (generated tokens) are never image keys.
    """
    n, p = image_mask.shape
    if rows != n:
        if rows % n:
            raise ValueError(f"attention batch of {rows} rows does not match {n} prompt rows")
        image_mask = image_mask.repeat_interleave(rows // n, dim=0)
    if length > p:
        image_mask = torch.cat([image_mask, image_mask.new_zeros(rows, length - p)], dim=1)
    return image_mask[:, None, None, :length]


def guide_scores(scores: torch.Tensor, mask: torch.Tensor | None, image_cols: torch.Tensor, alpha: float,
                 aggregation: str = "mean", top_k: int | None = None) -> torch.Tensor:
    """The edited logits: the last query row gets alpha * head-aggregated |logits| on the image columns."""
    last = scores[:, :, -1:, :]
    absl = last.abs()
    if aggregation == "mean":
        agg = absl.mean(dim=1, keepdim=True)  # [B, 1, 1, K]
    elif aggregation == "topk":
        logits = last + mask[:, :, -1:, :] if mask is not None else last
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        mass = (probs * image_cols).sum(dim=-1)[:, :, 0]  # [B, H]: attention mass on the image
        idx = torch.topk(mass, k=int(top_k), dim=-1).indices  # [B, k]
        picked = torch.gather(absl, 1, idx[:, :, None, None].expand(-1, -1, 1, absl.shape[-1]))
        agg = picked.mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"head_guide.aggregation={aggregation!r}; valid choices: {', '.join(AGGREGATIONS)}")
    edited = scores.clone()
    edited[:, :, -1:, :] += (agg * alpha) * image_cols
    return edited


def image_column_fn(adapter: Any, prompt_ids: torch.Tensor):
    """`columns(module, scores)` -> boolean [rows, 1, 1, keys] image-key mask for one attention call's scores.

    Rows are the batch's prompt rows (or their beams); inside a decoding engine (`active_rows()`), every view's
    rows with their own image positions (a text-only view has none). The mask grows by one column per
    decoding step, so it is built with spare room and sliced. Keys are absolute positions 0..T-1, except in a
    sliding-window layer whose cache keeps only the last keys (Gemma 3, Mistral): there key j is position
    j + T - K, so the columns shift with the window. T is counted per module (the query length at prefill, one
    more per decoding step).
    """
    prompt_mask = adapter.image_token_mask(prompt_ids)
    stacked: dict = {}
    masks: dict = {}

    def row_mask(rows: int) -> torch.Tensor:
        layout = active_rows()
        if layout is None or rows != layout["input_ids"].shape[0]:
            return prompt_mask
        key = id(layout)
        if key not in stacked:
            stacked.clear()
            stacked[key] = adapter.image_token_mask(layout["input_ids"])
        return stacked[key]

    def absolute(rows: int, length: int, device: torch.device) -> torch.Tensor:
        pm = row_mask(rows)
        key = (rows, id(pm))
        cached = masks.get(key)
        if cached is None or cached.shape[-1] < length:
            if len(masks) > 8:
                masks.clear()
            cached = masks[key] = image_columns(pm.to(device), rows, length + 256)
        return cached[..., :length]

    lengths: dict = {}

    def columns(module: torch.nn.Module, scores: torch.Tensor) -> torch.Tensor:
        q, k = scores.shape[2], scores.shape[-1]
        total = lengths[id(module)] = q if q > 1 or id(module) not in lengths else lengths[id(module)] + 1
        offset = max(total - k, 0)
        return absolute(scores.shape[0], offset + k, scores.device)[..., offset:]

    return columns


@INTERVENTIONS.register("head_guide")
class HeadGuide(Intervention):
    """Heads-guided attention on the image tokens in the middle layers (Jiang et al., 2024)."""

    name = "head_guide"
    strength_key = "alpha"

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)  # configs/intervention/head_guide.yaml's values under cfg, typed and range-checked
        c = self.cfg
        if c["layers"] is not None:
            resolve_layers(c["layers"], c["layers_inclusive"])  # reject a malformed range now
        if c["aggregation"] == "topk" and not c["top_k"]:
            raise ConfigValueError("intervention.top_k: aggregation=topk needs top_k >= 1 (heads to average)")

    def model_defaults(self, model: Any) -> dict:
        """`layers: null` -> the paper's relative depth in this model (`proportional_layers`), inclusive;
        a family may set its own (`ModelFamily.intervention_defaults("head_guide", ...)`)."""
        own = model.spec.intervention_defaults("head_guide", model)
        if "layers" in own:
            return own
        return {"layers": proportional_layers(model.num_layers), "layers_inclusive": True}

    def resolve(self, model: Any) -> None:
        """Fill `layers` for this model (a null range only) and keep the inclusive flag consistent."""
        if self.cfg.get("layers") is None:
            defaults = self.model_defaults(model)
            self.cfg.update(defaults)
        self.resolved_for = model

    @property
    def layer_ids(self) -> list[int]:
        """The guided decoder blocks (after `resolve` when `layers` was null)."""
        if self.cfg.get("layers") is None:
            raise RuntimeError("head_guide.layers is null: resolve() against the model first")
        return resolve_layers(self.cfg["layers"], self.cfg["layers_inclusive"])

    def check_layers(self, adapter: Any) -> None:
        """ValueError unless every guided layer exists in the model's decoder stack."""
        n = adapter.num_layers
        bad = [i for i in self.layer_ids if not 0 <= i < n]
        if bad:
            rng = "inclusive" if self.cfg["layers_inclusive"] else "end-exclusive"
            raise ValueError(
                f"head_guide.layers={self.cfg['layers']} ({rng}) selects layers "
                f"{self.layer_ids[0]}..{self.layer_ids[-1]}, "
                f"but {adapter.name!r} has {n} decoder layers (valid indices 0..{n - 1}); "
                f"set intervention.layers=[start,end] within that range")

    def attention_modules(self, adapter: Any) -> list[torch.nn.Module]:
        """The attention modules of the guided layers."""
        if self.cfg.get("layers") is None:
            self.resolve(adapter.info)
        self.check_layers(adapter)
        layers = adapter.decoder_layers()
        path = adapter.site_path("attention")
        return [layers[i].get_submodule(path) for i in self.layer_ids]

    def setup(self, adapter: Any) -> None:
        """Check the layer range and the attention site once the model is loaded."""
        mods = self.attention_modules(adapter)
        heads = getattr(mods[0].config, "num_attention_heads", None)
        if self.cfg["aggregation"] == "topk" and heads and self.cfg["top_k"] > heads:
            raise ValueError(f"head_guide.top_k={self.cfg['top_k']} exceeds the {heads} attention heads")

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Guide the chosen layers' attention for this batch's generation."""
        mods = self.attention_modules(adapter)
        c = self.cfg
        if c["alpha"] == 0 and not c["reference_prefill_mask"] and active_implementation(mods[0]) != "eager":
            yield GenerationPlan()  # nothing to add; eager is bit-exact anyway, others could drift
            return
        alpha, agg, top_k, ref_mask = c["alpha"], c["aggregation"], c["top_k"], c["reference_prefill_mask"]
        columns = image_column_fn(adapter, batch.inputs["input_ids"])

        def edit(module, scores, mask):
            scores = guide_scores(scores, mask, columns(module, scores), alpha, agg, top_k)
            if ref_mask and mask is not None and scores.shape[2] > 1:
                mask = mask[:, :, -1:, :].expand(mask.shape)  # no causal mask at prefill, keep key padding
            return scores, mask

        with edit_attention_logits(mods, edit=edit):
            yield GenerationPlan()
