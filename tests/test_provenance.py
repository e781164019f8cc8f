"""Provenance of result rows: harness commit, versions, dataset hashes, judge, decoding, seed."""
from __future__ import annotations

import hashlib
import subprocess

from benchmarks.chair import ChairBenchmark
from benchmarks.mme import MME
from benchmarks.pope import POPE, question_file_path
from conftest import ROOT
from harness.fingerprint import make_fingerprint
from harness.provenance import harness_version, run_provenance
from interventions.base import build_intervention


def test_provenance_names_commit_versions_files_judge_decoding_and_seed():
    p = run_provenance(POPE({"split": "all", "version": "2023-08"}), {"strategy": "greedy"}, 7)
    files = p["dataset"]["files"]
    assert len(files) == 3 and p["dataset"]["version"] == "2023-08"
    path = question_file_path("coco", "random", "2023-08")
    assert files[str(path.relative_to(ROOT))] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p["decoding"] == {"strategy": "greedy"} and p["seed"] == 7 and p["judge_model"] is None
    assert {"python", "torch", "transformers"} <= set(p["versions"])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert harness_version()["commit"] == head.stdout.strip()
    chair = run_provenance(ChairBenchmark({"ground_truth": "singularize"}), None, None)["dataset"]["files"]
    assert any(k.endswith("imid_to_objects_singularize.json") for k in chair) and any(k.endswith("chair-500.jsonl")
                                                                                      for k in chair)
    assert len(run_provenance(MME({}), None, None)["dataset"]["files"]) == 14


def test_judge_model_is_recorded_for_judged_benchmarks():
    from benchmarks.mmhal_bench import MMHalBench

    assert run_provenance(MMHalBench({"judge": {"model": "gpt-4o-2024-05-13"}}), None, None)["judge_model"] == \
        "gpt-4o-2024-05-13"
    # judge.model null: the reference's judge (MMHal-Bench's gpt-4-0314) is the one used and recorded
    assert run_provenance(MMHalBench({"judge": {}}), None, None)["judge_model"] == "gpt-4-0314"
    assert run_provenance(POPE({}), None, None)["judge_model"] is None


def test_bootstrap_settings_change_neither_fingerprint_nor_answers_identity():
    none = build_intervention({"name": "none"})
    model = {"name": "tiny_llava"}
    a = make_fingerprint(model, none, {"strategy": "greedy"}, 0, {"name": "pope", "bootstrap": 1000})
    b = make_fingerprint(model, none, {"strategy": "greedy"}, 0, {"name": "pope", "bootstrap": 0, "bootstrap_seed": 3})
    assert a["hash"] == b["hash"]
