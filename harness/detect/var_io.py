"""Storage of VAR features: ``X.safetensors`` (features, labels) next to ``X.json`` (meta, rows)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def save_var(path: str | Path, features: torch.Tensor, labels: torch.Tensor, rows: list[dict], meta: dict,
             extra: dict | None = None) -> Path:
    """Write ``<path>.safetensors`` (features [N, L, H] float32, labels [N] int64) and ``<path>.json``
    (``{"meta": ..., "rows": [one dict per feature row], **extra}``)."""
    from safetensors.torch import save_file

    st, side = artifact_paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.float().contiguous(), "labels": labels.long().contiguous()}, str(st))
    side.write_text(json.dumps({"meta": meta, "rows": rows, **(extra or {})}, indent=1, ensure_ascii=False) + "\n")
    return st


def load_var(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[dict], dict]:
    """(features [N, L, H], labels [N], rows, meta) of a file written by ``save_var``."""
    from safetensors.torch import load_file

    st, side = artifact_paths(path)
    if not st.exists():
        raise FileNotFoundError(f"VAR features not found: {st}")
    tensors = load_file(str(st))
    data = json.loads(side.read_text()) if side.exists() else {"meta": {}, "rows": []}
    return tensors["features"], tensors["labels"], data.get("rows", []), data.get("meta", {})


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """(``X.safetensors``, ``X.json``) for a path given as ``X``, ``X.safetensors`` or ``X.json``."""
    s = str(path)
    for ext in (".safetensors", ".json"):
        if s.endswith(ext):
            s = s[: -len(ext)]
    return Path(s + ".safetensors"), Path(s + ".json")
