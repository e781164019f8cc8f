"""Mirage controls: trivial interventions that can produce a benchmark "gain" without better grounding.

A 2025 critique of contrastive decoding argues that its POPE gains come from (1) a one-directional shift of
yes/no answers and (2) the adaptive plausibility cut, which turns sampling into near-greedy decoding. These
two controls isolate each explanation, so a method can be compared against them in one command:

- ``yes_bias``: adds ``strength / 2`` to the logits of every "yes" token and subtracts ``strength / 2``
  from every "no" token, i.e. shifts the yes-vs-no log-odds by ``strength`` and nothing else (positive:
  more yes). The token ids are every vocabulary entry that reads "yes"/"no" in any case, with or without
  a leading-space marker (``▁Yes``, ``Ġno``, ``yes``), found through the model's tokenizer. ``steps``:
  ``first`` (default; the answer token of a yes/no question) or ``all`` decoding steps. ``strength: 0``
  returns the logits untouched: the baseline exactly.
- ``plausibility_cut``: the contrastive engines' adaptive plausibility constraint (VCD/DAMRO, see
  ``interventions/contrastive.py``) without any contrast: tokens with p < ``beta`` * max p are masked
  (-inf) at every step. It is a logits processor, so it runs after the decoding processors (repetition
  penalty) and before the sampling warpers (temperature, top-k, top-p), where the engines apply it too. The
  most likely token always survives, so with greedy decoding the answers equal the baseline exactly; with
  sampling it truncates the distribution, which is the point. ``beta: 0`` is the baseline.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention

SPACE_MARKERS = ("▁", "Ġ", " ")


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Ids of the non-special vocabulary tokens that read as `word` (any case, optional leading-space marker)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for tok, i in tokenizer.get_vocab().items():
        text = tok
        for marker in SPACE_MARKERS:
            if text.startswith(marker):
                text = text[len(marker):]
                break
        if text.lower() == word.lower() and i not in special:
            out.append(int(i))
    return sorted(set(out))


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(yes ids, no ids) of a tokenizer; a ValueError when either is missing from the vocabulary."""
    yes, no = word_token_ids(tokenizer, "yes"), word_token_ids(tokenizer, "no")
    if not yes or not no:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no single token for "
                         f"{'yes' if not yes else 'no'}; yes_bias needs one")
    return yes, no


class YesBiasProcessor:
    """Logits processor: yes logits + strength/2, no logits - strength/2 (first step or every step)."""

    def __init__(self, yes_ids: list[int], no_ids: list[int], strength: float, steps: str = "first"):
        self.yes_ids, self.no_ids, self.strength, self.steps = yes_ids, no_ids, float(strength), steps
        self._start: int | None = None

    def __call__(self, input_ids, scores):
        if self._start is None:
            self._start = input_ids.shape[1]
        if self.strength == 0 or (self.steps == "first" and input_ids.shape[1] != self._start):
            return scores
        scores = scores.clone()
        scores[:, self.yes_ids] += self.strength / 2
        scores[:, self.no_ids] -= self.strength / 2
        return scores


class PlausibilityCutProcessor:
    """Logits processor: -inf where p < beta * max p (comparing logits with log(beta) + max logit)."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def __call__(self, input_ids, scores):
        if self.beta <= 0:
            return scores
        cutoff = scores.max(dim=-1, keepdim=True).values + math.log(self.beta)
        return scores.masked_fill(scores < cutoff, -float("inf"))


@INTERVENTIONS.register("yes_bias")
class YesBias(Intervention):
    """Shift the yes-vs-no logit by a constant: the response-bias control for yes/no benchmarks."""

    name = "yes_bias"
    strength_key = "strength"

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        if self.cfg["steps"] not in ("first", "all"):
            raise ValueError(f"intervention.steps={self.cfg['steps']!r}; valid choices: first, all")
        self.strength = float(self.cfg["strength"])
        self._ids: tuple[list[int], list[int]] | None = None

    def setup(self, adapter: Any) -> None:
        """Find the yes/no token ids through the adapter's tokenizer."""
        self._ids = yes_no_token_ids(adapter.tokenizer)

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """One fresh processor per batch (it remembers the batch's first decoding step)."""
        if self._ids is None:
            self.setup(adapter)
        yes, no = self._ids
        yield GenerationPlan(logits_processors=[YesBiasProcessor(yes, no, self.strength, self.cfg["steps"])])


@INTERVENTIONS.register("plausibility_cut")
class PlausibilityCut(Intervention):
    """The contrastive engines' adaptive plausibility cut alone (no contrast): the 'near-greedy' control."""

    name = "plausibility_cut"
    strength_key = "beta"

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        self.beta = float(self.cfg["beta"])
        if not 0 <= self.beta <= 1:
            raise ValueError(f"intervention.beta={self.beta} must be in [0, 1]")

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """The cut as a logits processor."""
        yield GenerationPlan(logits_processors=[PlausibilityCutProcessor(self.beta)])
