"""The run fingerprint: everything that determines a run's answers, stored with every record."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import Any, Mapping

PACKAGES = ("torch", "transformers", "tokenizers", "nltk", "peft", "halluc-bench")
#: benchmark config keys that only change the statistics of the scores, never the answers
SCORING_ONLY_KEYS = ("bootstrap", "bootstrap_seed", "workers")
#: the tune/test split keys (benchmarks/split.py): part of the fingerprint only when a split is chosen, so a
#: run over all items keeps the fingerprint it had before the split existed
SPLIT_KEYS = ("split_role", "split_seed", "tune_fraction")


def benchmark_fingerprint(benchmark_cfg: Mapping) -> dict:
    """The benchmark keys that determine the answers (no statistics keys; split keys only when splitting)."""
    cfg = dict(benchmark_cfg)
    drop = SCORING_ONLY_KEYS + (SPLIT_KEYS if cfg.get("split_role") is None else ())
    return {k: v for k, v in cfg.items() if k not in drop}


def package_versions() -> dict:
    """Installed versions of the packages that can change answers or scores."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_fingerprint(model_cfg: Mapping, intervention: Any, decoding: Mapping, seed: int,
                     benchmark_cfg: Mapping) -> dict:
    """A JSON-able fingerprint of a run and its short hash under `hash`."""
    fp = {
        "model": {k: model_cfg.get(k) for k in ("name", "family", "path", "tiny", "tiny_seed", "dtype", "adapter",
                                                 "prompt_template", "system_prompt")},
        "intervention": {"name": intervention.name, "params": intervention.params()},
        "decoding": dict(decoding),
        "seed": seed,
        "attn_implementation": model_cfg.get("attn_implementation") or "sdpa",
        "benchmark": benchmark_fingerprint(benchmark_cfg),
        "versions": package_versions(),
    }
    stable = {k: v for k, v in fp.items() if k != "versions"}
    fp["hash"] = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return fp
