"""Shared test setup: one torch thread (generation is 10-20x slower with two on a shared machine)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
from harness.config import register_configs as _register_configs

_register_configs()  # the typed schemas, before any test composes a config
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# subprocesses a test starts (`python scripts/x.py`, `python -m harness.cli.run`) import this checkout's code,
# not whichever copy of the package the interpreter has installed
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
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


def smoke_run(tmp: Path, label: str, overrides: list[str]) -> tuple[dict, list[dict]]:
    """(scores, answer records) of `halluc-bench OVERRIDES benchmark=smoke`, run in-process in tmp/label
    (`harness.pipeline.run_job` on the Hydra-composed config)."""
    import json

    from hydra import compose, initialize_config_dir

    from harness.pipeline import run_job

    d = tmp / label
    d.mkdir()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "benchmark=smoke",
                                                       f"results_store={d / 'results.jsonl'}"])
    scores = run_job(cfg, d)
    return scores, [json.loads(line) for line in (d / "answers.jsonl").read_text().splitlines()]


def smoke_answers(tmp: Path, label: str, overrides: list[str]) -> tuple[dict, list[str]]:
    """(scores, answers in item order) of `smoke_run`."""
    scores, recs = smoke_run(tmp, label, overrides)
    return scores, [r["answer"] for r in sorted(recs, key=lambda r: str(r["question_id"]))]


def check_family_end_to_end(tmp: Path, tiny_name: str, damro_refusal: str | None) -> None:
    """A tiny family on the smoke benchmark: batch 1 = batch 4, head_guide and vcd at strength 0 = the
    baseline, head_guide and compose change answers, DAMRO refuses (`damro_refusal`, a regex) or changes them."""
    model = [f"model={tiny_name}"]
    scores, base = smoke_answers(tmp, "base", model)
    assert scores["n"] == 30 and len(base) == 30 and "CHAIRs" in scores and "pope_accuracy" in scores
    assert smoke_answers(tmp, "bs1", [*model, "run.batch_size=1"])[1] == base
    hg = [*model, "intervention=head_guide", "intervention.layers=[1,2]"]
    assert smoke_answers(tmp, "hg0", [*hg, "intervention.alpha=0"])[1] == base
    assert smoke_answers(tmp, "hg", hg)[1] != base
    assert smoke_answers(tmp, "vcd0", [*model, "intervention=vcd", "intervention.alpha=0"])[1] == base
    _, both = smoke_answers(tmp, "compose", [*model, "intervention=compose",
                                             "+intervention.members=[{name: head_guide, layers: [1, 2]}, {name: vcd}]"])
    assert len(both) == 30 and both != base
    if damro_refusal:
        with pytest.raises(ValueError, match=damro_refusal):
            smoke_answers(tmp, "damro", [*model, "intervention=damro"])
    else:
        _, damro = smoke_answers(tmp, "damro", [*model, "intervention=damro"])
        assert len(damro) == 30 and damro != base


def run_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """`halluc-bench ARGS` (or `python scripts/<x>.py ARGS` when ARGS[0] ends in .py) in this process.

    Returns what `run_cli` returns for a run that succeeded (`.stdout`: what it printed).

    No interpreter start and no re-import of torch and transformers (seconds per run on a shared machine).
    For the runs a test only needs the results of; tests of the command line itself (exit codes, stderr,
    kill -9, torchrun) use `run_cli`. A failing run raises (its SystemExit or the error)."""
    from hydra.core.global_hydra import GlobalHydra

    if args and args[0].endswith(".py"):  # a tool: scripts/<x>.py is a shim of harness.cli.<module>:main
        shim = (ROOT / args[0]).read_text(encoding="utf-8")
        module = shim.split("from harness.cli.", 1)[1].split(" ", 1)[0]
        main, argv, hydra_tool = importlib.import_module(f"harness.cli.{module}").main, args[1:], False
    else:
        from harness.cli.run import main

        argv, hydra_tool = args, True
    old = sys.argv
    sys.argv = ["halluc-bench", *argv] + (["hydra/job_logging=none", "hydra/hydra_logging=none"] if hydra_tool else [])
    out = io.StringIO()
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out):
            rc = main() if hydra_tool else main(argv)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
    if rc:
        raise AssertionError(f"{' '.join(args)} returned {rc}:\n{out.getvalue()[-3000:]}")
    return subprocess.CompletedProcess(args, 0, out.getvalue(), "")


def _tiny_names() -> list[str]:
    from harness.models.tiny import tiny_names

    return tiny_names()


#: the tiny model of every registered model family (tiny_<family>), from the family registry
TINY_MODELS = _tiny_names()


class LazyAdapters(dict):
    """tiny model name -> loaded adapter, each loaded on first access and kept for the session."""

    def __missing__(self, name: str):
        from harness.models.families import family_for_tiny
        from harness.models.loader import load_adapter

        adapter = load_adapter({"name": name, "tiny": name, "family": family_for_tiny(name).name,
                                "attn_implementation": "eager"})
        self[name] = adapter
        return adapter

    def __iter__(self):
        return iter(TINY_MODELS)

    def items(self):
        return [(n, self[n]) for n in TINY_MODELS]

    def keys(self):
        return list(TINY_MODELS)

    def values(self):
        return [self[n] for n in TINY_MODELS]


@pytest.fixture(scope="session")
def tiny_adapters():
    """Tiny adapters of every registered family (eager attention), loaded on first use, shared by a session."""
    return LazyAdapters()


@pytest.fixture(scope="session")
def coco_images():
    """The shipped COCO images as RGB PIL images, in file-name order."""
    from PIL import Image

    from benchmarks.base import DATA_DIR

    return [Image.open(p).convert("RGB") for p in sorted((DATA_DIR / "images").glob("*.jpg"))]
