"""Reproduction suite: presets compose, published outputs rescore to the reference, tiny models run the path."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks.base import DATA_DIR
from conftest import ROOT, run_cli, run_in_process
from test_stats import LAVIN, R1, TEST_DATA

PRESETS = ["repro_pope_llava15_7b", "repro_mme_llava15_7b", "repro_chair_llava15_7b"]
REFERENCE = DATA_DIR / "reproduction" / "llava15_7b.json"


def test_reference_file_names_a_preset_and_source_for_every_value():
    refs = {k: v for k, v in json.loads(REFERENCE.read_text()).items() if not k.startswith("_")}
    assert sorted(refs) == sorted(PRESETS)
    for preset, ref in refs.items():
        assert (ROOT / "configs" / "experiment" / f"{preset}.yaml").is_file()
        assert ref["kind"] in ("published", "rescored_published_outputs") and ref["source"] and ref["metrics"]
    assert refs["repro_pope_llava15_7b"]["metrics"] == {"f1": 85.9}
    assert refs["repro_mme_llava15_7b"]["metrics"] == {"perception": 1510.7}


def test_dry_run_prints_one_command_per_preset(tmp_path):
    proc = run_in_process(["scripts/reproduce.py", "--dry-run", "--out", str(tmp_path), "--set",
                    "benchmark.image_root=/coco/val2014"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("$ ")]
    assert len(lines) == 3 and all("benchmark.image_root=/coco/val2014" in ln for ln in lines)
    assert [p for p in PRESETS if any(f"experiment={p}" in ln for ln in lines)] == PRESETS


def test_presets_compose_to_the_reference_setups():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        pope = compose("config", overrides=["experiment=repro_pope_llava15_7b"])
        chair = compose("config", overrides=["experiment=repro_chair_llava15_7b"])
        mme = compose("config", overrides=["experiment=repro_mme_llava15_7b"])
    assert pope.model.name == "llava15_7b" and pope.intervention.name == "none"
    assert (pope.benchmark.split, pope.benchmark.version, pope.benchmark.parser) == ("all", "2023-08", "llava")
    assert pope.decoding.strategy == "greedy" and pope.benchmark.bootstrap == 1000
    assert chair.benchmark.image_set == "chair500" and chair.benchmark.max_new_tokens == 1024
    assert "curious human" in chair.model.prompt_template and "curious user" in pope.model.prompt_template
    assert mme.benchmark.name == "mme" and mme.benchmark.subtasks is None


@pytest.mark.slow
def test_released_captions_rescore_to_the_chair_reference(tmp_path):
    out = tmp_path / "repro"
    proc = run_in_process(["scripts/reproduce.py", "--presets", "repro_chair_llava15_7b", "--out", str(out),
                    "--answers", f"repro_chair_llava15_7b={R1}"])
    report = json.loads((out / "reproduction.json").read_text())["repro_chair_llava15_7b"]
    rows = {r["metric"]: r for r in report["rows"]}
    assert rows["CHAIRs"]["ours"] == pytest.approx(50.0) and rows["CHAIRi"]["ours"] == pytest.approx(15.36, abs=0.005)
    for r in rows.values():
        assert abs(r["diff"]) < 0.005 and r["within_ci"] is True and r["kind"] == "rescored_published_outputs"
    assert re.search(r"\| repro_chair_llava15_7b \| CHAIRs \| 50\.00 +\| \[[\d.]+, [\d.]+\] +\| 50\.00 +\| \+0\.00 +\| yes",
                     proc.stdout) and "less-is-more" in proc.stdout


def test_published_mme_leaderboard_values_fall_in_the_ci_of_rescored_outputs(tmp_path):
    pub = json.loads((TEST_DATA / "reference_values.json").read_text())["mme"]["mme/eval_tool/LaVIN"]["published"]
    ref = tmp_path / "lavin.json"
    ref.write_text(json.dumps({"repro_mme_llava15_7b": {
        "kind": "published", "source": pub["source"],
        "metrics": {"perception": pub["perception_total"], "cognition": pub["cognition_total"],
                    "existence.score": pub["existence"], "OCR.score": pub["OCR"]}}}))
    out = tmp_path / "repro"
    run_in_process(["scripts/reproduce.py", "--reference", str(ref), "--out", str(out),
                   "--answers", f"repro_mme_llava15_7b={LAVIN}"])
    rows = {r["metric"]: r for r in json.loads((out / "reproduction.json").read_text())["repro_mme_llava15_7b"]["rows"]}
    assert rows["perception"]["diff"] == pytest.approx(0.01, abs=0.005)  # 963.61 vs the leaderboard's 963.6
    assert all(r["within_ci"] for r in rows.values())
    assert rows["existence.score"]["ours"] == pytest.approx(185.0)


@pytest.mark.slow
def test_tiny_model_runs_the_chair_preset_end_to_end(tmp_path):
    images = sorted((DATA_DIR / "images").glob("COCO_val2014_*.jpg"))
    image_set = tmp_path / "six.jsonl"
    image_set.write_text("".join(json.dumps({"image_id": int(p.stem.rsplit("_", 1)[1])}) + "\n" for p in images))
    out = tmp_path / "repro"
    proc = run_cli(["scripts/reproduce.py", "--presets", "repro_chair_llava15_7b", "--out", str(out), "--set",
                    "model=tiny_llava", "model.prompt_template=null", f"benchmark.image_set={image_set}",
                    f"benchmark.image_root={DATA_DIR / 'images'}", "benchmark.max_new_tokens=8",
                    "decoding.max_new_tokens=8", "run.num_threads=1"])
    run_dir = out / "repro_chair_llava15_7b"
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["n"] == 6 and "ci" in scores
    rows = {r["metric"]: r for r in json.loads((out / "reproduction.json").read_text())["repro_chair_llava15_7b"]["rows"]}
    for m, r in rows.items():
        assert r["ours"] == pytest.approx(scores[m]) and r["diff"] == pytest.approx(scores[m] - r["reference"])
        lo, hi = scores["ci"][m]
        assert r["within_ci"] == (lo <= r["reference"] <= hi)
    assert "ref in CI" in proc.stdout and f"run directory: {run_dir}" in proc.stdout
    assert len((run_dir / "answers.jsonl").read_text().splitlines()) == 6
