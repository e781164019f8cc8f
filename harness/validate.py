"""Checks that run before any model loads: config values in range, outputs writable.

A value out of range (``run.batch_size=0``, ``run.limit=-1``, ``decoding.max_new_tokens=0``) or
of the wrong type raises ConfigValueError naming the key; an unwritable results store or run
folder raises OutputNotWritableError. Both would otherwise surface only after generation, or
not at all (a run that answers nothing and stores an empty score).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import ConfigValueError, OutputNotWritableError
from harness.results import check_store_writable


def positive_int(value: Any, key: str, allow_none: bool = True) -> int | None:
    """`value` as an int >= 1 (None when allowed and not set); anything else names `key`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1" + (" or null" if allow_none else "")
        raise ConfigValueError(f"{key}: expected {allowed}, got {value!r}")
    return value


def non_negative_int(value: Any, key: str) -> int | None:
    """`value` as an int >= 0, or None; anything else names `key`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigValueError(f"{key}: expected an integer >= 0 or null, got {value!r}")
    return value


def positive_number(value: Any, key: str) -> float | None:
    """`value` as a finite number > 0, or None; anything else names `key`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigValueError(f"{key}: expected a finite number > 0, got {value!r}")
    return float(value)


def validate_benchmark(bench_cfg: dict) -> None:
    """Range checks on the benchmark keys every benchmark shares (limit, max_new_tokens)."""
    positive_int(bench_cfg.get("limit"), "benchmark.limit")
    positive_int(bench_cfg.get("max_new_tokens"), "benchmark.max_new_tokens")


def validate_generation(c: dict) -> None:
    """Range checks on the keys of a generating run: run.*, decoding.*, seed."""
    run, dec = c.get("run") or {}, c.get("decoding") or {}
    positive_int(run.get("batch_size"), "run.batch_size", allow_none=False)
    positive_int(run.get("limit"), "run.limit")
    positive_int(run.get("num_shards"), "run.num_shards")
    non_negative_int(run.get("shard_id"), "run.shard_id")
    positive_int(run.get("num_threads"), "run.num_threads")
    positive_int(dec.get("max_new_tokens"), "decoding.max_new_tokens")
    if "num_beams" in dec:
        positive_int(dec.get("num_beams"), "decoding.num_beams")
    if dec.get("strategy") == "sample":
        positive_number(dec.get("temperature"), "decoding.temperature")
        top_p = dec.get("top_p")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise ConfigValueError(f"decoding.top_p: expected a number in (0, 1], got {top_p!r}")
        non_negative_int(dec.get("top_k"), "decoding.top_k")
    if isinstance(c.get("seed"), bool) or not isinstance(c.get("seed"), int):
        raise ConfigValueError(f"seed: expected an integer, got {c.get('seed')!r}")


def check_dir_writable(folder: str | Path, key: str = "hydra.run.dir") -> None:
    """Raise OutputNotWritableError unless a file can be created in `folder` (created when missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputNotWritableError(f"run folder {folder} cannot be written ({e.strerror or e}); "
                                     f"set {key}=PATH to a writable folder") from None


def check_outputs(c: dict, run_dir: Path) -> None:
    """The run folder and the results store accept writes."""
    check_dir_writable(run_dir)
    check_store_writable(c["results_store"])
