"""Every config in every group composes, and its benchmark / intervention / model node is well-formed."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT
from harness.models.families import family_names
from harness.registry import BENCHMARKS, INTERVENTIONS

CONFIGS = ROOT / "configs"


def _choices(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group", ["model", "intervention", "benchmark", "decoding"])
def test_every_choice_composes(group):
    for choice in _choices(group):
        cfg = _compose([f"{group}={choice}"])
        node = OmegaConf.to_container(cfg[group], resolve=True)
        if group in ("benchmark", "intervention"):
            assert node["name"], f"{group}/{choice} has no name"
        if group == "benchmark":
            BENCHMARKS.get(node["name"])(node).label()
        if group == "intervention" and node["name"] != "compose":
            INTERVENTIONS.get(node["name"])
        if group == "model":
            assert node["family"] in family_names()
            assert node["path"] or node["tiny"]
            assert node["trust_remote_code"] is False


@pytest.mark.parametrize("name", _choices("experiment"))
def test_every_experiment_preset_composes(name):
    cfg = _compose([f"experiment={name}"])
    for group in ("model", "intervention", "benchmark", "decoding"):
        OmegaConf.to_container(cfg[group], resolve=True)


def test_registries_list_every_config():
    names = {_compose([f"benchmark={c}"]).benchmark.name for c in _choices("benchmark")}
    assert names <= set(BENCHMARKS.names())
    inames = {OmegaConf.load(p)["name"] for p in (CONFIGS / "intervention").glob("*.yaml")} - {"compose"}
    assert inames <= set(INTERVENTIONS.names())


def test_unknown_registry_name_lists_choices():
    with pytest.raises(KeyError, match="valid choices: .*pope"):
        BENCHMARKS.get("nope")


def test_benchmark_variants_accept_every_key_of_their_base():
    by_name: dict = {}
    for choice in _choices("benchmark"):
        node = OmegaConf.to_container(_compose([f"benchmark={choice}"])["benchmark"])
        by_name.setdefault(node["name"], []).append((choice, set(node)))
    for name, variants in by_name.items():
        keys = [k for _, k in variants]
        assert all(k == keys[0] for k in keys), f"benchmark variants of {name} drifted apart: {variants}"
    cfg = _compose(["benchmark=mme_hallucination", "benchmark.question_file=/tmp/q.jsonl"])
    assert cfg.benchmark.question_file == "/tmp/q.jsonl" and list(cfg.benchmark.subtasks) == [
        "existence", "count", "position", "color"]


def test_run_dir_ignores_no_op_null_overrides():
    from harness.cli.run import run_dir_slug as slug

    # damro's alpha defaults to null (the family's paper value): alpha=null is the same run as no override
    assert slug("intervention.alpha=null,run.limit=3", "damro") == slug("run.limit=3", "damro")
    assert slug("intervention.alpha=null", "damro") == "default"
    assert slug("intervention.alpha=null", "vcd") != "default"  # vcd's alpha is 1.0: null is a change
    assert slug("intervention.layers=[1,2],intervention.alpha=0", "head_guide") == (
        "intervention.layers=_1,2_,intervention.alpha=0")
