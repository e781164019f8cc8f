"""Interventions report what runs: model-dependent defaults resolved before fingerprints and labels; bad numbers
are errors."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from interventions.base import build_intervention


@pytest.mark.parametrize("name,key", [("head_guide", "alpha"), ("damro", "alpha"), ("vcd", "alpha"),
                                      ("vcd", "beta"), ("steer", "lam"), ("damro", "beta")])
def test_nan_strength_is_a_clear_error(name, key):
    with pytest.raises(ValueError, match=rf"intervention\.{key}: expected a finite number, got nan"):
        build_intervention({"name": name, key: float("nan")})


def test_null_damro_alpha_runs_and_is_recorded_as_the_family_value(tmp_path):
    from harness.pipeline import run_job

    def run(overrides, sub):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["model=tiny_llava", "benchmark=smoke", "run.limit=2",
                                                           "intervention=damro", *overrides,
                                                           f"results_store={tmp_path / 'results.jsonl'}"])
        (tmp_path / sub).mkdir()
        run_job(cfg, tmp_path / sub)
        return json.loads((tmp_path / sub / "answers.jsonl").read_text().splitlines()[0])["fingerprint"]

    asked_null = run(["intervention.alpha=null"], "a")
    asked_two = run(["intervention.alpha=2", "intervention.topk=10"], "b")
    assert asked_null["intervention"]["params"]["alpha"] == 2.0 and asked_null["intervention"]["params"]["topk"] == 10
    assert asked_null["hash"] == asked_two["hash"]  # the same run: one fingerprint, one leaderboard row
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[0]["intervention_label"] == rows[1]["intervention_label"]
    assert "None" not in rows[0]["intervention_label"]
