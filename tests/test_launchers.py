"""Hydra plugins people already run: submitit (Slurm; tested through its local executor) and the Optuna sweeper.

The sweeps run in this process (the launcher itself is what is tested: submitit starts one process per job).
Both are optional extras (`pip install -e .[slurm,tune]`, also in `dev`); without them these tests skip and
say which extra to install.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_in_process

pytestmark = pytest.mark.slow

COMMON = ["model=tiny_llava", "benchmark=smoke", "run.limit=8", "run.num_threads=1", "run.batch_size=4",
          "benchmark.bootstrap=0"]


def _plugin(module: str, extra: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e .[{extra}])")


def _answers(path: Path) -> list[tuple]:
    return [(r["question_id"], r["answer"]) for r in map(json.loads, path.read_text().splitlines())]


def test_submitit_local_two_shards_merge_to_the_single_process_answers(tmp_path):
    _plugin("hydra_plugins.hydra_submitit_launcher", "slurm")
    ref = tmp_path / "ref"
    run_in_process([*COMMON, f"hydra.run.dir={ref}", f"results_store={tmp_path / 'ref.jsonl'}"])
    sweep, store = tmp_path / "sweep", tmp_path / "results.jsonl"
    run_in_process(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
             *COMMON, "run.num_shards=2", "run.shard_id=0,1", f"hydra.sweep.dir={sweep}",
             f"results_store={store}"])
    # the shard keys are not part of the run folder's name: both jobs answer into one folder, the last merges
    merged = list(sweep.rglob("answers.jsonl"))
    assert len(merged) == 1, sorted(p.relative_to(sweep) for p in sweep.rglob("*.jsonl"))
    run_dir = merged[0].parent
    assert sorted(p.name for p in run_dir.glob("answers.shard*.jsonl")) == [
        "answers.shard000-of-002.jsonl", "answers.shard001-of-002.jsonl"]
    assert _answers(merged[0]) == _answers(ref / "answers.jsonl")
    assert json.loads((run_dir / "scores.json").read_text()) == json.loads((ref / "scores.json").read_text())
    assert len(store.read_text().splitlines()) == 1  # one scored set, one results row
    assert list(sweep.glob(".submitit/*/*_log.out")), "the jobs did not run through submitit"


def test_optuna_sweep_tunes_on_the_tune_split_and_writes_its_best_parameters(tmp_path):
    _plugin("hydra_plugins.hydra_optuna_sweeper", "tune")
    sweep, store = tmp_path / "sweep", tmp_path / "results.jsonl"
    proc = run_in_process(["-m", "hparams_search=optuna_vcd", "hydra.sweeper.n_trials=3", "model=tiny_llava",
                    "benchmark=smoke", "run.num_threads=1", "benchmark.bootstrap=0", f"hydra.sweep.dir={sweep}",
                    f"results_store={store}"])
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and "intervention.alpha" in best["best_params"], best
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(rows) == 3 and all(r["benchmark"] == "smoke/tune" for r in rows)
    # every trial answered exactly the tuning part of the split, never an item of the test part
    from harness.pipeline import build_benchmark

    tune = {str(it.question_id) for it in build_benchmark({"name": "smoke", "split_role": "tune"}).items()}
    test = {str(it.question_id) for it in build_benchmark({"name": "smoke", "split_role": "test"}).items()}
    answered = [{str(q) for q, _ in _answers(p)} for p in sweep.rglob("answers.jsonl")]
    assert len(answered) == 3 and all(a == tune for a in answered) and not tune & test
    # the objective is the metric the config names, read from each job's scores
    values = sorted(r["metrics"]["CHAIRs"] for r in rows)
    assert best["best_value"] == values[0], (best, values, proc.stdout[-2000:])
