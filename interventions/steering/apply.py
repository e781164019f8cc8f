"""Applying steering directions: where (`site`) and how (`mode`) a direction changes the hidden states.

- `site: block` (default): the output of decoder / vision block l, i.e. the residual stream;
  `site: mlp`: the output of block l's MLP, before it is added to the residual stream (VTI's
  released code wraps each block's `mlp`; OPT blocks have no `mlp` module, their MLP ends in `fc2`).
- `mode: add` (default): `h + lam * d`;
  `mode: renorm`: VTI's `normalize(normalize(h) + 0.1 * lam * normalize(d)) * |h|` per token
  (interventions/steering/reference.py), which tilts h towards d and keeps its norm, so only the
  direction of d matters and lam is on VTI's scale.
Text directions [D] apply at every position (`positions: all`) or only at the last position of each
forward call (`positions: last`); vision directions [D] or [positions, D] apply at every position.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from harness.models.adapter import resolve_module
from interventions.steering import block_output, block_path, with_block_output
from interventions.steering.reference import renormalised_add, unit_scaled

SITES = ("block", "mlp")
MODES = ("add", "renorm")
POSITIONS = ("all", "last")
MLP_NAMES = ("mlp", "fc2")  # LLaMA / Mistral / CLIP / BLIP vision blocks; OPT


def check_choice(key: str, value: str, choices: tuple) -> str:
    """`value` if it is one of `choices`, else a ValueError naming the config key."""
    if value not in choices:
        raise ValueError(f"{key}={value!r}; valid choices: {', '.join(choices)}")
    return value


def mlp_path(adapter: Any, site: str, layer: int) -> str:
    """Module path of the MLP of block `layer` of `site` ('decoder_layers' or 'vision_layers')."""
    block = block_path(adapter, site, layer)
    module = resolve_module(adapter.model, block)
    for name in MLP_NAMES:
        if isinstance(getattr(module, name, None), torch.nn.Module):
            return f"{block}.{name}"
    raise KeyError(f"{block} ({type(module).__name__}) has no MLP module named {' or '.join(MLP_NAMES)}; "
                   f"use intervention.site=block")


def hook_path(adapter: Any, kind: str, layer: int, site: str) -> str:
    """Module path to hook for a `text` or `vision` direction of `layer` at `site`."""
    blocks = "decoder_layers" if kind == "text" else "vision_layers"
    return block_path(adapter, blocks, layer) if site == "block" else mlp_path(adapter, blocks, layer)


def prepared_vector(direction: torch.Tensor, lam: float, mode: str, dtype: torch.dtype,
                    device: Any) -> torch.Tensor:
    """What the hook adds: `lam * d` in the model's dtype (add), or `lam * normalize(d)` in float32 (renorm)."""
    if mode == "renorm":
        return unit_scaled(direction, lam).to(device)
    return (lam * direction.float()).to(device=device, dtype=dtype)


def steering_hook(vec: torch.Tensor, mode: str, positions: str = "all", name: str = "") -> Callable:
    """A forward hook changing a module's output hidden states by `vec` (from `prepared_vector`)."""

    def shift(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return renormalised_add(h, v) if mode == "renorm" else h + v

    def hook(module, args, out):
        h = block_output(out)
        v = vec if vec.device == h.device else vec.to(h.device)  # device_map: blocks on several GPUs
        if v.dim() == 2 and h.shape[-2] != v.shape[0]:
            raise ValueError(f"{name} has {v.shape[0]} positions but its module outputs {h.shape[-2]}; "
                             f"build the vectors for this model and image resolution")
        if positions == "last":
            h = h.clone()
            h[:, -1] = shift(h[:, -1], v)
        else:
            h = shift(h, v)
        return with_block_output(out, h)

    return hook


def steering_hooks(adapter: Any, kind: str, directions: Mapping[int, torch.Tensor], lam: float,
                   site: str = "block", mode: str = "add", positions: str = "all") -> dict[str, Callable]:
    """{module path: hook} steering `kind` ('text' | 'vision') layers by `directions` at strength lam.

    Every module path is resolved first (a layer out of range, a block without an MLP: an error);
    lam == 0 then gives no hooks at all, so the model is exactly the baseline.
    """
    paths = {layer: hook_path(adapter, kind, layer, site) for layer in directions}
    if lam == 0.0:
        return {}
    dtype = next(adapter.model.parameters()).dtype
    hooks = {}
    for layer, d in directions.items():
        vec = prepared_vector(d, lam, mode, dtype, adapter.device)
        hooks[paths[layer]] = steering_hook(
            vec, mode, positions if kind == "text" else "all", f"{kind}.{layer}")
    return hooks
