"""`damro`: DAMRO (Gong et al., EMNLP 2024, arXiv:2410.04514), contrastive decoding against the vision
encoder's high-attention "outlier" patches.

The contrastive view is the same prompt whose image is represented only by the top-k patches the vision
encoder's CLS token attends to most; decoding contrasts the two views with `interventions.contrastive`
((1+alpha)*logits - alpha*logits_cd with the beta plausibility cut). The CLS-attention recipe and how kept
patches become language-model features are the model family's (`ModelFamily.cls_patch_attention`,
`topk_features`; recipes in `harness.models.vision_attention`). Families whose vision encoder has no CLS
token (Qwen's ViT, SigLIP in LLaVA-OneVision / Gemma 3 / Idefics3) refuse with the reason.

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
  take these family defaults (`ModelFamily.intervention_defaults("damro", ...)`; InstructBLIP: the POPE alpha).

`alpha: 0` reproduces the baseline exactly (the engine then neither contrasts nor cuts).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from harness.registry import INTERVENTIONS
from harness.models.vision_attention import topk_patches
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import ContrastiveIntervention, View, shrink_image_tokens


@INTERVENTIONS.register("damro")
class Damro(ContrastiveIntervention, Intervention):
    """DAMRO contrastive decoding against the top-k CLS-attention patches (see the module docstring)."""

    name = "damro"
    strength_key = "alpha"

    def model_defaults(self, model: Any) -> dict:
        """The family's paper values of alpha and topk; a family without a CLS-attention recipe refuses here,
        before any weights load."""
        model.spec.check_damro()
        return model.spec.intervention_defaults("damro", model)

    def resolved(self, adapter: Any) -> dict:
        """alpha / topk from the config, else the family's paper default; beta, flags."""
        self.resolve(adapter.info)
        return {"alpha": float(self.cfg["alpha"]), "topk": int(self.cfg["topk"]),
                "beta": float(self.cfg["beta"]),
                "reference_sampling": bool(self.cfg["reference_sampling"]),
                "reference_cls_offset": bool(self.cfg["reference_cls_offset"])}

    def setup(self, adapter: Any) -> None:
        """Check that the family has a CLS-attention recipe and resolve the parameters once."""
        self.resolved(adapter)

    def views(self, adapter: Any, batch: Any) -> list[View]:
        """(original, top-k) views: the family ranks patches by CLS attention and builds the kept features."""
        p = self.resolved(adapter)
        spec = adapter.spec
        inputs = batch.inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        vis = spec.vision_inputs(inputs)
        enc, cls_attn, extras = spec.cls_patch_attention(adapter, vis)
        idx = topk_patches(cls_attn, p["topk"])
        kept, shrinks = spec.topk_features(adapter, enc, extras, idx, vis, p["reference_cls_offset"])
        image_kwargs = spec.image_kwargs(inputs)
        original = View(ids, mask, enc, image_kwargs)
        if shrinks:
            ids, mask = shrink_image_tokens(adapter, ids, mask, [t.shape[0] for t in kept])
        return [original, View(ids, mask, spec.with_features(enc, kept), image_kwargs)]

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the contrastive engine with the top-k view."""
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
