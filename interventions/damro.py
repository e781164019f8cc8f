"""`damro`: DAMRO (Gong et al., EMNLP 2024, arXiv:2410.04514), contrastive decoding against the vision
encoder's high-attention "outlier" patches.

The contrastive view is the same prompt whose image is represented only by the top-k patches the vision
encoder's CLS token attends to most (`interventions.vision_attention`); decoding contrasts the two views with
`interventions.contrastive` ((1+alpha)*logits - alpha*logits_cd with the beta plausibility cut).

Reference behaviour (github.com/coder-gx/DAMRO, modified transformers 4.43 + `sample_method/sample.py`):
- LLaVA-1.5 (`transformers-4.43.0/.../llava/modeling_llava.py`, `damro_topk` branch): hooks on the q_proj /
  k_proj of `vision_tower...encoder.layers[vision_feature_layer]` (-2: the layer whose output the projector
  reads), CLS attention = one softmax over the full projection (`q @ k^T * C**-0.5`, C = 1024), top-k of
  `attn[:, 0, 1:]` (sorted, highest first), `torch.gather` of those patch features (CLS already dropped by the
  "default" strategy, so indices line up) -> projector -> merged in place of the <image> token: the
  contrastive prompt has k image tokens, in descending-attention order, at consecutive positions.
- LLaVA-NeXT (`.../llava_next/modeling_llava_next.py`): the same top-k per crop, then
  `pack_image_features_damro` keeps only the first crop of each image (the base, resized full image) and
  appends one `image_newline`: k + 1 image tokens, no AnyRes grid.
- InstructBLIP (`.../instructblip/modeling_instructblip.py` `generate`): a hook on
  `vision_model.encoder.layers[-2].self_attn.qkv`, per-head `softmax(q @ k^T * d**-0.5)`, mean over heads,
  top-k of `attn[:, 0, 1:]`, then `torch.gather(image_embeds, 1, idx)` where `image_embeds` (the vision
  output) still holds CLS at position 0 - the indices are off by one (index j picks patch j-1, index 0 the
  CLS token). `reference_cls_offset: true` reproduces that gather; false (default) gathers patch j (j + 1).
  The Q-Former is re-run on the kept embeddings (with the instruction) -> the same number of query tokens.
  BLIP-2 (not in the paper) is handled like InstructBLIP without the instruction.
- `sample.py` `_sample`: the contrastive view has its own KV cache; `cutoff = log(beta) + max(logits)`,
  `diffs = (1+alpha)*logits - alpha*logits_cd`, masked to -inf below the cutoff, all on raw logits; then
  "direct sample": logits processors and warpers are bypassed (`next_token_scores = next_token_logits`),
  softmax + multinomial (its scripts always sample). `reference_sampling: true` reproduces that; false
  (default) applies the decoding config's processors and temperature/top-k/top-p after the contrast.
- Per-model settings (`scrpits/run_generation.sh`, README): LLaVA-1.5 and LLaVA-NeXT alpha 2, topk 10;
  InstructBLIP alpha 0.5 (POPE) / 1.5 (CHAIR), topk 4; beta 0.1 everywhere. `alpha: null` / `topk: null`
  take these family defaults (InstructBLIP: the POPE alpha).

`alpha: 0` reproduces the baseline exactly (the engine then neither contrasts nor cuts).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import (ContrastiveIntervention, View, check_family, image_features,
                                       qformer_features, shrink_image_tokens, view_from_features, vision_inputs)
from interventions.vision_attention import (blip_cls_attention, capture, clip_cls_attention, encoder_layer_index,
                                            topk_patches)

# DAMRO scrpits/run_generation.sh + README: (alpha, topk) per family; beta is 0.1 for all.
FAMILY_DEFAULTS = {
    "llava": {"alpha": 2.0, "topk": 10},
    "llava_next": {"alpha": 2.0, "topk": 10},
    "instructblip": {"alpha": 0.5, "topk": 4},
    "blip2": {"alpha": 0.5, "topk": 4},  # not in the paper: InstructBLIP's setting (same vision encoder)
}
BLIP_ATTENTION_LAYER = -2  # an encoder block index: modeling_instructblip.py self.vision_model.encoder.layers[-2]


def _clip_attention_paths(adapter: Any) -> dict:
    cfg = adapter.model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise NotImplementedError("damro needs a single vision_feature_layer (this model concatenates several)")
    if cfg.vision_feature_select_strategy != "default":
        raise NotImplementedError("damro supports vision_feature_select_strategy='default' (CLS dropped) only")
    n = len(adapter.site("vision_layers"))
    layer = f"{adapter.site_path('vision_layers')}.{encoder_layer_index(cfg.vision_feature_layer, n)}.self_attn"
    return {"q": f"{layer}.q_proj", "k": f"{layer}.k_proj"}


def llava_topk(adapter: Any, vis: dict, topk: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """LLaVA-1.5: (original per-image features, top-k patch indices [B, k]) from one vision pass."""
    with capture(adapter.model, _clip_attention_paths(adapter)) as st:
        feats, _ = image_features(adapter, vis)
    return feats, topk_patches(clip_cls_attention(st["q"], st["k"]), topk)


def llava_next_topk(adapter: Any, vis: dict, topk: int):
    """LLaVA-NeXT: (packed features, per-image top-k indices of the base crop, base-crop projected features)."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    m = adapter.model
    paths = {**_clip_attention_paths(adapter), "proj": adapter.site_path("projector")}
    with capture(m, paths) as st:
        feats, _ = image_features(adapter, vis)
    crops = [image_size_to_num_patches(image_size=s, grid_pinpoints=m.config.image_grid_pinpoints,
                                       patch_size=m.config.vision_config.image_size) for s in vis["image_sizes"]]
    base = torch.tensor([0] + crops[:-1], device=st["q"].device).cumsum(0)  # first crop of each image
    idx = topk_patches(clip_cls_attention(st["q"][base], st["k"][base]), topk)
    return feats, idx, st["proj"][base]


def blip_topk(adapter: Any, vis: dict, topk: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """InstructBLIP / BLIP-2: (original features, top-k indices [B, k], vision embeddings [B, T, C])."""
    layers = adapter.site("vision_layers")
    idx_layer = BLIP_ATTENTION_LAYER % len(layers)
    attn = layers[idx_layer].self_attn
    path = f"{adapter.site_path('vision_layers')}.{idx_layer}.self_attn.qkv"
    with capture(adapter.model, {"qkv": path}) as st:
        feats, out = image_features(adapter, vis)
    idx = topk_patches(blip_cls_attention(st["qkv"], attn.num_heads), topk)
    return feats, idx, out.last_hidden_state


@INTERVENTIONS.register("damro")
class Damro(ContrastiveIntervention, Intervention):
    """DAMRO contrastive decoding against the top-k CLS-attention patches (see the module docstring)."""

    name = "damro"
    strength_key = "alpha"

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        for key in ("alpha", "topk"):
            if self.cfg.get(key) is not None and float(self.cfg[key]) < 0:
                raise ValueError(f"damro {key} must be >= 0, got {self.cfg[key]}")

    def resolved(self, adapter: Any) -> dict:
        """alpha / topk from the config, else the family's paper default; beta, flags."""
        check_family(adapter, "damro")
        fam = FAMILY_DEFAULTS[adapter.family]
        alpha = self.cfg.get("alpha")
        topk = self.cfg.get("topk")
        return {"alpha": float(fam["alpha"] if alpha is None else alpha),
                "topk": int(fam["topk"] if topk is None else topk),
                "beta": float(self.cfg.get("beta", 0.1)),
                "reference_sampling": bool(self.cfg.get("reference_sampling", False)),
                "reference_cls_offset": bool(self.cfg.get("reference_cls_offset", False))}

    def setup(self, adapter: Any) -> None:
        """Check the family and the attention sites once."""
        self.resolved(adapter)
        if adapter.family in ("llava", "llava_next"):
            _clip_attention_paths(adapter)

    def views(self, adapter: Any, batch: Any) -> list[View]:
        """(original, top-k) views: LLaVA-1.5 / NeXT shorten the image span, BLIP re-runs the Q-Former."""
        p = self.resolved(adapter)
        inputs = batch.inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        vis = vision_inputs(inputs)
        k = p["topk"]
        if adapter.family == "llava":
            feats, idx = llava_topk(adapter, vis, k)
            kept = [f[i] for f, i in zip(feats, idx)]
        elif adapter.family == "llava_next":
            feats, idx, base = llava_next_topk(adapter, vis, k)
            newline = adapter.model.model.image_newline
            kept = [torch.cat([b[i], newline[None].to(b.dtype)]) for b, i in zip(base, idx)]
        else:
            feats, idx, embeds = blip_topk(adapter, vis, k)
            gather = idx if p["reference_cls_offset"] else idx + 1
            kept_embeds = embeds.gather(1, gather.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
            cd_feats = qformer_features(adapter, kept_embeds, vis)
            return [view_from_features(adapter, ids, mask, feats),
                    view_from_features(adapter, ids, mask, list(cd_feats))]
        cd_ids, cd_mask = shrink_image_tokens(adapter, ids, mask, [t.shape[0] for t in kept])
        return [view_from_features(adapter, ids, mask, feats), view_from_features(adapter, cd_ids, cd_mask, kept)]

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the contrastive engine with the top-k view."""
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
