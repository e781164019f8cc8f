"""OPERA's over-trust penalty and retrospection location, as pure tensor functions (see interventions/opera.py).

Notation (shikiw/OPERA `transformers-4.29.2/src/transformers/generation/utils.py`, `opera_beam_search`):
the last decoder layer's attention, max over heads, each row divided by its own sum over all keys
(`attn_last / attn_last.sum(-1)`), restricted to the response (`attn_local = attn_last[..., r:, r:]` with
r = `key_position["response_start"]`, the prompt length). `history` holds those rows for the t response tokens
already fed ([R, t, t], row = query token, lower triangle), `cand` the row of each of the C candidate tokens
([R, C, t+1], its last column its attention to itself).
"""
from __future__ import annotations

import torch


def normalized_rows(weights: torch.Tensor) -> torch.Tensor:
    """Attention weights [R, H, q, k] -> max over heads, each row divided by its sum over keys [R, q, k] (float32)."""
    m = weights.float().amax(dim=1)
    return m / m.sum(dim=-1, keepdim=True)


def column_scores(history: torch.Tensor, cand: torch.Tensor, scale_factor: float, window_size: int,
                  float16_scores: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The column-wise over-trust scores of each candidate's local window: (scores [R, C, w], the response
    index of each column [w]).

    Column j of the (t+1)x(t+1) local matrix M (history rows plus the candidate row) scores
    `1e-7 * prod_{r >= j} scale_factor * M[r, j]` (the reference's `1e-7 * attn_local[..., j:, j].prod(-1)`).
    The window is the last `window_size` response columns (the reference scores every column: the same while
    the response is shorter than its `window_size` 512). `float16_scores`: round the scores to float16 as the
    reference's float16 `attn_local_scores` buffer does (large products become inf).
    """
    t = history.shape[-1]
    start = max(0, t + 1 - int(window_size))
    s = float(scale_factor)
    h = history[:, start:, start:].float() * s  # [R, w-1, w-1]
    n = h.shape[-1]
    below = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()  # r >= j
    col = torch.where(below, h, torch.ones_like(h)).prod(dim=-2)  # [R, w-1]: prod over history rows r >= j
    c = cand[..., start:].float() * s  # [R, C, w]
    prev = col[:, None, :] * c[..., :n]
    scores = 1e-7 * torch.cat([prev, c[..., n:]], dim=-1)
    if float16_scores:
        scores = scores.half().float()
    return scores, torch.arange(start, t + 1, device=h.device)


def penalty(history: torch.Tensor, cand: torch.Tensor, image_attention: torch.Tensor, scale_factor: float,
            window_size: int, image_steps: int, float16_scores: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty [R, C], rollback location per candidate [R, C]) for the candidates' raw logits.

    `candidate_scores -= penalty_weights * penalty`. While the response (with the candidate) has at most
    `image_steps` tokens the penalty is minus the candidate's attention to the image tokens (a bonus,
    the reference's `- attn_scores if cur_response_lens <= 10`), afterwards the maximum column score; the
    location is the response index of that column (first maximum).
    """
    scores, index = column_scores(history, cand, scale_factor, window_size, float16_scores)
    best, loc = scores.max(dim=-1)
    loc = index[loc]
    t1 = history.shape[-1] + 1
    return (-image_attention.float() if t1 <= int(image_steps) else best), loc


def beam_locations(locs: torch.Tensor) -> torch.Tensor:
    """Per beam, the most frequent location of its candidates (smallest on ties, `torch.mode`) [R]."""
    return locs.mode(dim=-1).values


def item_location(beam_locs: torch.Tensor) -> torch.Tensor:
    """Per item, the most frequent of its beams' locations [B] (`beam_locs` [B, N])."""
    return beam_locs.mode(dim=-1).values


def wants_rollback(history_locs: torch.Tensor, loc: torch.Tensor, threshold: int) -> torch.Tensor:
    """Per item, whether EVERY beam's location history ([B, N, steps]) holds `loc` more than `threshold` times."""
    counts = (history_locs == loc[:, None, None]).sum(dim=-1)
    return (counts > int(threshold)).all(dim=-1)
