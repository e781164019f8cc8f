"""Golden hallucination scores: deterministic tiny-model runs whose scores must not move unnoticed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_FILE = ROOT / "tests" / "golden" / "tiny_smoke_scores.json"


def golden_runs() -> dict[str, list[str]]:
    """(label, overrides) of the golden runs: the tiny model of every registered family."""
    from harness.models.tiny import tiny_names

    return {name: [f"model={name}"] for name in tiny_names()}


#: the metrics compared (CHAIR over captions, POPE over yes/no questions)
GOLDEN_METRICS = ("CHAIRs", "CHAIRi", "Recall", "Len", "pope_accuracy", "pope_f1", "pope_yes_ratio")


def golden_scores(label: str, work_dir: Path) -> dict:
    """Run golden run `label` on the smoke benchmark in `work_dir` and return its golden metrics."""
    from harness.config import register_configs
    from harness.pipeline import run_job

    register_configs()  # the typed schemas the config groups' defaults name (tests register them in conftest)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*golden_runs()[label], "benchmark=smoke",
                                                       f"results_store={work_dir / 'results.jsonl'}"])
    scores = run_job(cfg, work_dir)
    out = {k: round(float(scores[k]), 4) for k in GOLDEN_METRICS}
    answers = [json.loads(line)["answer"] for line in (work_dir / "answers.jsonl").read_text().splitlines()]
    out["answers_sha256"] = hashlib.sha256("\n".join(answers).encode()).hexdigest()[:16]
    return out


def load_goldens() -> dict:
    """The committed golden scores."""
    return json.loads(GOLDEN_FILE.read_text())
