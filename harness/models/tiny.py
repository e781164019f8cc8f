"""Tiny offline variants of each model family: real transformers classes, small random weights.

Each tiny model is built from config with a fixed seed by its family's `build_tiny`, saved once to a cache
folder and then loaded back through the same `from_pretrained` path that real checkpoints use.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

BUILD_VERSION = 3  # bump when a builder changes, so cached tiny models are rebuilt


def tiny_cache_dir() -> Path:
    """Where tiny models are saved: $HALLUC_BENCH_CACHE or ~/.cache/halluc_bench."""
    root = os.environ.get("HALLUC_BENCH_CACHE") or Path.home() / ".cache" / "halluc_bench"
    return Path(root) / "tiny_models"


def tiny_names() -> list[str]:
    """The tiny model of every registered family (tiny_<family>), sorted."""
    from harness.models.families import all_families

    return sorted(f.tiny_name for f in all_families())


def ensure_tiny_model(name: str, seed: int = 0) -> Path:
    """The folder of tiny model `name` (tiny_<family>), built (seeded, deterministic) and saved on first use."""
    import transformers

    from harness.models.families import family_for_tiny

    family = family_for_tiny(name)
    key = hashlib.sha256(json.dumps([name, seed, BUILD_VERSION, transformers.__version__]).encode()).hexdigest()[:12]
    out = tiny_cache_dir() / f"{name}-{key}"
    if (out / "DONE").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    torch.manual_seed(seed)
    family.build_tiny(tmp)
    (tmp / "DONE").write_text("ok\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
