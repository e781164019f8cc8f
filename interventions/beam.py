"""Beam bookkeeping for decoding engines that run their own beam loop (OPERA), with transformers' own math.

`BeamState` holds the tensors of transformers 5 `GenerationMixin._beam_search` (running and finished
sequences, their scores and beam indices, the early-stop heuristic) and advances them with the model's own
helpers (`_get_top_k_continuations`, `_get_running_beams_for_next_iteration`, `_update_finished_beams`,
`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`), so an engine that feeds it the same
log-probabilities chooses exactly what `model.generate(num_beams=N, do_sample=False)` chooses. The engine owns
the model calls and the KV cache: after each `advance` it reorders its cache rows by the returned `beam_idx`.
The stopping criteria are `generate`'s defaults: the maximum length and the EOS ids.

`prompt_lengths` (per item, [B]) switches the length normalization to transformers 4.29's `BeamSearchScorer`
(what OPERA's patched `generate` used): a finished hypothesis scores `sum_logprobs / len ** length_penalty`
with `len` the whole sequence before its EOS (prompt included; here the item's unpadded prompt as the caller
counts it, so batching does not change it; a beam still running at the maximum length counts all its tokens, as
4.29's `finalize`), and the early-stop test divides the best running score by the current whole length.
The default (None) is transformers 5's normalization over the generated tokens. One known difference from
4.29 remains: its early-stop test reads the best of all 2N candidates, EOS ones included, where this reads the
best running beam; they differ only when an EOS candidate ranks first while every finished slot is full (the
comparison with the reference, tests/test_opera_reference.py, never reached that case).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

_STATE_KEYS = ("running_sequences", "running_beam_scores", "running_beam_indices", "sequences", "beam_scores",
               "beam_indices", "is_sent_finished", "early_unsatisfied", "hits")


class BeamState:
    """The beam-search state of B items with N beams each over a left-padded prompt [B, P]."""

    def __init__(self, model: Any, prompt_ids: torch.Tensor, num_beams: int, max_new_tokens: int,
                 eos_ids: Sequence[int], pad_id: int | None, length_penalty: float = 1.0,
                 early_stopping: bool | str = False, prompt_lengths: torch.Tensor | None = None):
        self.model = model
        b, p = prompt_ids.shape
        n = int(num_beams)
        dev = prompt_ids.device
        self.batch_size, self.num_beams, self.prompt_len = b, n, p
        self.max_length = p + int(max_new_tokens)
        self.length_penalty, self.early_stopping = float(length_penalty), early_stopping
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dev)
        self.beams_to_keep = max(2, 1 + self.eos.numel()) * n
        self.top_num_beam_mask = torch.cat([torch.ones(n, dtype=torch.bool),
                                            torch.zeros(self.beams_to_keep - n, dtype=torch.bool)]).to(dev)
        fill = pad_id if pad_id is not None else (int(self.eos[0]) if self.eos.numel() else -1)
        self.running_sequences = torch.full((b, n, self.max_length), fill, dtype=torch.int64, device=dev)
        self.running_sequences[:, :, :p] = prompt_ids[:, None, :]
        self.sequences = self.running_sequences.clone()
        self.running_beam_scores = torch.zeros((b, n), dtype=torch.float, device=dev)
        self.running_beam_scores[:, 1:] = -1e9
        self.beam_scores = torch.full((b, n), -1e9, dtype=torch.float, device=dev)
        self.is_sent_finished = torch.zeros((b, n), dtype=torch.bool, device=dev)
        self.early_unsatisfied = torch.ones((b, 1), dtype=torch.bool, device=dev)
        self.hits = torch.zeros((b, n), dtype=torch.bool, device=dev)
        self.running_beam_indices = torch.full((b, n, self.max_length - p), -1, dtype=torch.int32, device=dev)
        self.beam_indices = self.running_beam_indices.clone()
        self.cur_len = p
        # what `_update_finished_beams` / `_check_early_stop_heuristic` subtract from the length ([B, 1] tensor
        # for the 4.29 whole-length normalization: the padding plus one, as the 4.29 length excludes the EOS)
        self.norm_offset = p if prompt_lengths is None else (p - prompt_lengths.to(dev).view(b, 1) + 1)

    @property
    def flat_sequences(self) -> torch.Tensor:
        """The running sequences so far [B*N, cur_len] (what logits processors see)."""
        return self.running_sequences[:, :, :self.cur_len].reshape(-1, self.cur_len)

    def snapshot(self) -> dict:
        """The state now (for a rollback to this step). No copy: `advance` never writes into the tensors it
        holds (transformers' helpers return gathered new ones), so a snapshot stays as it was."""
        snap = {k: getattr(self, k) for k in _STATE_KEYS}
        snap["cur_len"] = self.cur_len
        return snap

    def restore(self, snap: dict) -> None:
        """Return to a `snapshot`."""
        for k in _STATE_KEYS:
            setattr(self, k, snap[k])
        self.cur_len = snap["cur_len"]

    def take(self, start: int, stop: int) -> "BeamState":
        """The state of items start..stop-1 only (their tensors sliced; nothing is copied)."""
        part = copy.copy(self)
        part.restore(self.take_snapshot(self.snapshot(), start, stop))
        part.batch_size = stop - start
        if torch.is_tensor(self.norm_offset):
            part.norm_offset = self.norm_offset[start:stop]
        return part

    @staticmethod
    def take_snapshot(snap: dict, start: int, stop: int) -> dict:
        """A snapshot's items start..stop-1."""
        return {k: (v[start:stop] if torch.is_tensor(v) else v) for k, v in snap.items()}

    def advance(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One beam step from processed log-probs [B*N, V]: (beam_idx [B*N] flat source rows, the new tokens
        [B*N], whether generation goes on). Exactly `_beam_search`'s loop body after the logits processors."""
        m, b, n, cur = self.model, self.batch_size, self.num_beams, self.cur_len
        acc = (log_probs.view(b, n, -1) + self.running_beam_scores[:, :, None]).reshape(b, -1)
        topk_lp, topk_seq, topk_bi = m._get_top_k_continuations(
            accumulated_log_probs=acc, running_sequences=self.running_sequences,
            running_beam_indices=self.running_beam_indices, cur_len=cur, decoder_prompt_len=self.prompt_len,
            do_sample=False, beams_to_keep=self.beams_to_keep, num_beams=n, batch_size=b)
        new = topk_seq[:, :, cur]
        hits = torch.isin(new, self.eos) if self.eos.numel() else torch.zeros_like(new, dtype=torch.bool)
        self.hits = hits | (cur + 1 >= self.max_length)
        offset = self.norm_offset
        if torch.is_tensor(offset) and cur + 1 >= self.max_length:
            # 4.29 `finalize`: a beam still running at the maximum length counts its last token (an EOS does not)
            offset = offset - (~hits).long()
        self.running_sequences, self.running_beam_scores, self.running_beam_indices = \
            m._get_running_beams_for_next_iteration(
                topk_log_probs=topk_lp, topk_running_sequences=topk_seq, topk_running_beam_indices=topk_bi,
                next_token_hits_stopping_criteria=self.hits, num_beams=n)
        self.sequences, self.beam_scores, self.beam_indices, self.is_sent_finished = m._update_finished_beams(
            sequences=self.sequences, topk_running_sequences=topk_seq, beam_scores=self.beam_scores,
            topk_log_probs=topk_lp, beam_indices=self.beam_indices, topk_running_beam_indices=topk_bi,
            is_early_stop_heuristic_unsatisfied=self.early_unsatisfied, is_sent_finished=self.is_sent_finished,
            next_token_hits_stopping_criteria=self.hits, top_num_beam_mask=self.top_num_beam_mask,
            num_beams=n, cur_len=cur, decoder_prompt_len=offset, length_penalty=self.length_penalty,
            early_stopping=self.early_stopping)
        beam_idx = self.running_beam_indices[..., cur - self.prompt_len].reshape(-1).long()
        tokens = self.running_sequences[:, :, cur].reshape(-1)
        self.cur_len = cur + 1
        self.early_unsatisfied = m._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=self.early_unsatisfied,
            running_beam_scores=self.running_beam_scores, beam_scores=self.beam_scores,
            is_sent_finished=self.is_sent_finished, cur_len=self.cur_len, max_length=self.max_length,
            decoder_prompt_len=self.norm_offset, early_stopping=self.early_stopping,
            length_penalty=self.length_penalty)
        going = bool(m._beam_search_has_unfinished_sequences(self.early_unsatisfied, self.is_sent_finished,
                                                             self.hits, self.early_stopping))
        return beam_idx, tokens, going

    def finalize(self) -> torch.Tensor:
        """The best finished sequence of each item, new tokens only [B, new] (as `generate` returns them)."""
        seqs = self.sequences[:, 0]
        gen = int(((self.beam_indices[:, 0] + 1).bool()).sum(dim=1).max())
        return seqs[:, self.prompt_len:self.prompt_len + gen]
