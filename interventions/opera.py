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
5. retrospection (`rollback`, one item at a time): each beam's location (mode over its candidates of the
   column that scored highest) is recorded per step; when every beam's history holds the item's location
   (mode over beams) more than `threshold` times and the location is >= `rollback_min_location`, decoding
   returns to the step after that token (`rollback_max_per_position` times per position, then one position
   earlier, as the reference), the beams chosen there are forbidden and the step is redone on the full
   vocabulary without penalty. At most `window_size` steps back.

Beam bookkeeping is transformers 5's own (`interventions.beam.BeamState`): lengths are normalized as
`generate` does (over the generated tokens), or with `reference_length_normalization` as the reference's
transformers 4.29 `BeamSearchScorer` (over the whole sequence, prompt included).
The engine prefills the prompt once and repeats the cache per beam; the candidate pass's KV of the chosen
candidate is kept (gathered per beam), so a step costs one forward of C tokens per beam.
Reference quirks kept as options: float16 column scores (`reference_float16_scores`), the candidate softmax,
the 10-token image bonus and minimum rollback location, the per-position cap equal to C. Deviations: the
location history is per beam row (the reference does not reorder it with the beams either) and per item
(the reference takes modes over the whole batch; it only ran batch 1). Families whose KV cache is not
transformers' `DynamicLayer` (sliding-window layers) raise a ValueError naming the family.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from harness.models.adapter import generation_kwargs
from harness.registry import INTERVENTIONS
from interventions import opera_math as om
from interventions.attention_fn import edit_attention_logits
from interventions.base import GenerationPlan, Intervention
from interventions.beam import BeamState
from interventions.contrastive import _eos_ids, batch_view, build_processors


class _Reader:
    """Reads the last decoder layer's attention; optionally masks candidates from each other in every layer."""

    def __init__(self, adapter: Any):
        layers = adapter.decoder_layers()
        path = adapter.site_path("attention")
        self.all = [layer.get_submodule(path) for layer in layers]
        self.last = self.all[-1]
        self.weights: torch.Tensor | None = None
        self.n_cand = 0

    def capture(self, module, record) -> None:
        self.weights = record["weights"]

    def edit(self, module, scores, mask):
        c = self.n_cand
        if mask is None or c <= 1:
            return scores, mask
        block = ~torch.eye(c, dtype=torch.bool, device=mask.device)
        tail = mask[..., -c:].masked_fill(block, torch.finfo(mask.dtype).min)
        return scores, torch.cat([mask[..., :-c], tail], dim=-1)

    @contextmanager
    def reading(self, n_cand: int = 0) -> Iterator[None]:
        """Inside: the last layer's weights land in `self.weights`; with n_cand, the candidate mask applies."""
        self.n_cand = n_cand
        with edit_attention_logits([self.last], capture=self.capture):
            if n_cand:
                with edit_attention_logits(self.all, edit=self.edit):
                    yield
            else:
                yield


def _check_cache(adapter: Any, cache: Any) -> None:
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", [None])}
    if kinds != {"DynamicLayer"}:
        raise ValueError(f"opera cannot run on model family {adapter.family!r}: its KV cache layers {sorted(kinds)} "
                         f"cannot be cut and gathered per beam (opera needs transformers' DynamicLayer)")


def _slice_cache(cache: Any, rows: torch.Tensor | None, length: int) -> None:
    for layer in cache.layers:
        k, v = layer.keys[..., :length, :], layer.values[..., :length, :]
        layer.keys, layer.values = (k, v) if rows is None else (k[rows], v[rows])


def _gather_candidates(cache: Any, beam_idx: torch.Tensor, cand: torch.Tensor, length: int) -> None:
    for layer in cache.layers:
        for name in ("keys", "values"):
            x = getattr(layer, name)
            setattr(layer, name, torch.cat([x[beam_idx, :, :length], x[beam_idx, :, length + cand][:, :, None]], 2))


class _Lane:
    """One beam search over a group of items that share a cache (the whole batch, or one item with rollback)."""

    def __init__(self, adapter, p, reader, procs, beam_kw, cache, logits, mask, pos, img, prompt_ids):
        n = beam_kw["num_beams"]
        self.a, self.p, self.reader, self.procs = adapter, p, reader, procs
        self.lm = adapter.spec.language_model(adapter)
        lengths = mask.sum(-1) if p["reference_length_normalization"] else None
        self.beams = BeamState(adapter.model, prompt_ids, prompt_lengths=lengths, **beam_kw)
        cache.batch_repeat_interleave(n)
        self.cache, self.logits = cache, logits.repeat_interleave(n, 0)
        self.logits0 = self.logits  # the prompt's next-token logits (a rollback to step 0)
        self.mask = mask.repeat_interleave(n, 0)
        self.pos0 = pos[..., -1:].repeat_interleave(n, dim=-2)  # position of the last prompt token
        self.img = img.repeat_interleave(n, 0).float()
        self.P = prompt_ids.shape[1]
        self.history = self.logits.new_zeros(self.logits.shape[0], 0, 0)
        self.rollbacks: list[dict] = []  # one dict per rollback (see opera_generate)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, n_cand: int = 0):
        """The language model on `ids` [R, q] after the cache; (logits [R, q', V] float32, rows [R, q, k])."""
        with self.reader.reading(n_cand):
            out = self.lm(input_ids=ids, attention_mask=self.mask, position_ids=pos, cache=self.cache,
                          use_cache=True, logits_to_keep=max(n_cand, 1), return_dict=True)
        self.cache = out.cache
        return out.logits.float(), om.normalized_rows(self.reader.weights)

    def candidates(self, t: int):
        """Top-C candidates, their penalized scores and per-candidate (location, logits, response row)."""
        p, C = self.p, int(self.p["num_attn_candidates"])
        scores, tok = self.logits.topk(C, dim=-1)
        T = self.mask.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], C)], dim=1)
        pos = self.pos0 + t + 1
        logits, rows = self.forward(tok, pos.expand(*pos.shape[:-1], C), n_cand=C)
        self.mask = self.mask[:, :T + 1]
        own = rows[..., T:].diagonal(dim1=-2, dim2=-1)[..., None]  # each candidate's attention to itself
        resp = torch.cat([rows[..., self.P:T], own], dim=-1)  # [R, C, t+1]
        img_att = (rows[..., :self.P] * self.img[:, None, :]).sum(-1)
        pen, loc = om.penalty(self.history, resp, img_att, p["scale_factor"], p["window_size"],
                              p["image_penalty_steps"], p["reference_float16_scores"])
        return tok, scores - float(p["penalty_weights"]) * pen, loc, logits, resp

    def step_scores(self, tok, scores) -> torch.Tensor:
        """The log-probs the beams are scored with (candidate softmax or full vocabulary)."""
        full = (torch.full_like(self.logits, -999.0) if self.p["reference_candidate_softmax"]
                else self.logits.clone())
        return torch.log_softmax(full.scatter(-1, tok, scores), dim=-1)

    def feed(self, beam_idx, tokens, t, cand=None):
        """Advance the cache, logits and history by the chosen tokens (from the candidate pass when it has them)."""
        T = self.P + t
        if cand is not None:
            tok, logits, resp = cand
            match = tok[beam_idx] == tokens[:, None]
            if bool(match.any(-1).all()):
                c = match.int().argmax(-1)
                _gather_candidates(self.cache, beam_idx, c, T)
                self.logits, row = logits[beam_idx, c], resp[beam_idx, c]
                self._grow(beam_idx, row)
                return
        _slice_cache(self.cache, beam_idx, T)
        self.mask = torch.cat([self.mask[:, :T], self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        logits, rows = self.forward(tokens[:, None], self.pos0 + t + 1)
        self.logits = logits[:, -1]
        self._grow(beam_idx, rows[:, -1, self.P:])

    def _grow(self, beam_idx, row):
        h = self.history[beam_idx]
        t = h.shape[-1]
        h = torch.cat([h, h.new_zeros(h.shape[0], t, 1)], dim=-1)
        self.history = torch.cat([h, row[:, None, :]], dim=1)

    def rebuild(self, k: int) -> None:
        """Recompute cache, logits and history for the (restored) beams' first k response tokens."""
        _slice_cache(self.cache, None, self.P)
        if k == 0:
            self.mask = self.mask[:, :self.P]
            self.logits, self.history = self.logits0, self.logits0.new_zeros(self.logits0.shape[0], 0, 0)
            return
        seq = self.beams.running_sequences[:, :, self.P:self.P + k].reshape(-1, k)
        self.mask = torch.cat([self.mask[:, :self.P], self.mask.new_ones(self.mask.shape[0], k)], dim=1)
        ar = torch.arange(1, k + 1, device=self.pos0.device)
        logits, rows = self.forward(seq, self.pos0 + ar)
        self.logits, self.history = logits[:, -1], rows[..., self.P:]

    def run(self) -> torch.Tensor:
        """Beam search to the end; the best sequence's new tokens [items, new]."""
        p, beams = self.p, self.beams
        roll = bool(p["rollback"])
        n = beams.num_beams
        states: dict[int, dict] = {}
        locs: list[torch.Tensor] = []
        counts: dict[int, int] = {}
        rejects: dict[int, torch.Tensor] = {}
        cap = int(p["rollback_max_per_position"] or p["num_attn_candidates"])
        t = 0
        while True:
            if roll:
                states[t] = {"beams": beams.snapshot()}
                states.pop(t - int(p["window_size"]), None)
            tok, scores, loc, logits, resp = self.candidates(t)
            cand, k = (tok, logits, resp), None
            if roll:
                locs.append(om.beam_locations(loc))
                k = self._rollback_target(t, locs, counts, cap, states)
            if k is None:
                lp = self.step_scores(tok, scores)
            else:
                pos, k = k["pos"], k["k"]
                self.rollbacks.append({"step": t, "position": pos, "restored": k})
                choice = states[k]["choice"]
                beams.restore(states[k]["beams"])
                for s in [s for s in states if s > k]:
                    del states[s]
                del locs[k + 1:]
                self.rebuild(k)
                v = self.logits.shape[-1]
                shifted = self.logits - 999.0 - self.logits.min(-1, keepdim=True).values
                pairs = (choice[0] % n) * v + choice[1]
                rejects[pos] = torch.cat([rejects[pos], pairs]) if pos in rejects else pairs
                rejects.pop(pos + 1, None)
                shifted = shifted.view(1, -1).scatter(-1, rejects[pos][None], -999.0).view(n, v)
                lp, cand, t = torch.log_softmax(shifted, dim=-1), None, k
                self.rollbacks[-1]["rejected"] = [(int(x) // v, int(x) % v) for x in rejects[pos]]
            lp = self.procs(beams.flat_sequences, lp)
            beam_idx, tokens, going = beams.advance(lp)
            if roll:
                states[t]["choice"] = (beam_idx, tokens)
                if cand is None:
                    self.rollbacks[-1]["chosen"] = list(zip((beam_idx % n).tolist(), tokens.tolist()))
            if not going:
                return beams.finalize()
            self.feed(beam_idx, tokens, t, cand)
            t += 1

    def _rollback_target(self, t, locs, counts, cap, states) -> dict | None:
        """The reference's rollback decision at step t (one item): {"pos", "k"} or None."""
        p = self.p
        hist = torch.stack(locs, dim=-1)[None]  # [1, N, steps]
        loc = om.item_location(locs[-1][None])
        if not bool(om.wants_rollback(hist, loc, int(p["threshold"]))[0]):
            return None
        loc = int(loc[0])
        if loc < int(p["rollback_min_location"]):
            return None
        pos = loc + 1
        if counts.get(pos, 0) >= cap:
            pos -= 1
            if counts.get(pos, 0) >= cap:
                return None
        counts[pos] = counts.get(pos, 0) + 1
        w = int(p["window_size"])
        if (t + 1) - pos > w + 1:
            pos = max(1, t + 1 - w - 1)
        k = min(pos, t - 1)  # the reference restores history_states[-2] after popping to pos + 2 states
        if k < 0 or k not in states or "choice" not in states[k]:
            return None
        return {"pos": pos, "k": k}


def lanes(adapter: Any, batch: Any, decoding: dict, logits_processors: Sequence | None, params: dict,
          **extra: Any) -> Iterator[tuple[list[int], "_Lane"]]:
    """(item rows, lane) of a prepared batch after one prefill: one lane for the batch, one per item with rollback."""
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
    spec, reader = adapter.spec, _Reader(adapter)
    view = batch_view(adapter, batch.inputs)
    ids, mask = view.input_ids, view.attention_mask
    procs = build_processors(kw, ids.shape[1], beam_kw["eos_ids"], logits_processors or [], False, False)
    pos = spec.position_ids(adapter, ids, mask, view.image_kwargs)
    out = spec.prefill(adapter, ids, mask, pos, view.encoding, view.image_kwargs)
    _check_cache(adapter, out.cache)
    img = adapter.image_token_mask(ids)
    logits = out.logits[:, -1].float()
    groups = [[i] for i in range(ids.shape[0])] if params["rollback"] else [list(range(ids.shape[0]))]
    for rows in groups:
        r = torch.tensor(rows, device=ids.device)
        cache = out.cache
        if len(groups) > 1:
            cache = copy.deepcopy(out.cache)
            _slice_cache(cache, r, ids.shape[1])
        yield rows, _Lane(adapter, params, reader, procs, beam_kw, cache, logits[r], mask[r],
                          pos.index_select(-2, r), img[r], ids[r])


def opera_generate(adapter: Any, batch: Any, decoding: dict, logits_processors: Sequence | None,
                   params: dict, trace: list | None = None, **extra: Any) -> torch.Tensor:
    """New token ids [B, new] (pad after the end) of OPERA beam search over a prepared batch; `trace` (a list)
    receives each item's rollbacks (dicts: step, position, restored step, rejected and chosen (beam, token))."""
    pad = int(generation_kwargs(decoding, adapter.tokenizer)["pad_token_id"])
    results = []
    with torch.inference_mode():
        for rows, lane in lanes(adapter, batch, decoding, logits_processors, params, **extra):
            results.extend(lane.run().unbind(0))
            if trace is not None:
                trace.extend([lane.rollbacks] if len(rows) == 1 else [[] for _ in rows])
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
