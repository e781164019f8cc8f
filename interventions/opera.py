"""`opera`: OPERA (Huang et al., CVPR 2024, arXiv:2311.17911): beam search with an over-trust logit penalty and
retrospection-allocation rollback, on unmodified transformers.

Reference: github.com/shikiw/OPERA, `transformers-4.29.2/src/transformers/generation/utils.py`
`opera_beam_search` (called from `generate(..., opera_decoding=True)`), README settings. Per beam step:

1. the beams' next-token logits; the top `num_attn_candidates` (C) raw logits of each beam are its candidates;
2. each candidate is fed once (here: ONE forward of C query tokens per beam, each candidate masked from the
   others, every layer eager for that pass) and the last decoder layer's attention row of it is read (max
   over heads, normalized by its row sum; `interventions.opera_math`);
3. the penalty: for the first `image_penalty_steps` response tokens minus the candidate's attention to the
   image tokens, afterwards the largest column score of the local window (`column_scores`: the scaled
   attention a column receives, multiplied down the column); `candidate logit -= penalty_weights * penalty`;
4. `reference_candidate_softmax` (reference): every non-candidate logit is set to -999 before the
   log-softmax, so the beam scores are renormalized over the candidates; false keeps the full vocabulary
   (with `penalty_weights: 0` and `rollback: false` that is plain beam search, exactly);
5. retrospection (`rollback`, per item): each beam's location (mode over its candidates of the
   column that scored highest) is recorded per step; when every beam's history holds the item's location
   (mode over beams) more than `threshold` times and the location is >= `rollback_min_location`, decoding
   returns to the step after that token (`rollback_max_per_position` times per position, then one position
   earlier, as the reference), the beams chosen there are forbidden and the step is redone on the full
   vocabulary without penalty. At most `window_size` steps back.

Beam bookkeeping is transformers 5's own (`interventions.beam.BeamState`): lengths are normalized as
`generate` does (over the generated tokens), or with `reference_length_normalization` as the reference's
transformers 4.29 `BeamSearchScorer` (over the whole sequence, prompt included, each run of image tokens counted
as ONE token: OPERA's LLaVA wrapper hands `generate` one placeholder id per image). Checked against the reference
run on the tiny LLaVA (tests/test_opera_reference.py: same tokens, rollbacks and best-hypothesis scores).

The loop (`interventions.opera_engine`) prefills the prompts once, repeats the cache per beam and keeps the
candidate pass's KV of each chosen candidate, so a step costs one forward of C tokens per beam (a plain
one-token step is added only when a chosen token was no candidate, e.g. the -999 fillers of the candidate
softmax, and after a rollback). The batch runs as one: an item that rolls back splits off into its own
group, its undone tokens become holes of the shared cache (masked) and its restored beams' tokens are
recomputed from the prompt; the other items' rows go on untouched (batch 4 = batch 1, tested).

Reference quirks kept as options: float16 column scores (`reference_float16_scores`), the candidate softmax,
the 10-token image bonus (`image_penalty_steps`), the minimum rollback location, the per-position cap equal
to C. Deviations: the rollback decision is per item (the reference takes modes over the whole batch; it ran
batch 1); the window is the last `window_size` response columns (the reference scores all, the same below
512 tokens); the reference's clearing of rejected tokens at the END of its 512-slot list (never reached
below ~500 tokens) is not reproduced. Attention edits of composed interventions would see the candidate pass
as C query rows per beam, so composing with one that edits attention logits (head_guide) raises
NotImplementedError; logits processors of other interventions apply to the beam scores. Families whose KV
cache is not transformers' `DynamicLayer` (sliding-window layers) raise a ValueError naming the family.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from harness.models.adapter import generation_kwargs
from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import _eos_ids, batch_view, build_processors
from interventions.opera_engine import Lane
from interventions.opera_reader import Reader, check_cache


def prefilled_lane(adapter: Any, batch: Any, decoding: dict, logits_processors: Sequence | None, params: dict,
                   **extra: Any) -> Lane:
    """The OPERA beam loop of a prepared batch, after one prefill of its prompts."""
    from harness.config import decoding_node

    d = decoding_node(decoding)
    kw = generation_kwargs(decoding, adapter.tokenizer)
    kw.update(extra)
    if d["strategy"] == "sample" or kw.get("do_sample"):
        raise NotImplementedError("opera is beam search: use decoding.strategy beam (or greedy = 1 beam), not sample")
    gc = adapter.spec.language_model(adapter).generation_config
    lp = kw.get("length_penalty", gc.length_penalty)
    beam_kw = {"num_beams": int(kw.get("num_beams") or 1), "max_new_tokens": int(kw["max_new_tokens"]),
               "eos_ids": _eos_ids(adapter, kw.get("eos_token_id")), "pad_id": int(kw["pad_token_id"]),
               "length_penalty": float(lp if lp is not None else 1.0),
               "early_stopping": gc.early_stopping if gc.early_stopping is not None else False}
    spec, reader = adapter.spec, Reader(adapter)
    reader.check_alone(adapter.family)
    view = batch_view(adapter, batch.inputs)
    ids, mask = view.input_ids, view.attention_mask
    procs = build_processors(kw, ids.shape[1], beam_kw["eos_ids"], logits_processors or [], False, False)
    pos = spec.position_ids(adapter, ids, mask, view.image_kwargs)
    out = spec.prefill(adapter, ids, mask, pos, view.encoding, view.image_kwargs)
    check_cache(adapter, out.cache)
    return Lane(adapter, params, reader, procs, beam_kw, out.cache, out.logits[:, -1].float(), mask, pos,
                adapter.image_token_mask(ids), ids)


def opera_generate(adapter: Any, batch: Any, decoding: dict, logits_processors: Sequence | None,
                   params: dict, trace: list | None = None, **extra: Any) -> torch.Tensor:
    """New token ids [B, new] (pad after the end) of OPERA beam search over a prepared batch; `trace` (a list)
    receives each item's rollbacks (dicts: step, position, restored step, rejected and chosen (beam, token))."""
    pad = int(generation_kwargs(decoding, adapter.tokenizer)["pad_token_id"])
    with torch.inference_mode():
        lane = prefilled_lane(adapter, batch, decoding, logits_processors, params, **extra)
        results = lane.run()
    if trace is not None:
        trace.extend(lane.rollbacks)
    width = max((x.shape[0] for x in results), default=0)
    return torch.stack([torch.cat([x, x.new_full((width - x.shape[0],), pad)]) for x in results])


@INTERVENTIONS.register("opera")
class Opera(Intervention):
    """OPERA beam search (see the module docstring)."""

    name = "opera"
    strength_key = "penalty_weights"

    def setup(self, adapter: Any) -> None:
        """Check the family exposes its decoder attention (the last layer is read)."""
        adapter.site_path("attention")

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the OPERA engine."""
        params = dict(self.cfg)

        def generate(b: Any, decoding: dict, logits_processors: Sequence | None = None, **kw: Any):
            return opera_generate(adapter, b, decoding, logits_processors, params, **kw)

        yield GenerationPlan(generate_fn=generate)
