"""Saving and loading steering directions: `<out>.safetensors` (tensors) plus `<out>.json` (sidecar).

Tensors are named `text.<layer>` (decoder block outputs; shape [text hidden]) and `vision.<layer>`
(vision encoder block outputs; shape [positions, vision hidden] for per-position directions or
[vision hidden]). The sidecar records the model (name, family, path), method, layers, hidden sizes,
data file, counts, parameters, creation time and the harness version.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

FORMAT = "halluc-bench-steering/1"
SUFFIXES = (".safetensors", ".json")


def steering_paths(out: str | Path) -> tuple[Path, Path]:
    """(`<out>.safetensors`, `<out>.json`) for an output stem; a given .safetensors/.json suffix is dropped."""
    out = Path(out)
    if out.suffix in SUFFIXES:
        out = out.with_suffix("")
    return out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".json")


def harness_version() -> str:
    """The installed halluc-bench version ('unknown' when not installed)."""
    try:
        return metadata.version("halluc-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_name(name: str) -> tuple[str, int]:
    """('text' | 'vision', layer) for a tensor name such as 'text.12'."""
    kind, _, layer = name.partition(".")
    if kind not in ("text", "vision") or not layer.isdigit():
        raise ValueError(f"steering tensor {name!r} is not named text.<layer> or vision.<layer>")
    return kind, int(layer)


def save_steering(out: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write the tensors (float32, contiguous, CPU) and the sidecar; returns both paths."""
    from safetensors.torch import save_file

    st_path, js_path = steering_paths(out)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    for name in tensors:
        parse_name(name)
    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    layers: dict = {"text": [], "vision": []}
    for name in data:
        kind, layer = parse_name(name)
        layers[kind].append(layer)
    sidecar = {
        "format": FORMAT,
        **meta,
        "layers": {k: sorted(v) for k, v in layers.items()},
        "shapes": {k: list(v.shape) for k, v in sorted(data.items())},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "harness_version": harness_version(),
    }
    save_file(data, str(st_path), metadata={"format": FORMAT, "method": str(meta.get("method", ""))})
    js_path.write_text(json.dumps(sidecar, indent=2, default=str) + "\n", encoding="utf-8")
    return st_path, js_path


def load_steering(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, sidecar) from `<out>`, `<out>.safetensors` or `<out>.json`; clear errors when missing."""
    from safetensors.torch import load_file

    st_path, js_path = steering_paths(path)
    for p in (st_path, js_path):
        if not p.exists():
            raise FileNotFoundError(f"steering file {p} does not exist; build it with "
                                    f"`halluc-bench-build-steering model=... steering.out={st_path.with_suffix('')}`")
    sidecar = json.loads(js_path.read_text(encoding="utf-8"))
    if sidecar.get("format") != FORMAT:
        raise ValueError(f"{js_path} is not a steering sidecar (format {sidecar.get('format')!r}, expected {FORMAT!r})")
    tensors = load_file(str(st_path))
    for name in tensors:
        parse_name(name)
    return tensors, sidecar
