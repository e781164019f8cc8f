"""`pai`: PAI, "Paying More Attention to Image" (Liu et al., ECCV 2024, arXiv:2407.21771).

Two parts, each with its own strength:

1. Image-attention amplification (`alpha`): in the decoder blocks `start_layer .. end_layer - 1`, before
   the softmax, the attention logits of the LAST query row towards the image tokens are raised, per head, by
   alpha times their own absolute value:

       s[b, h, -1, j] = |s[b, h, -1, j]| * alpha + s[b, h, -1, j]      for j in the image span of row b

2. Classifier-free-guidance logits refinement (`gamma`) against the same prompt without the image, in
   log-probabilities, with the plausibility cut on the conditional distribution:

       lp = log_softmax(logits), lu = log_softmax(logits_without_image)
       s  = gamma * (lp - lu) + lu        = (1 + (gamma-1)) lp - (gamma-1) lu
       s[lp < log(beta) + max lp] = -inf

Reference behaviour (github.com/LALBJ/PAI):
- `attention.py` `llama_new_forward`: the "PAI's modification" block edits `attn_weights[:, :, -1,
  img_start_idx:img_end_idx] = attn_weights[...].abs() * self.alpha + attn_weights[...]` after the mask was
  added (0 on the image span of the last row) and before the fp32 softmax, in the model dtype; every head
  on its own (no head mean, unlike head_guide). Applied at every forward of the conditional model, so at
  prefill (last prompt token) and at each decoding step (with the KV cache, so every generated token's cached
  keys/values come from the forward where it was the amplified last row); `llama_modify(model, start_layer, end_layer, ...)`
  patches `range(start_layer, end_layer)` (end exclusive); README / `chair_eval.py` / `pope_eval.py`:
  `--start-layer 2 --end-layer 32` on LLaVA-1.5-7B, i.e. every block but the first two. Here `end_layer: null`
  = the model's number of blocks. The image columns are each row's image positions as the family defines
  them (`adapter.image_token_mask`), per row (the reference uses one fixed span for the whole batch).
- `CFG.py` `CFGLogits`: a logits processor: `scores = log_softmax(scores)`; `if guidance_scale == 1: return
  scores`; the unconditional model runs on `neg_promt` with its own KV cache (the amplification switched
  off by `use_cfg = True` meanwhile); `cutoff = log(0.1) + scores.max()` (0.1 hard-coded: `beta` here),
  `out = guidance_scale * (scores - uncond) + uncond`, masked below the cutoff. Here: the contrastive engine
  (`interventions.contrastive`, one batch of 2B rows, one cache) with this formula as its `combine`.
- `model_loader.py` `init_cfg_processor`: the unconditional prompt is `bos + text before <ImageHere> + text
  after` (the template and question with the image removed): `no_image_view` (image positions removed).
- Quirk (`reference_cfg_prefill`): `llama_modify` sets `use_cfg = args.use_cfg` on the patched layers and
  `CFGLogits` resets it to False only after its first call, so with `--use-cfg` the conditional PREFILL (the
  first generated token) is not amplified; later steps are. `reference_cfg_prefill: true` reproduces this
  (only when gamma != 1); false (default) amplifies every step.
- Decoding: CFGLogits is a custom logits processor, so HF's own processors (repetition penalty) ran before
  it and warpers after; here the guidance comes first, then the decoding processors, then warpers (the
  engine's order; identical when no repetition penalty / min_new_tokens is set, as in PAI's scripts).
- Defaults: README commands `--alpha 0.2 --gamma 1.1 --start-layer 2 --end-layer 32` (argparse defaults:
  alpha 0.2, gamma 2). gamma == 1 skips the guidance (plain `generate`, beam search allowed, as the
  reference without `--use-cfg`); gamma != 1 needs greedy or sampling (the engine has no beam search).

`alpha: 0, gamma: 1` reproduces the baseline exactly (nothing is installed). Works on every family whose
language model dispatches attention through `AttentionInterface`; a layer range outside the model raises.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch

from harness.registry import INTERVENTIONS
from interventions.attention_fn import edit_attention_logits
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import batch_view, contrastive_generate, no_image_view
from interventions.head_guide import image_column_fn


def amplify_scores(scores: torch.Tensor, image_cols: torch.Tensor, alpha: float) -> torch.Tensor:
    """The last query row's logits on the image columns become |s| * alpha + s (per head); the rest unchanged."""
    edited = scores.clone()
    last = scores[:, :, -1:, :]
    edited[:, :, -1:, :] = (last.abs() * alpha) * image_cols + last
    return edited


def cfg_scores(lo: torch.Tensor, lc: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """PAI's guidance: gamma * (lp - lu) + lu on log-probabilities, -inf where lp < log(beta) + max lp;
    gamma == 1 returns log_softmax(lo) (the reference returns the conditional log-probabilities)."""
    lp = torch.log_softmax(lo, dim=-1)
    if gamma == 1:
        return lp
    lu = torch.log_softmax(lc, dim=-1)
    cutoff = torch.log(torch.tensor(float(beta), dtype=lp.dtype, device=lp.device)) + lp.max(-1, keepdim=True).values
    out = gamma * (lp - lu) + lu
    return out.masked_fill(lp < cutoff, -float("inf"))


def layer_range(name: str, start: int, end: int | None, num_layers: int) -> list[int]:
    """Blocks `start .. end-1` (end None: the last block); a ValueError names the valid range."""
    end = num_layers if end is None else int(end)
    if not 0 <= start < end <= num_layers:
        raise ValueError(f"{name}.start_layer={start}, end_layer={end}: need 0 <= start_layer < end_layer <= "
                         f"{num_layers} (the model's decoder blocks, end exclusive)")
    return list(range(start, end))


@INTERVENTIONS.register("pai")
class Pai(Intervention):
    """Image-attention amplification plus no-image classifier-free guidance (see the module docstring)."""

    name = "pai"
    strength_key = "alpha"

    def model_defaults(self, model: Any) -> dict:
        """`end_layer: null` -> the model's number of decoder blocks (the reference's 32 on LLaVA-1.5-7B)."""
        return {"end_layer": int(model.num_layers)}

    def layers(self, adapter: Any) -> list[int]:
        """The amplified blocks in this model."""
        return layer_range(self.name, int(self.cfg["start_layer"]), self.cfg["end_layer"], adapter.num_layers)

    def setup(self, adapter: Any) -> None:
        """Check the layer range and the attention site."""
        self.attention_modules(adapter)

    def attention_modules(self, adapter: Any) -> list[torch.nn.Module]:
        """The attention modules of the amplified blocks."""
        blocks = adapter.decoder_layers()
        path = adapter.site_path("attention")
        return [blocks[i].get_submodule(path) for i in self.layers(adapter)]

    def amplification(self, adapter: Any, batch: Any):
        """The context that amplifies image attention for this batch (a no-op context when alpha == 0)."""
        c = self.cfg
        alpha = float(c["alpha"])
        if alpha == 0:
            return nullcontext()
        columns = image_column_fn(adapter, batch.inputs["input_ids"])
        skip_prefill = bool(c["reference_cfg_prefill"]) and float(c["gamma"]) != 1

        def edit(module, scores, mask):
            cols = columns(module, scores)  # also counts the positions seen (sliding-window layers)
            if skip_prefill and scores.shape[2] > 1:
                return scores, mask
            return amplify_scores(scores, cols, alpha), mask

        return edit_attention_logits(self.attention_modules(adapter), edit=edit)

    def generate_fn(self, adapter: Any):
        """The contrastive engine with the no-image view and PAI's guidance."""
        gamma, beta = float(self.cfg["gamma"]), float(self.cfg["beta"])

        def generate(batch: Any, decoding: dict, logits_processors: Sequence | None = None, **kw: Any):
            ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
            with torch.inference_mode():
                views = [batch_view(adapter, batch.inputs), no_image_view(adapter, ids, mask)]
            return contrastive_generate(adapter, ids, views, decoding, logits_processors, alpha=0.0, beta=beta,
                                        combine=lambda lo, lc, step: cfg_scores(lo, lc, gamma, beta), **kw)

        return generate

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Amplify the chosen layers' image attention; with gamma != 1 decode with the guidance engine."""
        with self.amplification(adapter, batch):
            if float(self.cfg["gamma"]) == 1:
                yield GenerationPlan()
            else:
                yield GenerationPlan(generate_fn=self.generate_fn(adapter))
