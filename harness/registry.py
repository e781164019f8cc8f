"""Registries by name for model families, benchmarks and interventions."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory map that names the valid choices when a lookup fails."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self._modules = modules
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a factory (class or function) under `name`."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def _import_all(self, until: str | None = None) -> None:
        # Modules that do not exist (yet) are skipped; errors inside existing ones propagate. With `until`,
        # stop once that name is registered (a scoring run need not import the judge client, say).
        for mod in self._modules:
            if until is not None and until in self._entries:
                return
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)

    def get(self, name: str) -> T:
        """The factory registered under `name`; a KeyError lists the valid names."""
        self._import_all(until=name)
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._import_all()
        return sorted(self._entries)


BENCHMARKS: Registry = Registry(
    "benchmark",
    (
        "benchmarks.chair",
        "benchmarks.pope",
        "benchmarks.repope",
        "benchmarks.amber",
        "benchmarks.smoke",
        "benchmarks.mme",
        "benchmarks.gpt4v_aided",
        "benchmarks.hallusionbench",
        "benchmarks.mmhal_bench",
        "benchmarks.object_halbench",
    ),
)
INTERVENTIONS: Registry = Registry(
    "intervention",
    (
        "interventions.none",
        "interventions.head_guide",
        "interventions.damro",
        "interventions.vcd",
        "interventions.pai",
        "interventions.icd",
        "interventions.m3id",
        "interventions.dola",
        "interventions.steer",
        "interventions.warn",
        "interventions.first_token_probe",
        "interventions.mirage",
        "interventions.opera",
    ),
)
FAMILIES: Registry = Registry("model family", ("harness.models.families",))
