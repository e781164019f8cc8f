"""`first_token_probe`: a linear probe on the first token's logits answers yes/no questions (LVLM-LP).

The model generates as usual; a forward hook on the LM head keeps the logits of the first
generated token, and a logistic-regression probe (``harness.detect.probe``, trained with
``halluc-bench-probe``) turns them into P(yes). On yes/no questions the probe's decision
replaces the answer ("Yes" when P(yes) > threshold, else "No"), as LVLM-LP scores POPE with the
probe's prediction; the model's own answer is kept in ``intervention_info``::

    {"model_answer": "No, there is not.", "probe_prob": 0.91, "probe_answer": "Yes"}

Which rows are yes/no questions (``rows``): ``all`` - every row (pure yes/no benchmarks such as
POPE); ``auto`` (default) - rows whose benchmark item has a yes/no label (POPE, MME, the smoke
questions) or, without a label, whose prompt asks a yes/no question: a sentence that starts with
an auxiliary verb (is, are, does, do, can, ...) and ends with "?", or that says "yes or no". Other rows
(captions, open questions) keep the model's answer and get ``{"probe": "not a yes/no question"}``.

Config: ``probe`` (path to the probe JSON), ``threshold`` (0.5), ``rows`` (auto | all).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention

_AUX = r"(?:is|are|am|was|were|does|do|did|can|could|will|would|should|has|have|had|may|might|must|shall)"
YES_NO_RE = re.compile(r"(?:^|[\n.!?:>\"]\s*|\s{2,})" + _AUX + r"\b[^?\n]*\?", re.IGNORECASE)
YES_OR_NO_RE = re.compile(r"\byes\s+or\s+no\b", re.IGNORECASE)


def is_yes_no_row(batch: Any, i: int, prompt: str) -> bool:
    """Whether row i is a yes/no question: its benchmark item's yes/no label when known, else the prompt."""
    items = getattr(batch, "items", None) or []
    if i < len(items) and "label" in items[i].meta:
        return str(items[i].meta["label"]).strip().lower() in ("yes", "no")
    return is_yes_no_prompt(prompt)


def is_yes_no_prompt(prompt: str) -> bool:
    """Whether a (templated) prompt asks a yes/no question (see the module docstring)."""
    return bool(YES_NO_RE.search(prompt) or YES_OR_NO_RE.search(prompt))


@INTERVENTIONS.register("first_token_probe")
class FirstTokenProbe(Intervention):
    """The probe's yes/no decision replaces the answer on yes/no questions."""

    name = "first_token_probe"

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        if not self.cfg.get("probe"):
            raise ValueError("intervention=first_token_probe needs intervention.probe=PATH "
                             "(a probe JSON written by halluc-bench-probe train)")
        if self.cfg["rows"] not in ("auto", "all"):
            raise ValueError(f"intervention.rows={self.cfg['rows']!r}; valid choices: auto, all")
        self.threshold = float(self.cfg["threshold"])
        self.probe = None

    def setup(self, adapter: Any) -> None:
        """Load the probe and check its width against the model's vocabulary (LM head outputs)."""
        from harness.detect.probe import LinearProbe

        self.probe = LinearProbe.load(self.cfg["probe"])
        width = getattr(adapter.site("lm_head"), "out_features", None)
        if width is not None and int(width) != self.probe.num_features:
            raise ValueError(f"probe {self.cfg['probe']} takes {self.probe.num_features} logits; "
                             f"the model's LM head has {width} outputs (trained for another model?)")

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Capture the first token's logits; postprocess replaces yes/no answers by the probe's decision."""
        from harness.detect.probe import FirstTokenLogits

        if self.probe is None:
            self.setup(adapter)
        n = batch.inputs["input_ids"].shape[0]
        info: list[dict] = [{} for _ in range(n)]
        cap = FirstTokenLogits(adapter, n)
        with cap.active():
            def post(answers: list[str], b: Any) -> list[str]:
                if cap.logits is None:
                    raise RuntimeError("first_token_probe: the LM head was not called during generation")
                out = list(answers)
                probs = self.probe.predict_proba(cap.logits)
                for i, (ans, prompt) in enumerate(zip(answers, b.prompts)):
                    if self.cfg["rows"] == "auto" and not is_yes_no_row(b, i, prompt):
                        info[i]["probe"] = "not a yes/no question"
                        continue
                    decision = "Yes" if probs[i] > self.threshold else "No"
                    info[i].update(model_answer=ans, probe_prob=float(probs[i]), probe_answer=decision)
                    out[i] = decision
                return out

            yield GenerationPlan(row_info=info, postprocess=post)
