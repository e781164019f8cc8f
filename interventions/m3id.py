"""`m3id`: M3ID, Multi-Modal Mutual-Information Decoding (Favero et al., CVPR 2024, arXiv:2403.14003).

There is no official code; this follows the paper's decoding rule. At generation step t the model scores the
next token with the image (conditioned, `l_c`) and without it (unconditioned, `l_u`, the same prompt with the
image removed: `no_image_view`), both as log-probabilities, and boosts the tokens whose probability the image
raises (the pointwise mutual information `l_c - l_u` between token and image), more and more as the answer
grows and the model "forgets" the image:

    gamma_t = exp(-lam * t)
    s_t     = l_c + ((1 - gamma_t) / gamma_t) * (l_c - l_u)

t counts the generated tokens from `t_start` (the first new token has t = t_start; default 1, so the first
token is already corrected by (e^lam - 1); `t_start: 0` leaves the first token uncorrected). `lam` (lambda)
sets how fast the correction grows; `lam: 0` gives gamma_t = 1, weight 0: the baseline exactly (the raw logits
go on to the processors unchanged). The scores then pass through the decoding config's processors and warpers
(greedy: argmax; sampling: softmax of s_t), as in the contrastive engine (`interventions.contrastive`, one
batch of 2B rows, one KV cache).

Not reproduced: the paper's M3ID+ (DPO fine-tuning) and any per-token confidence gating of public
reimplementations; there is no reference code to take quirks from. Greedy and sampling only (no beam search).
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


def m3id_scores(lo: torch.Tensor, lu_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """l_c + weight * (l_c - l_u) on log-probabilities; weight 0 returns the raw conditioned logits."""
    if weight == 0:
        return lo.clone()
    lc = torch.log_softmax(lo, dim=-1)
    lu = torch.log_softmax(lu_logits, dim=-1)
    return lc + weight * (lc - lu)


@INTERVENTIONS.register("m3id")
class M3id(Intervention):
    """Mutual-information decoding against the no-image prompt with a time-decaying weight."""

    name = "m3id"
    strength_key = "lam"

    def generate_fn(self, adapter: Any):
        """The contrastive engine with the no-image view and M3ID's per-step rule."""
        lam, t0 = float(self.cfg["lam"]), int(self.cfg["t_start"])

        def combine(lo, lu, step):
            return m3id_scores(lo, lu, m3id_weight(lam, t0 + step))

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
