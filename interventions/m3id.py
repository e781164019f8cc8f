"""`m3id`: M3ID, Multi-Modal Mutual-Information Decoding (Favero et al., CVPR 2024, arXiv:2403.14003).

There is no official code. At generation step t the model scores the next token with the image (conditioned,
`l_c`) and without it (unconditioned, `l_u`: the same prompt with the image removed, `no_image_view`), both
as log-probabilities, and boosts the tokens whose probability the image raises (the pointwise mutual
information `l_c - l_u` between token and image), more and more as the answer grows and the model
"forgets" the image:

    gamma_t = exp(-lam * t)
    s_t     = l_c + ((1 - gamma_t) / gamma_t) * (l_c - l_u)

Cross-checked against the public reimplementation in sangminwoo/AvisC (`avisc_utils/avisc_sample.py`,
`use_m3id`), whose choices are the defaults here, each an explicit option:

* `lam: 0.02` and `t_start: 0`: AvisC's `lamda = 0.02`, with t counting from 0 at the first generated token
  (weight 0 there: the first token is not corrected; `t_start: 1` corrects it by e^lam - 1).
* `beta: 0.1`: AvisC masks tokens whose raw conditioned logit is below log(beta) + the maximum logit (VCD's
  adaptive plausibility constraint, its `cd_beta` default) with -inf, after the correction; `null` = no cut.
* `confidence_gate: null`: the paper's equation as quoted in AvisC issue #9 corrects a row only at steps
  where the conditioned model is uncertain, max_k l_c[k] < log(alpha), and uses l_c unchanged otherwise;
  AvisC (and our default) always corrects. `confidence_gate: alpha` turns the paper's gate on; the paper's
  value of alpha was not available to us.

`lam: 0` is "off": gamma_t = 1 at every step and the RAW logits go on to the processors unchanged (no
log-softmax, no cut), so it equals the baseline exactly, sampling included. With lam > 0 the cut applies at
every step, t = 0 too (as in AvisC). The scores then pass through the decoding config's processors and
warpers (greedy: argmax; sampling: softmax of s_t), as in the contrastive engine (`interventions.contrastive`,
one batch of 2B rows, one KV cache). Not reproduced: M3ID+ (DPO fine-tuning). Greedy and sampling only.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import batch_view, contrastive_generate, no_image_view


def m3id_weight(lam: float, t: int) -> float:
    """(1 - gamma_t) / gamma_t with gamma_t = exp(-lam * t), i.e. exp(lam * t) - 1."""
    gamma_t = math.exp(-float(lam) * int(t))
    return (1.0 - gamma_t) / gamma_t


def m3id_scores(lo: torch.Tensor, lu_logits: torch.Tensor, weight: float, beta: float | None = None,
                confidence_gate: float | None = None) -> torch.Tensor:
    """l_c + weight * (l_c - l_u) on log-probabilities, the correction kept only in rows whose max l_c is below
    log(confidence_gate) (when given), then -inf where the raw logit lo < log(beta) + max(lo) (when given)."""
    lc = torch.log_softmax(lo, dim=-1)
    correction = weight * (lc - torch.log_softmax(lu_logits, dim=-1))
    if confidence_gate is not None:
        uncertain = lc.max(dim=-1, keepdim=True).values < math.log(float(confidence_gate))
        correction = torch.where(uncertain, correction, torch.zeros_like(correction))
    scores = lc + correction
    if beta is not None:
        cutoff = math.log(float(beta)) + lo.max(dim=-1, keepdim=True).values
        scores = scores.masked_fill(lo < cutoff, -float("inf"))
    return scores


@INTERVENTIONS.register("m3id")
class M3id(Intervention):
    """Mutual-information decoding against the no-image prompt with a time-decaying weight."""

    name = "m3id"
    strength_key = "lam"

    def generate_fn(self, adapter: Any):
        """The contrastive engine with the no-image view and M3ID's per-step rule."""
        lam, t0 = float(self.cfg["lam"]), int(self.cfg["t_start"])
        beta, gate = self.cfg.get("beta"), self.cfg.get("confidence_gate")

        def combine(lo, lu, step):
            if lam == 0:
                return lo.clone()
            return m3id_scores(lo, lu, m3id_weight(lam, t0 + step), beta, gate)

        def generate(batch: Any, decoding: dict, logits_processors: Sequence | None = None, **kw: Any):
            ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
            with torch.inference_mode():
                views = [batch_view(adapter, batch.inputs), no_image_view(adapter, ids, mask)]
            return contrastive_generate(adapter, ids, views, decoding, logits_processors, alpha=0.0, beta=0.0,
                                        combine=combine, **kw)

        return generate

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the M3ID engine."""
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
