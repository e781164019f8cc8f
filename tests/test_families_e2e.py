"""End to end per model family, in-process (`harness.pipeline.run_job` on Hydra-composed configs): a smoke run,
strength 0 = baseline for head_guide and vcd, compose runs, DAMRO runs or refuses, batch 1 = batch 4."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT


def _run(tmp: Path, label: str, overrides: list[str]) -> tuple[dict, list[str]]:
    """(scores, answers in item order) of `python run.py OVERRIDES benchmark=smoke`, run in tmp/label."""
    from harness.pipeline import run_job

    d = tmp / label
    d.mkdir()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "benchmark=smoke",
                                                       f"results_store={d / 'results.jsonl'}"])
    scores = run_job(cfg, d)
    recs = [json.loads(line) for line in (d / "answers.jsonl").read_text().splitlines()]
    return scores, [r["answer"] for r in sorted(recs, key=lambda r: str(r["question_id"]))]


def test_llava_onevision_end_to_end(tmp_path):
    model = ["model=tiny_llava_onevision"]
    scores, base = _run(tmp_path, "base", model)
    assert scores["n"] == 30 and len(base) == 30 and "CHAIRs" in scores and "pope_accuracy" in scores
    # images of different sizes (1x3 and 2x2 tiles, shrunk or not) in one batch answer as alone
    assert _run(tmp_path, "bs1", [*model, "run.batch_size=1"])[1] == base
    hg = [*model, "intervention=head_guide", "intervention.layers=[1,2]"]
    assert _run(tmp_path, "hg0", [*hg, "intervention.alpha=0"])[1] == base
    assert _run(tmp_path, "hg", hg)[1] != base
    assert _run(tmp_path, "vcd0", [*model, "intervention=vcd", "intervention.alpha=0"])[1] == base
    _, both = _run(tmp_path, "compose", [*model, "intervention=compose",
                                          "+intervention.members=[{name: head_guide, layers: [1, 2]}, {name: vcd}]"])
    assert len(both) == 30 and both != base
    with pytest.raises(ValueError, match="damro cannot run on model family 'llava_onevision': .*no CLS token"):
        _run(tmp_path, "damro", [*model, "intervention=damro"])
