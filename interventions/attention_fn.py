"""Pre-softmax attention edits through transformers' `AttentionInterface`, scoped to a context manager.

A reusable mechanism for interventions and diagnosis tools that need to change (or only look at) the
attention logits of some decoder layers, without monkey-patching transformers:

    with edit_attention_logits(attn_modules, edit=fn, capture=cb):
        model.generate(...)

How it works
------------
- At import, one attention function is registered under the key `ATTN_KEY` in
  `transformers.AttentionInterface` (the function) and in `transformers.masking_utils.
  AttentionMaskInterface` (eager's additive float mask, so the function always receives a 4D mask
  `[B, 1, q, k]` with 0 = attend and `finfo(dtype).min` = masked, exactly as eager attention does).
- On entry the config object shared by the given attention modules (the language model's text config;
  vision tower and Q-Former configs are separate objects and are left alone) gets
  `_attn_implementation = ATTN_KEY`; on exit the previous value is restored, also on errors.
- The registered function dispatches per module: modules named by an active edit get eager attention
  computed here with the edit applied between the logits and the softmax; every other layer of that
  model runs its previous implementation (the model file's own `eager_attention_forward` when it was
  `eager`, so unedited layers are bit-identical to the baseline; `sdpa` gets the equivalent float mask).
  Previous implementations other than eager/sdpa (flash, flex, paged) cannot take a float mask: entering
  raises a ValueError asking for `model.attn_implementation=eager`.
- Sessions nest: a second `edit_attention_logits` on the same model stacks its edit on top (edits of the
  same module run in entry order); the previous implementation is restored when the outermost exits.

The edit
--------
`edit(module, scores, mask) -> (scores, mask)` where `scores` = query @ key^T * scaling
(`[B, H, q, k]`, heads after key/value repetition for GQA, *before* the mask is added) and `mask` the
additive float mask or None. The returned pair gives `softmax(scores + mask)` in float32, cast to the query
dtype, then dropout (training only) and `@ value` - the op order of transformers' eager attention, so an
edit that returns its inputs unchanged reproduces eager attention bit for bit.
`capture(module, record)` (optional) gets a dict with `query`, `key` (after repetition), `scores`, `mask`,
`edited_scores`, `edited_mask`, `weights` (post-softmax, query dtype) for every call of an edited module.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

ATTN_KEY = "halluc_bench_logits_edit"
FALLBACK_OK = (None, "eager", "sdpa")

Edit = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]
Capture = Callable[[nn.Module, dict], None]


@dataclass
class _Active:
    """One entered `edit_attention_logits` block."""

    modules: set[int]
    edit: Edit | None
    capture: Capture | None


@dataclass
class _ConfigState:
    """Per text-config state: the implementation to restore and the stack of active edits."""

    config: Any
    previous: str | None
    stack: list[_Active] = field(default_factory=list)


_STATES: dict[int, _ConfigState] = {}


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, s, d] -> [B, kv_heads * n_rep, s, d] (transformers' llama `repeat_kv`)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _module_eager(module: nn.Module) -> Callable:
    """The `eager_attention_forward` of the module's own modeling file, else the generic one here."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if callable(fn) else _edited_eager


def _edited_eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  actives: Iterable[_Active] = (), **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (same op order as transformers') with the active edits between logits and softmax."""
    if kwargs.get("softcap") is not None:  # sliding windows are already in the mask; softcap is not
        raise ValueError(f"{type(module).__name__}: logit soft-capping is not supported by attention edits")
    n_rep = int(getattr(module, "num_key_value_groups", 1) or 1)
    key_states = repeat_kv(key, n_rep)
    value_states = repeat_kv(value, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    edited, mask = scores, attention_mask
    actives = list(actives)
    for a in actives:
        if a.edit is not None:
            edited, mask = a.edit(module, edited, mask)
    logits = edited + mask if mask is not None else edited
    weights = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value_states).transpose(1, 2).contiguous()
    for a in actives:
        if a.capture is not None:
            a.capture(module, {"query": query, "key": key_states, "scores": scores, "mask": attention_mask,
                               "edited_scores": edited, "edited_mask": mask, "weights": weights})
    return out, weights


def _dispatch(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The function registered under ATTN_KEY: edited eager for targeted modules, the previous one otherwise."""
    state = _STATES.get(id(getattr(module, "config", None)))
    if state is None:  # the key is set on a config we do not manage (e.g. a stale copy): plain eager
        return _module_eager(module)(module, query, key, value, attention_mask, **kwargs)
    actives = [a for a in state.stack if id(module) in a.modules]
    if actives:
        return _edited_eager(module, query, key, value, attention_mask, actives=actives, **kwargs)
    if state.previous in (None, "eager"):
        return _module_eager(module)(module, query, key, value, attention_mask, **kwargs)
    from transformers import AttentionInterface

    return AttentionInterface()[state.previous](module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_KEY, _dispatch)
    AttentionMaskInterface.register(ATTN_KEY, eager_mask)


_register()


def attention_config(modules: Iterable[nn.Module]) -> Any:
    """The one config object the attention modules read `_attn_implementation` from."""
    configs = {id(getattr(m, "config", None)): getattr(m, "config", None) for m in modules}
    if not configs:
        raise ValueError("no attention modules given")
    if None in configs.values():
        raise ValueError("an attention module has no `.config`; it does not dispatch through AttentionInterface")
    if len(configs) != 1:
        raise ValueError("the attention modules belong to different configs (several models); edit one at a time")
    return next(iter(configs.values()))


@contextmanager
def edit_attention_logits(modules: Iterable[nn.Module], edit: Edit | None = None,
                          capture: Capture | None = None) -> Iterator[None]:
    """Apply `edit` (and/or `capture`) to the pre-softmax logits of `modules` inside the block.

    `modules` are attention modules of one language model (e.g. `layers[i].self_attn`); every other
    attention layer of that model keeps its previous implementation. The model's previous
    `_attn_implementation` is restored on exit (also on errors).
    """
    modules = list(modules)
    config = attention_config(modules)
    key = id(config)
    state = _STATES.get(key)
    fresh = state is None
    if fresh:
        previous = getattr(config, "_attn_implementation", None)
        if previous not in FALLBACK_OK:
            raise ValueError(f"attention edits need the model loaded with attn_implementation eager or sdpa "
                             f"(it uses {previous!r}); set model.attn_implementation=eager")
        state = _ConfigState(config=config, previous=previous)
        _STATES[key] = state
        _set_impl(config, ATTN_KEY)
    active = _Active(modules={id(m) for m in modules}, edit=edit, capture=capture)
    state.stack.append(active)
    try:
        yield
    finally:
        state.stack.remove(active)
        if not state.stack:
            _set_impl(config, state.previous)
            _STATES.pop(key, None)


@contextmanager
def eager_attention(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block these attention modules compute eager attention and return their weights (for hooks
    that read them), while every other layer keeps its kernel (SDPA in plain runs). Modules may belong to
    several configs (language model, vision tower, Q-Former)."""
    from contextlib import ExitStack

    groups: dict[int, list[nn.Module]] = {}
    for m in modules:
        groups.setdefault(id(getattr(m, "config", None)), []).append(m)
    with ExitStack() as stack:
        for group in groups.values():
            stack.enter_context(edit_attention_logits(group))
        yield


def _set_impl(config: Any, value: str | None) -> None:
    # the internal attribute: the public setter would also recurse into sub-configs
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = value
    else:
        config._attn_implementation = value


def active_implementation(module: nn.Module) -> str | None:
    """The attention implementation the module currently dispatches to (for tests and diagnostics)."""
    return getattr(getattr(module, "config", None), "_attn_implementation", None)
