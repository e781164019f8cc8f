"""The intervention contract: a training-free change to how a model answers, applied per batch."""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from harness.errors import ConfigValueError
from harness.registry import INTERVENTIONS


@dataclass
class GenerationPlan:
    """What an intervention contributes to one batch's generation.

    - logits_processors: appended to `generate`'s logits processors
    - generate_kwargs: extra keyword arguments for `generate`
    - generate_fn: replaces `adapter.generate_ids(batch, decoding, processors, **kwargs)` (a decoding
      engine such as contrastive decoding); at most one per composed plan
    - row_info: per-row dicts copied into the answer records as `intervention_info`
    - postprocess: maps (answers, batch) -> answers after decoding (e.g. a probe's decision)
    """

    logits_processors: list = field(default_factory=list)
    generate_kwargs: dict = field(default_factory=dict)
    generate_fn: Callable | None = None
    row_info: list[dict] | None = None
    postprocess: Callable | None = None


class Intervention:
    """Base class; `none` is this class itself. Subclasses override `setup` and `session`."""

    name = "none"
    #: parameter name whose value 0 must reproduce the baseline (documentation and tests)
    strength_key: str | None = None

    def __init__(self, cfg: Mapping[str, Any] | None = None):
        values = dict(cfg or {})
        if self.name != "compose":
            from harness.config import typed_node

            # the YAML values of configs/intervention/<name>.yaml under the given ones, type- and range-checked
            values = typed_node("intervention", {**values, "name": self.name})
        self.cfg = values
        check_numbers(self.name, self.cfg)
        self.resolved_for: Any = None  # the model the parameters were resolved against

    def params(self) -> dict:
        """The parameters that identify this intervention in fingerprints and leaderboards (resolved values
        once `resolve` ran: what runs, not what was asked)."""
        return {k: v for k, v in sorted(self.cfg.items()) if k != "name" and not k.startswith("_")}

    def model_defaults(self, model: Any) -> dict:
        """Values for parameters left null that depend on the model (a ModelInfo: family object, HF config)."""
        return {}

    def resolve(self, model: Any) -> None:
        """Fill the null parameters with this model's defaults, so params() reports what runs (idempotent)."""
        if self.resolved_for is model:
            return
        for key, value in self.model_defaults(model).items():
            if self.cfg.get(key) is None:
                self.cfg[key] = value
        check_numbers(self.name, self.cfg)
        self.resolved_for = model

    def label(self) -> str:
        """A short human-readable label: name plus parameters."""
        p = self.params()
        return self.name + (" " + ", ".join(f"{k}={v}" for k, v in p.items()) if p else "")

    def setup(self, adapter: Any) -> None:
        """Called once after the model is loaded (load vectors, check sites, ...)."""

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Active while one batch is generated; yields this intervention's GenerationPlan."""
        yield GenerationPlan()


class Composite(Intervention):
    """Several interventions at once: their sessions nest, their plans merge."""

    name = "compose"

    def __init__(self, members: list[Intervention]):
        super().__init__({})
        self.members = members

    def params(self) -> dict:
        """Each member's name and parameters."""
        return {"members": [{"name": m.name, **m.params()} for m in self.members]}

    def label(self) -> str:
        """The members' labels joined with ' + '."""
        return " + ".join(m.label() for m in self.members)

    def resolve(self, model: Any) -> None:
        """Resolve every member."""
        for m in self.members:
            m.resolve(model)

    def setup(self, adapter: Any) -> None:
        """Set up every member."""
        for m in self.members:
            m.setup(adapter)

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """Enter every member's session and merge their plans.

        Members may fill their per-row info during generation or in their postprocess, so the
        merged plan's postprocess runs every member's postprocess and then merges row info.
        """
        with ExitStack() as stack:
            plans = [stack.enter_context(m.session(adapter, batch)) for m in self.members]
            merged = GenerationPlan()
            for m, p in zip(self.members, plans):
                merged.logits_processors += p.logits_processors
                merged.generate_kwargs.update(p.generate_kwargs)
                if p.generate_fn is not None:
                    if merged.generate_fn is not None:
                        raise ValueError(f"cannot compose two decoding engines ({m.name} and another)")
                    merged.generate_fn = p.generate_fn
            posts = [p.postprocess for p in plans if p.postprocess is not None]

            def finish(answers, b):
                for f in posts:
                    answers = f(answers, b)
                merged.row_info = merge_row_info([p.row_info for p in plans])
                return answers

            merged.postprocess = finish
            yield merged


def check_numbers(name: str, cfg: Mapping[str, Any]) -> None:
    """Raise a ValueError naming `intervention.<key>` for a NaN or infinite number (it would run silently)."""
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigValueError(f"intervention.{key}: expected a finite number, got {value!r} ({name})")


def merge_row_info(infos: list[list[dict] | None]) -> list[dict] | None:
    """Per-row dicts of several plans merged row by row (None when no plan has any)."""
    present = [x for x in infos if x is not None]
    if not present:
        return None
    return [{k: v for info in present for k, v in (info[i] or {}).items()} for i in range(len(present[0]))]


def build_intervention(cfg: Mapping[str, Any] | None) -> Intervention:
    """An intervention from its config node; `name: compose` with `members: [...]` builds a Composite."""
    cfg = dict(cfg or {"name": "none"})
    name = cfg.get("name", "none")
    if name == "compose":
        members = cfg.get("members") or []
        if not members:
            raise ValueError("intervention.members is empty: give a list of intervention configs to compose")
        # each member starts from its own config's values, so it equals the same choice alone
        return Composite([build_intervention(dict(m)) for m in members])
    return INTERVENTIONS.get(name)(cfg)
