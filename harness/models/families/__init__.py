"""Model families: one module per VLM architecture, each one `ModelFamily` class registered by name.

Adding a family = adding one module here (sites, inputs, image encoding, positions, DAMRO recipe, span
geometry, tiny builder, defaults) plus `configs/model/<name>.yaml` and `configs/model/tiny_<name>.yaml`.
Every module of this package is imported when the registry is first asked, so nothing else lists families.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from harness.models.families.base import ModelFamily
from harness.registry import FAMILIES

_NOT_FAMILIES = {"base", "tiny_parts"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_FAMILIES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


@lru_cache(maxsize=None)
def get_family(name: str) -> ModelFamily:
    """The family object registered as `name`; a KeyError lists the valid names."""
    return FAMILIES.get(name)()


def family_names() -> list[str]:
    """Every registered family name, sorted."""
    return FAMILIES.names()


def all_families() -> list[ModelFamily]:
    """Every registered family object, sorted by name."""
    return [get_family(n) for n in family_names()]


def family_for_model_type(model_type: str) -> ModelFamily:
    """The family that serves checkpoints whose `config.model_type` is `model_type`."""
    for fam in all_families():
        if model_type in fam.model_types:
            return fam
    raise KeyError(f"no model family serves model_type {model_type!r}; known: "
                   + ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in all_families()))


def family_for_tiny(tiny_name: str) -> ModelFamily:
    """The family whose tiny offline model is `tiny_name` (e.g. tiny_llava -> llava)."""
    for fam in all_families():
        if fam.tiny_name == tiny_name:
            return fam
    raise KeyError(f"unknown tiny model {tiny_name!r}; valid choices: "
                   + ", ".join(sorted(f.tiny_name for f in all_families())))


__all__ = ["ModelFamily", "FAMILIES", "all_families", "family_for_model_type", "family_for_tiny", "family_names",
           "get_family"]
