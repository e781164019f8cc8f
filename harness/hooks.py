"""Forward hooks added by module name inside a context manager: every hook point must resolve, all are removed."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch

from harness.models.adapter import resolve_module


@contextmanager
def forward_hooks(model: torch.nn.Module, hooks: Mapping[str, Callable], pre: bool = False,
                  prepend: bool = False) -> Iterator[None]:
    """Register `hooks` ({module path: hook fn}) on `model` for the duration of the block.

    Forward hooks get (module, args, output) and may return a replacement output; with
    `pre=True` they are forward-pre hooks (module, args, kwargs) -> (args, kwargs) | None.
    `prepend=True` runs them before the module's existing hooks and before any registered
    later without `prepend`: use it for hooks that *change* outputs, so that every observer
    sees the changed value. transformers 5 records `hidden_states` (LLaVA's projector input
    among them) with forward hooks it installs lazily on the first forward that asks for them;
    an appended hook would run before those only if it happened to be registered first.
    A path that does not resolve raises KeyError before any hook is added.
    """
    modules = {path: resolve_module(model, path) for path in hooks}
    handles = []
    try:
        for path, fn in hooks.items():
            if pre:
                handles.append(modules[path].register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend))
            else:
                handles.append(modules[path].register_forward_hook(fn, prepend=prepend))
        yield
    finally:
        for h in handles:
            h.remove()
