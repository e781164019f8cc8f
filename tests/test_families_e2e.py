"""End to end per model family, in-process (`harness.pipeline.run_job` on Hydra-composed configs): a smoke run,
strength 0 = baseline for head_guide and vcd, compose runs, DAMRO runs or refuses, batch 1 = batch 4."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import smoke_run


def _run(tmp: Path, label: str, overrides: list[str]) -> tuple[dict, list[str]]:
    """(scores, answers in item order) of a smoke run (conftest.smoke_run)."""
    scores, recs = smoke_run(tmp, label, overrides)
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
