"""The judged-benchmark layer: benchmarks whose answers an LLM judge reads before they are scored.

A ``JudgedBenchmark`` gets the ``judge`` config node under ``cfg["judge"]`` (see
``configs/judge/default.yaml``; a null key takes the benchmark's ``published_judge`` value), its
prompts as data files (``judge.prompt`` overrides the main one), and one ``JudgeEngine`` with the
reply cache. Every score it returns carries ``judge``: the judge id, model, server, sampling
settings, the sha256 of every prompt used, and the request counts (``api_calls`` = HTTP requests
actually sent; 0 on a cached rerun). Its leaderboard label names the judge and the main prompt's
hash, so scores from two judges never share a column. A run whose judge requests all failed
raises ``JudgeUnavailableError`` (with ``judge.strict=true``, any failed request does).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from benchmarks.base import Benchmark
from harness.judge.engine import JudgeEngine, JudgeOutcome, JudgeUnavailableError, require_some_success, summarise
from harness.judge.settings import JudgeSettings, Prompt

log = logging.getLogger(__name__)


class JudgedBenchmark(Benchmark):
    """A benchmark scored with the help of an LLM judge (subclasses set the class attributes)."""

    #: the judge request of the benchmark's reference evaluation (model, temperature, max_tokens, top_p)
    published_judge: Mapping[str, Any] = {}
    #: the shipped main judge prompt (relative to benchmarks/data) and its placeholders
    prompt_file: str = ""
    prompt_fields: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        super().__init__(cfg)
        self._settings: JudgeSettings | None = None
        self._prompts: dict[str, Prompt] = {}

    # -- configuration ------------------------------------------------------------------
    def uses_judge(self) -> bool:
        """Whether scoring asks the judge at all (rule-only modes do not)."""
        return True

    @property
    def judge_settings(self) -> JudgeSettings:
        """The judge settings: the ``judge`` config node over the benchmark's published judge."""
        if self._settings is None:
            self._settings = JudgeSettings.from_config(self.cfg.get("judge"), self.published_judge)
        return self._settings

    def load_prompt(self, name: str = "main", path: str | None = None, fields: tuple[str, ...] | None = None) -> Prompt:
        """A judge prompt by name; ``main`` is ``judge.prompt`` or the shipped ``prompt_file``."""
        if name not in self._prompts:
            if name == "main":
                path, fields = self.judge_settings.prompt or self.prompt_file, self.prompt_fields
            if not path:
                raise ValueError(f"{self.name}: no file for judge prompt {name!r}")
            self._prompts[name] = Prompt.load(path, tuple(fields or ()))
        return self._prompts[name]

    def judge_model(self) -> str | None:
        """The judge model id actually used (the published judge when `judge.model` is null); None in rule modes."""
        return self.judge_settings.model if self.uses_judge() else None

    def label(self) -> str:
        """The base label plus, when the judge is used, its id and the main prompt's hash."""
        base = super().label()
        if not self.uses_judge():
            return base
        return f"{base}/judge={self.judge_settings.judge_id()}#{self.load_prompt().sha256[:8]}"

    def engine(self) -> JudgeEngine:
        """A JudgeEngine (client, cache, re-asks, concurrency) for the judge settings."""
        from harness.judge import make_engine

        return make_engine(self.judge_settings)

    # -- results ------------------------------------------------------------------------
    def judge_summary(self, outcomes: Sequence[JudgeOutcome]) -> dict:
        """The ``judge`` block of the scores; raises when the judge could not be reached at all.

        JudgeUnavailableError when every request failed; with ``judge.strict``, also when any did.
        """
        if not self.uses_judge():
            return {"id": None, "requests": 0, "api_calls": 0}
        s = self.judge_settings
        out = {**s.record(), "prompts": {k: {"path": p.path, "sha256": p.sha256} for k, p in self._prompts.items()},
               "prompt_sha256": self.load_prompt().sha256, **summarise(outcomes)}
        require_some_success(outcomes, self.name)
        failed = [o for o in outcomes if o.status == "request_failed"]
        if failed:
            log.warning("%s: %d of %d judge requests failed, e.g. %s: %s", self.name, len(failed), len(outcomes),
                        failed[0].id, failed[0].reason)
            if s.strict:
                raise JudgeUnavailableError(f"{self.name}: {len(failed)} judge requests failed (judge.strict=true); "
                                            f"first error: {failed[0].reason}")
        log.info("%s: %d judge requests, %d HTTP requests sent, %d parse failures, %d request failures",
                 self.name, out["requests"], out["api_calls"], out["parse_failures"], out["request_failures"])
        return out


def percent(num: float, den: float) -> float | None:
    """100 * num / den, or None when the denominator is 0."""
    return 100.0 * num / den if den else None
