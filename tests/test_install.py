"""A non-editable install runs from any folder: configs, data and every console entry point come with the package.

The project (only the project: `pip install --no-deps --no-build-isolation`) is installed into a fresh venv.
Its dependencies are not downloaded again: a `.pth` file in the new venv's site-packages names the
site-packages of the interpreter running the tests, so torch, transformers, hydra, ... are importable there
(a `.pth` line that is a folder is appended to sys.path after the venv's own site-packages, so the freshly
installed `harness` is the one imported, never this checkout; PYTHONPATH is cleared for the same reason).
Only the files a wheel takes are copied, so nothing of the checkout can leak in.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, TEST_DATA

pytestmark = pytest.mark.slow

SOURCES = ["pyproject.toml", "README.md", "harness", "benchmarks", "interventions", "configs"]
TOOLS = ["leaderboard", "judge", "compare", "plot-sweep", "build-steering", "diagnose", "reproduce", "extract-var",
         "probe", "train-detector", "train-eos", "score-eos", "build-chair-gt", "convert-lora"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return {**env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding only the installed project (its dependencies reached through a .pth file)."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())
    deps = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (purelib / "zz_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           str(src)], env=_env(), cwd=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    shutil.rmtree(src)  # the installed copy must not need its source
    return env_dir


def _run(venv: Path, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(venv / "bin" / cmd[0]), *cmd[1:]], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_installed_package_is_the_one_imported(venv, tmp_path):
    out = subprocess.check_output([str(venv / "bin" / "python"), "-c", "import harness, configs; "
                                   "print(harness.__file__); print(configs.__file__)"], cwd=tmp_path, env=_env(),
                                  text=True)
    assert all(str(venv) in line for line in out.split()), out
    assert all((venv / "bin" / f"halluc-bench-{t}").is_file() for t in TOOLS)
    # a Hydra tool composes its config from the installed package, an argparse tool finds the shipped data
    judge = _run(venv, ["halluc-bench-judge", "--cfg", "job", "judge.names=[a,b]"], tmp_path)
    assert "answers_a" in judge.stdout and "names:" in judge.stdout
    repro = _run(venv, ["halluc-bench-reproduce", "--dry-run", "--out", str(tmp_path / "r")], tmp_path)
    assert repro.stdout.count("experiment=repro_") == 3 and "-m harness.cli.run" in repro.stdout


def test_default_run_and_score_only_from_another_folder(venv, tmp_path):
    _run(venv, ["halluc-bench", "run.num_threads=1"], tmp_path)
    scores = list((tmp_path / "outputs" / "runs" / "smoke").rglob("scores.json"))
    assert len(scores) == 1 and "CHAIRs" in json.loads(scores[0].read_text())
    answers = scores[0].parent / "answers.jsonl"
    assert answers.is_file()

    captions = TEST_DATA / "chair_captions" / "less_is_more_table1" / "r1-llava1.5-7b.jsonl"
    proc = _run(venv, ["halluc-bench", "benchmark=chair", f"answers={captions}", "benchmark.bootstrap=0"], tmp_path)
    chair = list((tmp_path / "outputs" / "runs" / "chair").rglob("scores.json"))
    assert len(chair) == 1, proc.stdout[-2000:]
    got = json.loads(chair[0].read_text())
    assert got["CHAIRs"] > 0 and got["CHAIRi"] > 0
    rows = [json.loads(x) for x in (tmp_path / "outputs" / "results.jsonl").read_text().splitlines()]
    assert {r["benchmark"].split("/")[0] for r in rows} == {"smoke", "chair"}
