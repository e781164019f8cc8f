"""One contrastive-decoding engine for every family: the original and a contrastive view decoded together.

Used by `damro`, `vcd`, `icd`, `m3id` and `pai` (its guidance) through `GenerationPlan.generate_fn`. An intervention supplies the two views of a
batch (`View`: left-padded prompt ids, their mask and the family's image encoding of the rows' images, see
`interventions.contrastive_views`); the engine then

1. stacks them into ONE batch of 2B rows (rows 0..B-1 original, B..2B-1 contrastive), left-padding the
   shorter view (DAMRO's contrastive view has fewer image tokens); position ids come from the model's family
   (`ModelFamily.position_ids`: each row's own `cumsum - 1` as `generate` computes them, or Qwen's M-RoPE
   positions over the image grid), so padding never shifts a row;
2. prefills both views in one forward of the model itself with the image encodings (`ModelFamily.prefill`:
   the model merges the features, builds its masks and deepstack inputs), keeps one KV cache whose rows are
   the two views, and advances every position axis by one per step;
3. per step combines the last-position logits of each row pair (raw float32 logits `lo`, `lc`), exactly as
   VCD `vcd_utils/vcd_sample.py` and DAMRO `sample_method/sample.py` do:

       cutoff = log(beta) + max(lo)                       # adaptive plausibility: p >= beta * max p
       s      = (1 + alpha) * lo - alpha * lc
       s[lo < cutoff] = -inf

   The cut is applied to the RAW logits of the original view (comparing logits with log(beta) + max logit
   is comparing probabilities with beta * max probability), the contrast to raw logits (not log-softmax;
   they differ by a per-row constant, which no warper cares about);
4. processes `s` (default): the decoding config's processors (repetition penalty, min_new_tokens), the
   processors other interventions contributed, then the sampling warpers (temperature, top-k, top-p) - the
   order of VCD's sample() (processors then warpers on the contrasted logits) and of HF `generate`.
   `reference_sampling=True` reproduces DAMRO's "direct sample": no decoding processors or warpers at all,
   softmax of `s` (processors contributed by other interventions still apply);
5. picks one token per pair (argmax, or multinomial when sampling) and appends it to both rows; a row that
   emitted EOS gets pad_token_id from then on; stops when every row is done or after max_new_tokens.

`alpha == 0` is the baseline: no contrast and no cut, so greedy AND sampling follow the original view's
distribution exactly (greedy output equals `adapter.generate_ids`; sampling consumes the same random numbers).
Beam search raises NotImplementedError.

Hooks other interventions install on the language model see the 2B rows (original and contrastive), in
that order (not repeat-interleaved like beams); while the engine runs, `active_rows()` describes them (the
stacked prompt ids, whose image tokens mark where each row's image features sit).

The view builders live in `interventions.contrastive_views` and are re-exported here.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, Sequence

import torch

from harness.models.adapter import generation_kwargs
from interventions.contrastive_views import (View, batch_view, encode, left_pad, no_image_view, shrink_image_tokens,
                                             stack_views, text_only_view, views_from_pixels)

__all__ = ["ContrastiveIntervention", "View", "active_rows", "batch_view", "build_processors", "contrast_logits",
           "contrastive_generate", "encode", "left_pad", "no_image_view", "shrink_image_tokens", "stack_views",
           "text_only_view", "views_from_pixels"]

_ACTIVE_ROWS: ContextVar = ContextVar("contrastive_rows", default=None)
_EXTRA_KEYS = {"max_new_tokens", "pad_token_id", "eos_token_id", "repetition_penalty", "min_new_tokens",
               "temperature", "top_p", "top_k", "do_sample", "num_beams", "length_penalty"}


def active_rows() -> dict | None:
    """While contrastive decoding runs: the layout of the model's batch rows, else None.

    {"num_views": V, "batch_size": B, "input_ids": [V*B, L] stacked prompt ids (left-padded with the pad id;
    -1 where a view has no ids), "attention_mask": [V*B, L] at prefill}. Row v*B + i is view v of item i.
    """
    return _ACTIVE_ROWS.get()


# ---- the contrast ---------------------------------------------------------------------------------------------
def contrast_logits(lo: torch.Tensor, lc: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(1+alpha)*lo - alpha*lc, -inf where lo < log(beta) + max(lo); alpha == 0 returns lo unchanged."""
    if alpha == 0:
        return lo.clone()
    diffs = (1 + alpha) * lo - alpha * lc
    if beta <= 0:
        return diffs
    log_beta = torch.log(torch.tensor(float(beta), dtype=lo.dtype, device=lo.device))
    cutoff = log_beta + lo.max(dim=-1, keepdim=True).values
    return diffs.masked_fill(lo < cutoff, -float("inf"))


def _eos_ids(adapter: Any, override: Any) -> list[int]:
    eos = override if override is not None else adapter.spec.language_model(adapter).generation_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def build_processors(kw: dict, prompt_len: int, eos: list[int], custom: Sequence, do_sample: bool,
                     reference_sampling: bool):
    """The logits-processor list, in `generate`'s order: decoding processors, custom ones, warpers."""
    from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                              RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    procs = LogitsProcessorList()
    if not reference_sampling:
        rp = kw.get("repetition_penalty")
        if rp is not None and float(rp) != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(penalty=float(rp)))
        mnt = kw.get("min_new_tokens")
        if mnt and eos:
            procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, int(mnt), eos))
    procs.extend(custom or [])
    if do_sample and not reference_sampling:
        t = kw.get("temperature")
        if t is not None and float(t) != 1.0:
            procs.append(TemperatureLogitsWarper(float(t)))
        k = kw.get("top_k")
        if k:
            procs.append(TopKLogitsWarper(top_k=int(k), min_tokens_to_keep=1))
        p = kw.get("top_p")
        if p is not None and float(p) < 1.0:
            procs.append(TopPLogitsWarper(top_p=float(p), min_tokens_to_keep=1))
    return procs


# ---- the engine -----------------------------------------------------------------------------------------------
def contrastive_generate(adapter: Any, input_ids: torch.Tensor, views: Sequence[View], decoding: dict,
                         logits_processors: Sequence | None = None, *, alpha: float, beta: float,
                         reference_sampling: bool = False, return_scores: bool = False,
                         combine: Callable | None = None,
                         **extra: Any) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """New token ids [B, new] (padded with pad_token_id after EOS) under contrastive decoding.

    `views` = (original, contrastive), each with B rows; `input_ids` are the original prompt ids (what
    logits processors see, followed by the generated tokens). `return_scores=True` also returns the
    per-step processed scores [B, V] of the rows (the distribution each token was chosen from).
    `combine(lo, lc, step) -> scores` replaces `contrast_logits(lo, lc, alpha, beta)` (float32 last-position
    logits of the original and contrastive rows, step 0 = the first new token): a method with its own formula
    (PAI's guidance in log-probabilities, M3ID's time-decaying weight); processors and warpers follow as usual.
    """
    if len(views) != 2:
        raise ValueError(f"contrastive decoding needs exactly 2 views (original, contrastive), got {len(views)}")
    unknown = set(extra) - _EXTRA_KEYS
    if unknown:
        raise ValueError(f"contrastive decoding does not support generate kwargs {sorted(unknown)}; "
                         f"supported: {sorted(_EXTRA_KEYS)}")
    from harness.config import decoding_node

    strategy = decoding_node(decoding)["strategy"]
    if strategy == "beam" or int(extra.get("num_beams") or 1) > 1:
        raise NotImplementedError("contrastive decoding (damro, vcd, pai, icd, m3id) supports decoding.strategy "
                                  "greedy and sample, "
                                  "not beam search")
    kw = generation_kwargs(decoding, adapter.tokenizer)
    kw.update(extra)
    do_sample = bool(kw.get("do_sample"))
    max_new = int(kw["max_new_tokens"])
    pad_id = int(kw["pad_token_id"])
    eos = _eos_ids(adapter, kw.get("eos_token_id"))
    b = input_ids.shape[0]
    for v in views:
        if v.input_ids.shape[0] != b:
            raise ValueError(f"every view needs {b} rows, got {v.input_ids.shape[0]}")
    procs = build_processors(kw, input_ids.shape[1], eos, logits_processors or [], do_sample, reference_sampling)

    with torch.inference_mode():
        stacked = stack_views(adapter, views, pad_id)
        token = _ACTIVE_ROWS.set({"num_views": len(views), "batch_size": b, "input_ids": stacked.input_ids,
                                  "attention_mask": stacked.attention_mask})
        try:
            if combine is None:
                def combine(lo, lc, step):
                    return contrast_logits(lo, lc, float(alpha), float(beta))
            ids, scores_out = _decode(adapter, input_ids, stacked, procs, combine, do_sample, max_new,
                                      pad_id, eos, len(views), return_scores)
        finally:
            _ACTIVE_ROWS.reset(token)
    return (ids, scores_out) if return_scores else ids


def _decode(adapter, input_ids, stacked, procs, combine, do_sample, max_new, pad_id, eos, n_views,
            return_scores):
    """The prefill and the token loop of `contrastive_generate` (rows: n_views blocks of B)."""
    spec = adapter.spec
    b = input_ids.shape[0]
    mask = stacked.attention_mask
    pos = spec.position_ids(adapter, stacked.input_ids, mask, stacked.image_kwargs)
    out = spec.prefill(adapter, stacked.input_ids, mask, pos, stacked.encoding, stacked.image_kwargs)
    cache = out.cache
    seq = input_ids
    eos_t = torch.tensor(eos, dtype=input_ids.dtype, device=input_ids.device)
    unfinished = torch.ones(b, dtype=torch.bool, device=input_ids.device)
    new_tokens, scores_out = [], []
    for step in range(max_new):
        logits = out.logits[:, -1].to(dtype=torch.float32, device=input_ids.device)
        scores = combine(logits[:b], logits[b:2 * b], step)
        scores = procs(seq, scores)
        if do_sample:
            tok = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tok = torch.argmax(scores, dim=-1)
        tok = torch.where(unfinished, tok, torch.full_like(tok, pad_id))
        seq = torch.cat([seq, tok[:, None]], dim=-1)
        new_tokens.append(tok)
        if return_scores:
            scores_out.append(scores)
        if eos_t.numel():
            unfinished &= ~torch.isin(tok, eos_t)
        if step == max_new - 1 or not bool(unfinished.any()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        pos = spec.next_position_ids(pos)
        step_ids = tok.repeat(n_views)[:, None].to(mask.device)
        out = spec.step(adapter, step_ids, mask, pos, cache)
        cache = out.cache
    ids = torch.stack(new_tokens, dim=1) if new_tokens else input_ids.new_zeros(b, 0)
    return ids, scores_out


# ---- the intervention base -------------------------------------------------------------------------------------
class ContrastiveIntervention:
    """Mixin for interventions that decode with this engine: subclasses implement `views(adapter, batch)`.

    Reads `alpha`, `beta`, `reference_sampling` from the config (subclasses may resolve per-model defaults
    in `resolved(adapter)`).
    """

    def resolved(self, adapter: Any) -> dict:
        """The effective parameters for this adapter (alpha, beta, reference_sampling, ...)."""
        return {"alpha": float(self.cfg["alpha"]), "beta": float(self.cfg["beta"]),
                "reference_sampling": bool(self.cfg["reference_sampling"])}

    def views(self, adapter: Any, batch: Any) -> list[View]:  # pragma: no cover - abstract
        """(original, contrastive) views of a prepared batch."""
        raise NotImplementedError

    def generate_fn(self, adapter: Any):
        """The engine bound to this intervention: `(batch, decoding, processors, **kw) -> new ids`."""
        p = self.resolved(adapter)

        def generate(batch: Any, decoding: dict, logits_processors: Sequence | None = None, **kw: Any):
            with torch.inference_mode():
                views = self.views(adapter, batch)
            return contrastive_generate(adapter, batch.inputs["input_ids"], views, decoding, logits_processors,
                                        alpha=p["alpha"], beta=p["beta"],
                                        reference_sampling=p["reference_sampling"], **kw)

        return generate
