"""`dola`: DoLa, Decoding by Contrasting Layers (Chuang et al., ICLR 2024, arXiv:2309.03883), as transformers'
own DoLa generation mode defined it (`generation/utils.py` `_dola_decoding`, `_dola_select_contrast`,
`_relative_top_filter`, transformers 4.43-4.5x; removed from the library in v5, now the hub recipe
`transformers-community/dola`). Here it runs on unmodified transformers 5 as a logits processor inside
`generate`, fed by forward hooks on the decoder blocks.

Per step, for the last position of every row:
1. candidate premature layers (`layers`): `high` = range(N//2, N, 2) (N <= 40) else range(N-20, N, 2);
   `low` = range(s, N//2, 2) (N <= 40) else range(s, 20, 2), or [s] when s == N//2; a list = its entries
   below N. N = decoder blocks; s = 0, or 2 when the output embedding is tied to the input embedding (1 when
   N == 2), as transformers. Layer j's hidden state is the input of block 0 for j = 0 (the embeddings), the
   output of block j-1 otherwise (`output_hidden_states` numbering).
2. early-exit logits of each candidate: `lm_head(final_norm(h_j))` (`final_norm: true`, default: the family's
   `final_norm` and `lm_head` sites, so premature layers are read like the final one); `final_norm: false`
   reproduces transformers' `lm_head(h_j)` on the raw residual stream.
3. the premature layer M = argmax_j JS(q_N || q_j), with transformers' formula: softmaxes of the final and
   candidate logits, m = (p_N + p_j)/2, JS = 0.5 * (mean_v kl_div(log p_N, m) + mean_v kl_div(log p_j, m))
   (mean over the vocabulary, as `F.kl_div(..., reduction="none").mean(-1)`). transformers then averaged JS
   over the BATCH and used one layer for all rows (`js_divs.mean(-1)`): `reference_batch_mean: true`
   reproduces that (rows then depend on their batch); false (default) picks M per row, so batch 4 == batch 1.
   One candidate: no selection.
4. adaptive plausibility (`_relative_top_filter`, relative_top 0.1, min_tokens_to_keep 1): on log-softmaxes,
   tokens with log p_N < min(max log p_N + log(relative_top), the top-1 value) get -inf in the final scores and
   -1e-3 in the premature ones; the scores are `log p_N - log p_M`.
5. the repetition penalty, then the rest of the processors and warpers: transformers applied its logits
   processors (repetition penalty first) to the contrasted scores; its docs recommend
   `repetition_penalty=1.2` for DoLa. `repetition_penalty` here (null: the decoding config's) is applied right
   after the contrast; the decoding config's own repetition penalty is then not applied a second time.

`layers: null` is off: plain `generate` with the decoding config, the baseline exactly. Greedy and sampling
only (transformers: "DoLa generation needs num_beams == 1"). Composes with attention edits (head_guide, pai
with gamma 1) but not with another decoding engine. OPT language models with a `project_out` layer (OPT-350m)
are not supported (the early exit would skip it); BLIP-2's OPT-2.7b/6.7b have none.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention


def candidate_layers(spec: Any, num_layers: int, tied: bool) -> list[int]:
    """transformers' candidate premature layers for `dola_layers` = 'low' | 'high' | a list of ints."""
    n = num_layers
    start = 0 if not tied else (2 if n > 2 else (1 if n == 2 else 0))
    if spec == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if spec == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    if isinstance(spec, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        out = [i for i in spec if i < n]
        bad = [i for i in out if i < 0]
        if bad or not out:
            raise ValueError(f"dola.layers={list(spec)}: need layer indices 0..{n - 1} (0 = the embeddings)")
        return out
    raise ValueError(f"dola.layers={spec!r}: give 'low', 'high', a list of layer indices, or null (off)")


def relative_top_filter(scores: torch.Tensor, base: torch.Tensor, relative_top: float = 0.1,
                        filter_value: float = -float("inf"), base_filter_value: float = -1e-3,
                        min_tokens_to_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_final, log p_premature) with the tokens below the relative-top threshold filtered."""
    s = scores.log_softmax(dim=-1)
    b = base.log_softmax(dim=-1)
    min_thresh = torch.topk(s, min_tokens_to_keep, dim=-1).values[..., -1]  # = sort(s, descending)[k - 1]
    thresh = torch.min(min_thresh, s.max(dim=-1).values + math.log(relative_top)).unsqueeze(-1)
    low = s < thresh
    return s.masked_fill(low, filter_value), b.masked_fill(low, base_filter_value)


def js_divergences(final: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """[N, B]: transformers' JS divergence (vocabulary-mean KL terms) between the final and each candidate."""
    avg = 0.5 * (F.softmax(final, dim=-1)[None] + F.softmax(stacked, dim=-1))
    kl1 = F.kl_div(F.log_softmax(final, dim=-1)[None], avg, reduction="none").mean(-1)
    kl2 = F.kl_div(F.log_softmax(stacked, dim=-1), avg, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


def dola_scores(final: torch.Tensor, premature: torch.Tensor, relative_top: float,
                batch_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrasted scores [B, V], chosen candidate index per row [B]) from final logits [B, V] and the
    candidates' early-exit logits [N, B, V]."""
    b = final.shape[0]
    if premature.shape[0] == 1:
        idx = torch.zeros(b, dtype=torch.long, device=final.device)
    else:
        js = js_divergences(final, premature)
        idx = js.mean(-1).argmax().expand(b) if batch_mean else js.argmax(0)
    base = premature[idx, torch.arange(b, device=final.device)]
    s, p = relative_top_filter(final, base, relative_top)
    return s - p, idx


class LayerTaps:
    """Forward hooks that keep the last-position hidden state of the candidate layers of each forward."""

    def __init__(self, blocks: torch.nn.ModuleList, layers: Sequence[int]):
        self.states: dict[int, torch.Tensor] = {}
        self.handles = []
        for j in layers:
            if j == 0:
                self.handles.append(blocks[0].register_forward_pre_hook(self._pre(j), with_kwargs=True))
            else:
                self.handles.append(blocks[j - 1].register_forward_hook(self._post(j)))

    def _pre(self, j):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.states[j] = h[:, -1].detach()
        return hook

    def _post(self, j):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            self.states[j] = h[:, -1].detach()
        return hook

    def remove(self) -> None:
        """Remove every hook."""
        for h in self.handles:
            h.remove()


class DolaProcessor:
    """A logits processor: DoLa's contrast of the final logits with the tapped premature layers, then the
    repetition penalty."""

    def __init__(self, taps: LayerTaps, layers: list[int], head, norm, relative_top: float, batch_mean: bool,
                 repetition_penalty: float | None):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.taps, self.layers, self.head, self.norm = taps, layers, head, norm
        self.relative_top, self.batch_mean = relative_top, batch_mean
        self.penalty = (RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty))
                        if repetition_penalty is not None and float(repetition_penalty) != 1.0 else None)
        self.chosen: list[torch.Tensor] = []  # per step, the premature layer of each row

    def early_exit(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a hidden state read through the final norm (if any) and the LM head."""
        w = self.head.weight
        h = h.to(w.device, w.dtype)
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h).float()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        premature = torch.stack([self.early_exit(self.taps.states[j]) for j in self.layers]).to(scores.device)
        out, idx = dola_scores(scores.float(), premature, self.relative_top, self.batch_mean)
        self.chosen.append(torch.tensor(self.layers, device=idx.device)[idx])
        if self.penalty is not None:
            out = self.penalty(input_ids, out)
        return out


@INTERVENTIONS.register("dola")
class Dola(Intervention):
    """Layer-contrast decoding (see the module docstring)."""

    name = "dola"
    strength_key = "layers"

    def layers(self, adapter: Any) -> list[int]:
        """The candidate premature layers in this model."""
        head, embed = adapter.site("lm_head"), adapter.site("embed_tokens")
        tied = head.weight.data_ptr() == embed.weight.data_ptr()
        return candidate_layers(self.cfg["layers"], adapter.num_layers, tied)

    def setup(self, adapter: Any) -> None:
        """Check the candidate layers and the sites the early exit reads."""
        if self.cfg["layers"] is None:
            return
        self.layers(adapter)
        adapter.site("lm_head")
        if self.cfg["final_norm"]:
            adapter.site("final_norm")
        owner = adapter.model.get_submodule(adapter.site_path("decoder_layers").rsplit(".", 1)[0])
        if getattr(owner, "project_out", None) is not None:
            raise ValueError(f"dola cannot run on model family {adapter.family!r} with this checkpoint: its "
                             f"language model projects the final hidden state (project_out) after the norm")

    def generate_fn(self, adapter: Any):
        """`generate` with the DoLa processor first and the hooks that feed it."""
        from harness.config import decoding_node
        from harness.models.adapter import generation_kwargs

        c = self.cfg
        layers = self.layers(adapter)
        head = adapter.site("lm_head")
        norm = adapter.site("final_norm") if c["final_norm"] else None

        def generate(batch: Any, decoding: dict, logits_processors: Sequence | None = None, **kw: Any):
            d = dict(decoding_node(decoding))
            if d["strategy"] == "beam" or int(kw.get("num_beams") or 1) > 1:
                raise NotImplementedError("dola supports decoding.strategy greedy and sample, not beam search "
                                          "(as transformers' DoLa: num_beams == 1)")
            penalty = c["repetition_penalty"] if c["repetition_penalty"] is not None else d["repetition_penalty"]
            d["repetition_penalty"] = None
            generation_kwargs(d, adapter.tokenizer)  # validate early
            taps = LayerTaps(adapter.decoder_layers(), layers)
            proc = DolaProcessor(taps, layers, head, norm, float(c["relative_top"]), bool(c["reference_batch_mean"]),
                                 penalty)
            try:  # repetition_penalty=1.0: no checkpoint generation_config penalty before the contrast either
                return adapter.generate_ids(batch, d, [proc, *(logits_processors or [])],
                                            **{**kw, "repetition_penalty": 1.0})
            finally:
                taps.remove()

        return generate

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Off (`layers: null`): nothing; else a plan whose generate_fn runs DoLa."""
        if self.cfg["layers"] is None:
            yield GenerationPlan()
            return
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
