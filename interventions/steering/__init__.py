"""Latent steering directions: building them (VTI, VaLSe) and the shared machinery both methods use.

Build with `halluc-bench-build-steering model=... steering.method=vti|valse steering.out=PATH`
(or `build_from_config`), apply with `intervention=steer intervention.vectors=PATH` (interventions/steer.py).

- `interventions.steering.vti`: Visual and Textual Intervention (Liu et al., 2024).
- `interventions.steering.valse`: Vision-aware Latent Steering (Chen et al., 2025), our reimplementation.
- `interventions.steering.reference`: VTI's released computations (`combine: reference`, renorm).
- `interventions.steering.apply`: where and how `steer` applies a direction (`site`, `mode`).
- `interventions.steering.pairs`: contrastive pair data; `interventions.steering.io`: safetensors + sidecar.

Directions are read at the outputs of blocks: `text.<l>` at decoder block l (the residual stream;
with `steering.vti.text_last: final_norm` the last one after the final norm, as VTI),
`vision.<l>` at vision encoder block l. `steer` applies them to block l's output (`site: block`)
or to its MLP's output (`site: mlp`, VTI's code).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from harness.hooks import forward_hooks

METHODS = ("vti", "valse")
COMBINES = ("pca", "svd", "mean")  # per-slot; VTI also takes "reference" (interventions/steering/reference.py)
SCALES = ("projection", "unit")


# ---- model facts -----------------------------------------------------------------------------
def text_hidden_size(adapter: Any) -> int:
    """Width of the decoder's residual stream."""
    cfg = adapter.model.config
    return int(getattr(cfg, "text_config", cfg).hidden_size)


def vision_hidden_size(adapter: Any) -> int:
    """Width of the vision encoder's blocks."""
    return int(adapter.model.config.vision_config.hidden_size)


def num_vision_layers(adapter: Any) -> int:
    """Number of vision encoder blocks (the `vision_layers` site)."""
    return len(adapter.site("vision_layers"))


def patch_size(adapter: Any) -> int:
    """The vision encoder's patch size in pixels."""
    patch = adapter.model.config.vision_config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)  # InternViT stores (height, width)


def block_path(adapter: Any, site: str, layer: int) -> str:
    """Module path of block `layer` of a ModuleList site ('decoder_layers' or 'vision_layers')."""
    n = len(adapter.site(site))
    if not 0 <= int(layer) < n:
        raise IndexError(f"{site} layer {layer} is out of range: {adapter.name} has {n} (0..{n - 1})")
    return f"{adapter.site_path(site)}.{int(layer)}"


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first element of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def with_block_output(out: Any, hidden: torch.Tensor) -> Any:
    """`out` with its hidden states replaced by `hidden`, in the same structure."""
    if isinstance(out, tuple):
        return (hidden,) + tuple(out[1:])
    if isinstance(out, list):
        return [hidden] + list(out[1:])
    return hidden


@contextmanager
def capture_blocks(adapter: Any, site: str, layers: Sequence[int], detach: bool = True) -> Iterator[dict]:
    """Record each listed block's output hidden states (the latest call) into the yielded dict."""
    got: dict[int, torch.Tensor] = {}

    def make(layer: int):
        def hook(module, args, out):
            h = block_output(out)
            got[layer] = h.detach() if detach else h
        return hook

    with forward_hooks(adapter.model, {block_path(adapter, site, l): make(l) for l in layers}):
        yield got


# ---- inputs --------------------------------------------------------------------------------
def encode(adapter: Any, image: Any, text: str) -> dict:
    """Model inputs for one image and a full text (prompt plus any answer), on the model's device and dtype.

    The single-row counterpart of `adapter.prepare` for texts that already went through the template.
    """
    enc = adapter.processor(images=[image], text=[text], return_tensors="pt", **adapter.spec.text_kwargs)
    return adapter.to_model(enc)


def answer_text(adapter: Any, question: str, answer: str, sep: str = " ") -> str:
    """The templated prompt for `question`, then `sep`, then `answer` (teacher forcing)."""
    return adapter.format_prompt(question) + sep + answer.strip()


def vision_forward(adapter: Any, pixel_values: torch.Tensor) -> Any:
    """Run only the vision tower on pixel values ([N, C, H, W], or [N, tiles, C, H, W] flattened)."""
    pv = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values
    return adapter.site("vision_tower")(pixel_values=pv)


def patch_grid(pixel_values: torch.Tensor, patch: int) -> tuple[int, int]:
    """(rows, cols) of the patch grid of pixel values [..., C, H, W]."""
    h, w = pixel_values.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    return h // patch, w // patch


def mask_patches(pixel_values: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixel values with the patches where `mask` is True replaced by each image's per-channel mean.

    pixel_values: [..., C, H, W]; mask: bool [..., rows, cols] with the same leading shape (one grid
    per image or AnyRes tile). This is VTI's `mask_patches` (mean fill), vectorised.
    """
    lead = pixel_values.shape[:-3]
    pv = pixel_values.reshape(-1, *pixel_values.shape[-3:])
    m = mask.reshape(-1, *mask.shape[-2:]).to(pv.device)
    if m.shape[0] != pv.shape[0] or tuple(m.shape[-2:]) != patch_grid(pixel_values, patch):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit pixel values {tuple(pixel_values.shape)}")
    full = m.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2).unsqueeze(1)  # [N, 1, H, W]
    mean = pv.mean(dim=(2, 3), keepdim=True)
    return torch.where(full, mean.expand_as(pv), pv).reshape(pixel_values.shape)


def random_patch_mask(n: int, grid: tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [n, rows, cols]: in each grid, `int(ratio * rows * cols)` patches chosen uniformly at random."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask_ratio={ratio} must be in [0, 1]")
    total = grid[0] * grid[1]
    k = int(ratio * total)
    mask = torch.zeros(n, total, dtype=torch.bool)
    for i in range(n):
        mask[i, torch.randperm(total, generator=generator)[:k]] = True
    return mask.reshape(n, *grid)


# ---- directions ----------------------------------------------------------------------------
def principal_direction(diffs: torch.Tensor, combine: str = "pca", scale: str = "projection") -> torch.Tensor:
    """One direction per trailing slot from difference rows: diffs [N, *S, D] -> [*S, D].

    combine:
      - `pca`: the first principal component of the (centred) differences, sign-aligned with their
        mean (VTI's PCA, per slot);
      - `svd`: the top right-singular vector of the uncentred difference matrix E = U S V^T,
        sign-aligned with the mean (VaLSe's formulation);
      - `mean`: the mean difference itself.
    (VTI's released computation, `combine: reference`, groups the slots differently:
    interventions/steering/reference.py.)
    scale (for pca/svd): `projection` multiplies the unit vector by the mean difference's length
    along it (so lam=1 shifts by the average contrast), `unit` keeps it unit-norm.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine={combine!r}; valid choices: {', '.join(COMBINES)}")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; valid choices: {', '.join(SCALES)}")
    x = diffs.float()
    if x.shape[0] < 2 and combine in ("pca", "svd"):
        raise ValueError(f"{combine} needs at least 2 difference rows, got {x.shape[0]}; use more pairs")
    mean = x.mean(0)
    if combine == "mean":
        return mean
    z = x - mean if combine == "pca" else x
    _, _, vh = torch.linalg.svd(z.movedim(0, -2), full_matrices=False)  # [*S, N, D] -> vh [*S, k, D]
    pc = vh[..., 0, :]
    sign = torch.sign((pc * mean).sum(-1, keepdim=True))
    pc = pc * torch.where(sign == 0, torch.ones_like(sign), sign)
    if scale == "unit":
        return pc
    return pc * (pc * mean).sum(-1, keepdim=True)


# ---- building ------------------------------------------------------------------------------
def build_directions(adapter: Any, pairs: list, method: str, **params: Any) -> tuple[dict, dict]:
    """(tensors, info) for `method` over the pairs; `params` are the method's keyword arguments."""
    if method == "vti":
        from interventions.steering.vti import build_vti

        return build_vti(adapter, pairs, **params)
    if method == "valse":
        from interventions.steering.valse import build_valse

        return build_valse(adapter, pairs, **params)
    raise ValueError(f"steering.method={method!r}; valid choices: {', '.join(METHODS)}")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def method_params(steering_cfg: Mapping[str, Any]) -> dict:
    """The keyword arguments of the configured method: its own node plus seed, combine and scale."""
    method = steering_cfg.get("method", "vti")
    params = dict(steering_cfg.get(method) or {})
    for key in ("seed", "combine", "scale"):
        if steering_cfg.get(key) is not None:
            params[key] = steering_cfg[key]
    return params


def build_from_config(model_cfg: Mapping[str, Any], steering_cfg: Mapping[str, Any],
                      adapter: Any = None) -> tuple[Path, Path, dict]:
    """Build directions as configured, save `<out>.safetensors` + `<out>.json`; returns both paths and the sidecar.

    model_cfg is a `configs/model/*.yaml` node; steering_cfg the `steering` node of
    configs/build_steering.yaml. `adapter` skips loading the model (tests).
    """
    import json

    from interventions.steering.io import save_steering
    from interventions.steering.pairs import DEFAULT_IMAGE_DIR, DEFAULT_PAIRS, load_pairs

    method = steering_cfg.get("method", "vti")
    if method not in METHODS:
        raise ValueError(f"steering.method={method!r}; valid choices: {', '.join(METHODS)}")
    out = steering_cfg.get("out")
    if not out:
        raise ValueError("steering.out is required: the output path stem (writes OUT.safetensors and OUT.json)")
    pairs_file = Path(steering_cfg.get("pairs") or DEFAULT_PAIRS)
    pairs = load_pairs(pairs_file, steering_cfg.get("image_dir"), steering_cfg.get("num_pairs"))
    if adapter is None:
        from harness.models.loader import load_adapter

        adapter = load_adapter(model_cfg)
    if adapter.family != model_cfg.get("family", adapter.family):
        raise ValueError(f"adapter family {adapter.family!r} differs from model.family {model_cfg.get('family')!r}")
    params = method_params(steering_cfg)
    tensors, info = build_directions(adapter, pairs, method, **params)
    meta = {
        "method": method,
        "model": {k: model_cfg.get(k) for k in ("name", "family", "path", "tiny", "tiny_seed", "dtype")},
        "hidden_size": {"text": text_hidden_size(adapter), "vision": vision_hidden_size(adapter)},
        "num_layers": {"text": adapter.num_layers, "vision": num_vision_layers(adapter)},
        "data": {"file": str(pairs_file.resolve()), "sha256": file_sha256(pairs_file),
                 "image_dir": str(Path(steering_cfg.get("image_dir") or DEFAULT_IMAGE_DIR).resolve()),
                 "num_pairs": len(pairs), "pair_ids": [p.id for p in pairs]},
        "params": json.loads(json.dumps(params, default=str)),
        **info,
        "norms": {k: round(float(v.float().norm()), 6) for k, v in sorted(tensors.items())},
    }
    st_path, js_path = save_steering(out, tensors, meta)
    return st_path, js_path, json.loads(js_path.read_text())
