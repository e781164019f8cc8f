"""Shared test setup: one torch thread (generation is 10-20x slower with two on a shared machine)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"


def run_cli(args: list[str], cwd: Path = ROOT, check: bool = True, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` (or a script when ARGS[0] ends in .py) and return the finished process."""
    cmd = [sys.executable] + (args if args and args[0].endswith(".py") else ["run.py", *args])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_adapters():
    """Loaded tiny adapters of all four families, shared by the tests of a session."""
    from harness.models.loader import load_adapter

    out = {}
    for name, fam in [("tiny_llava", "llava"), ("tiny_llava_next", "llava_next"),
                      ("tiny_instructblip", "instructblip"), ("tiny_blip2", "blip2")]:
        out[name] = load_adapter({"name": name, "tiny": name, "family": fam})
    return out


@pytest.fixture(scope="session")
def coco_images():
    """The shipped COCO images as RGB PIL images, in file-name order."""
    from PIL import Image

    from benchmarks.base import DATA_DIR

    return [Image.open(p).convert("RGB") for p in sorted((DATA_DIR / "images").glob("*.jpg"))]
