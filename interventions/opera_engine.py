"""The OPERA beam loop over transformers' KV cache (see interventions/opera.py for the method and its options).

All rows (B items x N beams) share one DynamicCache and advance together. Items live in groups
(`_Group`, contiguous rows): the whole batch starts as one; an item that rolls back splits off into a group
of its own (the others stay in contiguous runs), so it can go back to an earlier step while the others go
on. Beam state, response length t, attention history and snapshots are per group; rollback counts, rejected
pairs and the trace per item. The shared cache has one physical column per fed token; a column a row
must not see (the unused candidates, a rolled-back item's undone tokens, a row that is only carried along)
is a hole: 0 in the 2D attention mask, so the model's masks never attend to it, and each row's position ids
are its own (prompt position + t + 1). `cols` maps a group's response tokens to their physical columns.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from interventions import opera_math as om
from interventions.beam import BeamState


def select_rows(cache: Any, rows: torch.Tensor, length: int) -> None:
    """Keep only `rows` and the first `length` columns of every layer (in place)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows, :, :length], layer.values[rows, :, :length]


class _Group:
    """Items decoded in lock-step: rows `rows` (a slice of the batch rows), their beams and OPERA state."""

    def __init__(self, items: list[int], rows: slice, beams: BeamState, logits0: torch.Tensor):
        self.items, self.rows, self.beams, self.logits0 = items, rows, beams, logits0
        self.t, self.done = 0, False
        self.cols = torch.zeros(0, dtype=torch.long, device=logits0.device)
        self.history = logits0.new_zeros(logits0.shape[0], 0, 0)
        self.states: dict[int, dict] = {}  # step -> {"beams": snapshot, "choice": (group beam_idx, tokens)}
        self.locs: list[torch.Tensor] = []  # per step, each row's location [R_g]

    def grow(self, beam_idx: torch.Tensor, row: torch.Tensor, col: int) -> None:
        """Reorder the history by the group's beam_idx and add the new token's row and physical column."""
        h = self.history[beam_idx]
        h = torch.cat([h, h.new_zeros(h.shape[0], h.shape[1], 1)], dim=-1)
        self.history = torch.cat([h, row[:, None, :]], dim=1)
        self.cols = torch.cat([self.cols, self.cols.new_tensor([col])])
        self.t += 1

    def part(self, start: int, stop: int, n: int) -> "_Group":
        """The group of its items start..stop-1 (local indices), with their share of every state."""
        rs = slice(start * n, stop * n)
        g = _Group(self.items[start:stop], slice(self.rows.start + rs.start, self.rows.start + rs.stop),
                   self.beams.take(start, stop), self.logits0[rs])
        g.t, g.done, g.cols, g.history = self.t, self.done, self.cols, self.history[rs]
        g.locs = [x[rs] for x in self.locs]
        for k, st in self.states.items():
            g.states[k] = {"beams": BeamState.take_snapshot(st["beams"], start, stop)}
            if "choice" in st:
                g.states[k]["choice"] = (st["choice"][0][rs] - rs.start, st["choice"][1][rs])
        return g

    def split(self, alone: list[int], n: int) -> list["_Group"]:
        """Items `alone` (local indices) each in a group of their own, the others in contiguous runs."""
        cuts = sorted({0, len(self.items)} | {j for j in alone} | {j + 1 for j in alone})
        return [self.part(a, b, n) for a, b in zip(cuts, cuts[1:]) if b > a]


class Lane:
    """OPERA beam search over every row of a prefilled batch."""

    def __init__(self, adapter, p, reader, procs, beam_kw, cache, logits, mask, pos, img, prompt_ids):
        n = self.n = beam_kw["num_beams"]
        self.p, self.reader, self.procs = p, reader, procs
        self.lm = adapter.spec.language_model(adapter)
        self.pad, self.family = beam_kw["pad_id"], adapter.family
        cache.batch_repeat_interleave(n)
        self.cache, self.logits = cache, logits.repeat_interleave(n, 0)
        self.mask = mask.repeat_interleave(n, 0)
        self.pos0 = pos[..., -1:].repeat_interleave(n, dim=-2)  # position of the last prompt token
        self.img = img.repeat_interleave(n, 0).float()
        self.P = prompt_ids.shape[1]
        b = prompt_ids.shape[0]
        lengths = None
        if p["reference_length_normalization"]:
            # the 4.29 scorer counts the ids the reference's `generate` got: OPERA's LLaVA wrapper passes each image
            # as ONE placeholder id (-200), so a run of image tokens counts as one (checked against the reference:
            # tests/test_opera_reference.py)
            is_img = img.bool()
            starts = is_img & ~torch.cat([torch.zeros_like(is_img[:, :1]), is_img[:, :-1]], dim=1)  # image runs
            lengths = mask.sum(-1) - is_img.sum(-1) + starts.sum(-1)
        beams = BeamState(adapter.model, prompt_ids, prompt_lengths=lengths, **beam_kw)
        self.groups = [_Group(list(range(b)), slice(0, b * n), beams, self.logits)]
        # per item: rollbacks per position, rejected (beam, token) pairs per position, the trace of rollbacks
        self.counts: list[dict[int, int]] = [{} for _ in range(b)]
        self.rejects: list[dict[int, torch.Tensor]] = [{} for _ in range(b)]
        self.rollbacks: list[list[dict]] = [[] for _ in range(b)]

    # ---- model calls -----------------------------------------------------------------------------------------
    def forward(self, ids, pos, mask, cache, n_cand=0):
        """The language model on `ids` [R, q] after `cache`; (logits [R, q', V] float32, normalized rows [R, q, k])."""
        self.reader.weights = None
        with self.reader.reading(n_cand):
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                          logits_to_keep=max(n_cand, 1), return_dict=True)
        if self.reader.weights is None:
            raise ValueError(f"opera cannot run on model family {self.family!r}: its last decoder layer's attention "
                             f"does not go through transformers' AttentionInterface, so it cannot be read")
        return out.logits.float(), om.normalized_rows(self.reader.weights), out.cache

    def next_pos(self) -> torch.Tensor:
        """Per row, the position of its next token (prompt position + response length + 1)."""
        t = torch.zeros(self.mask.shape[0], dtype=torch.long, device=self.mask.device)
        for g in self.groups:
            t[g.rows] = g.t
        return self.pos0 + (t[:, None] + 1)

    # ---- one step --------------------------------------------------------------------------------------------
    def run(self) -> list[torch.Tensor]:
        """Beam search to the end; per item its best sequence's new tokens."""
        while not all(g.done for g in self.groups):
            self.step()
        return [row for g in self.groups for row in g.beams.finalize().unbind(0)]

    def candidate_pass(self) -> dict:
        """Every row's top-C candidates fed in one forward (each sees only itself among them): their tokens,
        raw logits, next logits, attention rows, attention to themselves and to the image; L the length before."""
        C, L = int(self.p["num_attn_candidates"]), self.mask.shape[1]
        scores, tok = self.logits.topk(C, dim=-1)
        pos = self.next_pos()
        mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], C)], dim=1)
        clogits, crows, self.cache = self.forward(tok, pos.expand(*pos.shape[:-1], C), mask, self.cache, C)
        return {"L": L, "tok": tok, "scores": scores, "logits": clogits, "rows": crows,
                "own": crows[..., L:].diagonal(dim1=-2, dim2=-1),
                "image": (crows[..., :self.P] * self.img[:, None, :]).sum(-1)}

    def penalized(self, g: _Group, cp: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's penalized candidate scores [R_g, C] and each candidate's location [R_g, C]."""
        p, s = self.p, g.rows
        resp = torch.cat([cp["rows"][s][..., g.cols], cp["own"][s][..., None]], dim=-1)  # [R_g, C, t+1]
        pen, loc = om.penalty(g.history, resp, cp["image"][s], p["scale_factor"], p["window_size"],
                              p["image_penalty_steps"], p["reference_float16_scores"])
        return cp["scores"][s] - float(p["penalty_weights"]) * pen, loc

    def step(self) -> None:
        """Candidates, penalty, (rollback,) beam choice and feeding, for every live group."""
        p = self.p
        cp = self.candidate_pass()
        L, tok, clogits, crows, own = cp["L"], cp["tok"], cp["logits"], cp["rows"], cp["own"]
        rows = self.mask.shape[0]
        bidx = torch.arange(rows, device=tok.device)
        pick = torch.zeros_like(bidx)
        valid = torch.zeros(rows, dtype=torch.bool, device=tok.device)
        fallback: list[tuple[_Group, torch.Tensor, torch.Tensor]] = []
        fused: list[tuple[slice, torch.Tensor]] = []
        todo = []  # (group, its penalized scores, rollback target or None)
        for g in [g for g in self.groups if not g.done]:
            scores, loc = self.penalized(g, cp)
            if not p["rollback"]:
                todo.append((g, scores, None))
                continue
            g.states[g.t] = {"beams": g.beams.snapshot()}
            g.states.pop(g.t - int(p["window_size"]), None)
            g.locs.append(om.beam_locations(loc))
            targets = self._rollback_targets(g)
            if not targets:
                todo.append((g, scores, None))
                continue
            parts = g.split(sorted(targets), self.n)
            self.groups = sorted([x for x in self.groups if x is not g] + parts, key=lambda x: x.rows.start)
            for part in parts:
                rs = slice(part.rows.start - g.rows.start, part.rows.stop - g.rows.start)
                todo.append((part, scores[rs], targets.get(part.items[0] - g.items[0]) if len(part.items) == 1
                             else None))
        for g, scores, target in todo:
            s = g.rows
            if target is None:
                full = (torch.full_like(self.logits[s], -999.0) if p["reference_candidate_softmax"]
                        else self.logits[s].clone())
                lp = torch.log_softmax(full.scatter(-1, tok[s], scores), dim=-1)
            else:
                lp = self._rollback(g, target)
            lp = self.procs(g.beams.flat_sequences, lp)
            gb, toks, going = g.beams.advance(lp)
            if p["rollback"]:
                g.states[g.t]["choice"] = (gb, toks)
                if target is not None:
                    self.rollbacks[g.items[0]][-1]["chosen"] = list(zip(gb.tolist(), toks.tolist()))
            g.done = not going
            if g.done:
                continue
            gb = gb + s.start
            bidx[s] = gb
            match = tok[gb] == toks[:, None]
            if target is None and bool(match.any(-1).all()):
                c = match.int().argmax(-1)
                pick[s], valid[s] = c, True
                g.grow(gb - s.start, torch.cat([crows[gb, c][:, g.cols], own[gb, c][:, None]], dim=-1), L)
                fused.append((s, clogits[gb, c]))
            else:
                fallback.append((g, gb, toks))
        self._compact(bidx, pick, valid, L)
        self.logits = self.logits[bidx]
        for s, lg in fused:
            self.logits[s] = lg
        if fallback:
            self._feed(fallback)

    def _compact(self, bidx, pick, valid, L) -> None:
        """Rows reordered by beam; of the candidate columns only each row's chosen one stays (a hole if none)."""
        ar = torch.arange(bidx.shape[0], device=bidx.device)
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                x = getattr(layer, name)[bidx]
                setattr(layer, name, torch.cat([x[:, :, :L], x[ar, :, L + pick][:, :, None]], dim=2))
        self.mask = torch.cat([self.mask[bidx], valid[:, None].to(self.mask.dtype)], dim=1)

    def _feed(self, fallback) -> None:
        """One plain step for the groups whose chosen tokens have no candidate column (other rows: holes)."""
        ids = torch.full((self.mask.shape[0], 1), self.pad, dtype=torch.long, device=self.mask.device)
        valid = torch.zeros(self.mask.shape[0], dtype=self.mask.dtype, device=self.mask.device)
        for g, _, toks in fallback:
            ids[g.rows, 0], valid[g.rows] = toks, 1
        pos = self.next_pos()
        self.mask = torch.cat([self.mask, valid[:, None]], dim=1)
        logits, rows, self.cache = self.forward(ids, pos, self.mask, self.cache)
        col = self.mask.shape[1] - 1
        for g, gb, _ in fallback:
            s = g.rows
            g.grow(gb - s.start, rows[s, -1][:, torch.cat([g.cols, g.cols.new_tensor([col])])], col)
            self.logits[s] = logits[s, -1]

    # ---- retrospection ---------------------------------------------------------------------------------------
    def _rollback_targets(self, g: _Group) -> dict[int, dict]:
        """The reference's rollback decision for each item of a group at its step t: local item -> {"pos", "k"}."""
        p, t, n = self.p, g.t, self.n
        b = len(g.items)
        hist = torch.stack(g.locs, dim=-1).view(b, n, -1)
        loc = om.item_location(g.locs[-1].view(b, n))
        wants = om.wants_rollback(hist, loc, int(p["threshold"])) & (loc >= int(p["rollback_min_location"]))
        out = {}
        for j in wants.nonzero().flatten().tolist():
            counts = self.counts[g.items[j]]
            cap = int(p["rollback_max_per_position"] or p["num_attn_candidates"])
            pos = int(loc[j]) + 1
            if counts.get(pos, 0) >= cap:
                pos -= 1
                if counts.get(pos, 0) >= cap:
                    continue
            counts[pos] = counts.get(pos, 0) + 1
            w = int(p["window_size"])
            if (t + 1) - pos > w + 1:
                pos = max(1, t + 1 - w - 1)
            k = min(pos, t - 1)  # the reference restores history_states[-2] after popping to pos + 2 states
            if k >= 0 and "choice" in g.states.get(k, {}):
                out[j] = {"pos": pos, "k": k}
        return out

    def _rollback(self, g: _Group, target: dict) -> torch.Tensor:
        """Return the group to step k, forbid the beams chosen there before; the log-probs to redo step k with."""
        pos, k = target["pos"], target["k"]
        item = g.items[0]
        self.rollbacks[item].append({"step": g.t, "position": pos, "restored": k})
        choice = g.states[k]["choice"]
        g.beams.restore(g.states[k]["beams"])
        for st in [st for st in g.states if st > k]:
            del g.states[st]
        del g.locs[k + 1:]
        logits = self._rebuild(g, k)
        n, v = self.n, logits.shape[-1]
        shifted = logits - 999.0 - logits.min(-1, keepdim=True).values
        pairs = choice[0] * v + choice[1]
        rejects = self.rejects[item]
        rejects[pos] = torch.cat([rejects[pos], pairs]) if pos in rejects else pairs
        rejects.pop(pos + 1, None)
        self.rollbacks[item][-1]["rejected"] = [(int(x) // v, int(x) % v) for x in rejects[pos]]
        shifted = shifted.view(1, -1).scatter(-1, rejects[pos][None], -999.0).view(n, v)
        return torch.log_softmax(shifted, dim=-1)

    def _rebuild(self, g: _Group, k: int) -> torch.Tensor:
        """The restored beams' first k response tokens recomputed into the group's rows (columns P..P+k-1, the
        rest of its response made holes); sets cols, history and t; returns the step-k logits."""
        s, P = g.rows, self.P
        g.t = k
        if k == 0:
            self.mask[s, P:] = 0
            g.cols, g.history = g.cols[:0], g.history.new_zeros(g.history.shape[0], 0, 0)
            return g.logits0
        tmp = copy.copy(self.cache)
        tmp.layers = [copy.copy(layer) for layer in self.cache.layers]
        select_rows(tmp, torch.arange(s.start, s.stop, device=self.mask.device), P)
        seq = g.beams.running_sequences[:, :, P:P + k].reshape(-1, k)
        m = torch.cat([self.mask[s, :P], self.mask.new_ones(seq.shape[0], k)], dim=1)
        ar = torch.arange(1, k + 1, device=self.pos0.device)
        logits, rows, tmp = self.forward(seq, self.pos0[..., s, :] + ar, m, tmp)
        for shared, new in zip(self.cache.layers, tmp.layers):
            shared.keys[s, :, P:P + k] = new.keys[:, :, P:P + k]
            shared.values[s, :, P:P + k] = new.values[:, :, P:P + k]
        self.mask[s, P:P + k], self.mask[s, P + k:] = 1, 0
        g.cols = torch.arange(P, P + k, device=self.mask.device)
        g.history = rows[..., P:P + k]
        return logits[:, -1]
