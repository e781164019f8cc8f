"""`warn`: flag likely hallucinated object words while generating, without changing the text.

A VAR + MLP detector (``harness.detect``; trained with ``halluc-bench-extract-var`` and
``halluc-bench-train-detector``) scores every object word CHAIR finds in the answer. The visual
attention ratio of each decoding step is read by forward hooks on the decoder's attention modules
(eager attention weights; the hooks only read), and a never-stopping stopping criterion records the
generated ids, so the decoding itself is untouched: the text equals the baseline's exactly.

Each answer record gets ``intervention_info``::

    {"objects": [{"word": "dog", "object": "dog", "prob": 0.83, "warn": true,
                  "start": 12, "end": 15, "token": 4}, ...],
     "var_source": "generation"}

``prob`` is the detector's P(hallucinated) for the word's first sub-token, ``warn`` is
``prob > threshold``; ``start``/``end`` are character offsets in the answer and ``token`` the index of
the word's first generated token. When the per-step capture cannot be lined up with the tokens (beam
search, or a decoding engine composed in that runs extra forward passes) the VAR is recomputed by
teacher forcing the answer (``var_source: teacher_forced``).

Config: ``detector`` (path to X, X.safetensors or X.json), ``threshold`` (0.5).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention


@INTERVENTIONS.register("warn")
class Warn(Intervention):
    """Per-object hallucination probabilities from a VAR detector, recorded beside unchanged answers."""

    name = "warn"

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        if not self.cfg.get("detector"):
            raise ValueError("intervention=warn needs intervention.detector=PATH "
                             "(a detector trained with halluc-bench-train-detector)")
        self.threshold = float(self.cfg["threshold"])
        self.detector = None

    def setup(self, adapter: Any) -> None:
        """Load the detector and check it fits the model (layer range, heads, eager attention)."""
        from harness.detect.mlp import VARDetector
        from harness.detect.var import num_heads, check_eager

        check_eager(adapter)
        self.detector = VARDetector.load(self.cfg["detector"])
        start, end = self.detector.layers
        if end >= adapter.num_layers:
            raise ValueError(f"detector {self.cfg['detector']} uses layers {start}-{end}; "
                             f"the model has {adapter.num_layers}")
        if self.detector.num_heads != num_heads(adapter):
            raise ValueError(f"detector {self.cfg['detector']} was trained on {self.detector.num_heads} heads; "
                             f"the model has {num_heads(adapter)}")

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Hooks capture each step's VAR; postprocess scores the answer's object words into row_info."""
        from harness.detect.var import capture_generation

        if self.detector is None:
            self.setup(adapter)
        n = batch.inputs["input_ids"].shape[0]
        info: list[dict] = [{} for _ in range(n)]
        with capture_generation(adapter, batch) as (cap, rec, gen_kwargs):
            def post(answers: list[str], b: Any) -> list[str]:
                cap.enabled = False  # no more recording (the fallback runs its own forward pass)
                for row, objects, source in self.score(adapter, b, answers, cap, rec):
                    info[row]["objects"] = objects
                    info[row]["var_source"] = source
                return answers

            yield GenerationPlan(generate_kwargs=gen_kwargs, row_info=info, postprocess=post)

    def score(self, adapter: Any, batch: Any, answers: list[str], cap: Any, rec: Any):
        """(row, objects, var source) per answer."""
        from harness.detect.var import (answer_mentions, generation_var, mention_features,
                                        teacher_forced_answers, token_char_spans)

        got = generation_var(cap, rec, batch)
        per_row: list[tuple[str, list, torch.Tensor, str] | None] = [None] * len(answers)
        if got is not None:
            new_ids, var = got
            for b in range(len(answers)):
                text, spans = token_char_spans(adapter.tokenizer, new_ids[b].tolist())
                if text.strip() == answers[b].strip():
                    per_row[b] = (text, spans, var[b], "generation")
        redo = [b for b, r in enumerate(per_row) if r is None]
        if redo:
            sub = _sub_batch(batch, redo)
            for b, (text, spans, v) in zip(redo, teacher_forced_answers(adapter, sub, [answers[i] for i in redo])):
                per_row[b] = (text, spans, v, "teacher_forced")
        for b, answer in enumerate(answers):
            text, spans, v, source = per_row[b]
            found = mention_features(answer, text, spans, v, answer_mentions(answer))
            located = [(m, k, f) for m, k, f in found if f is not None]
            probs = self.detector.predict_proba(torch.stack([f for _, _, f in located])) if located else []
            objects = []
            for (m, k, _), p in zip(located, probs):
                objects.append({"word": m["word"], "object": m["object"], "prob": float(p),
                                "warn": bool(p > self.threshold), "start": m["start"], "end": m["end"],
                                "token": int(k)})
            for m, k, f in found:
                if f is None:
                    objects.append({"word": m["word"], "object": m["object"], "prob": None, "warn": None,
                                    "start": m["start"], "end": m["end"], "token": None})
            objects.sort(key=lambda o: (o["start"] is None, o["start"] or 0))
            yield b, objects, source


def _sub_batch(batch: Any, rows: list[int]) -> Any:
    """The batch restricted to some rows (tensor inputs indexed along the batch axis)."""
    from dataclasses import replace

    if rows == list(range(batch.inputs["input_ids"].shape[0])):
        return batch
    idx = torch.tensor(rows, device=batch.inputs["input_ids"].device)
    n = batch.inputs["input_ids"].shape[0]
    inputs = {k: (v.index_select(0, idx.to(v.device)) if torch.is_tensor(v) and v.dim() and v.shape[0] == n else v)
              for k, v in batch.inputs.items()}
    return replace(batch, inputs=inputs, prompts=[batch.prompts[i] for i in rows],
                   images=[batch.images[i] for i in rows] if batch.images else [])
