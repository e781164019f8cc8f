"""The model-family registry is complete: every family has its tiny model, configs, sites, golden and bench row."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from harness.golden import load_goldens
from harness.models.families import all_families, family_for_model_type, family_for_tiny, family_names, get_family

FAMILIES = family_names()
MODEL_CONFIGS = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (ROOT / "configs/model").glob("*.yaml")}


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_interventions", ROOT / "scripts/bench_interventions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench_models() -> list[str]:
    return _bench_module().bench_models()


def test_bench_takes_real_configs_and_an_unreachable_one_is_one_line(monkeypatch, capsys):
    """The speed targets are about real checkpoints on a GPU: the bench takes any model config; a real one
    whose hub id cannot be reached is one error line, and the other models are still timed."""
    import harness.hub
    from harness.errors import EXIT_CODE, HubUnreachableError

    bench = _bench_module()
    assert set(MODEL_CONFIGS) == set(bench.model_choices())

    def unreachable(path, *a, **k):
        raise HubUnreachableError(f"model.path={path!r}: the hub cannot be reached")

    monkeypatch.setattr(harness.hub, "check_reachable", unreachable)
    rc = bench.main(["--models", "llava15_7b", "tiny_llava", "--batch", "1", "--max-new-tokens", "2",
                     "--repeats", "1", "--beams", "0"])
    out, err = capsys.readouterr()
    assert rc == EXIT_CODE and "error: llava15_7b: model.path='llava-hf/llava-1.5-7b-hf'" in err
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny_llava")]
    assert [r[1] for r in rows][:2] == ["none", "head_guide"] and len(rows) == 8


def test_the_registry_holds_the_families_papers_evaluate():
    assert {"llava", "llava_next", "instructblip", "blip2"} <= set(FAMILIES)
    assert all(get_family(n).name == n for n in FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_has_tiny_variant_real_config_golden_and_bench_row(name):
    fam = get_family(name)
    tiny = MODEL_CONFIGS.get(fam.tiny_name)
    assert tiny is not None, f"configs/model/{fam.tiny_name}.yaml is missing"
    assert tiny["family"] == name and tiny["tiny"] == fam.tiny_name and not tiny["path"]
    real = [c for n, c in MODEL_CONFIGS.items() if c.get("family") == name and c.get("path")]
    assert real, f"no real checkpoint config (configs/model/*.yaml with family: {name} and a hub path)"
    for c in real:
        assert c["trust_remote_code"] is False and c["attn_implementation"] != "eager", c["name"]
        assert c["dtype"] in ("float16", "bfloat16") and "device_map" in c
    assert fam.model_types and all(family_for_model_type(t) is fam for t in fam.model_types)
    assert family_for_tiny(fam.tiny_name) is fam
    assert fam.tiny_name in load_goldens(), f"no golden for {fam.tiny_name}: scripts/update_goldens.py --only"
    assert fam.tiny_name in _bench_models()
    assert "build_tiny" in type(fam).__dict__, f"{name} has no tiny builder of its own"


def test_unknown_family_and_model_type_are_clear_errors():
    with pytest.raises(KeyError, match="valid choices"):
        get_family("no_such_family")
    with pytest.raises(KeyError, match="no model family serves model_type 'bert'"):
        family_for_model_type("bert")


def test_a_family_that_disagrees_with_the_checkpoint_is_refused():
    from harness.models.loader import load_model_info

    info = load_model_info({"name": "t", "tiny": "tiny_llava", "family": None})
    assert info.spec.name == "llava" and info.num_layers == 4  # inferred from config.model_type
    other = next(f for f in all_families() if f.name != "llava")
    with pytest.raises(ValueError, match="model.family=.* serves model_type"):
        load_model_info({"name": "t", "tiny": "tiny_llava", "family": other.name})
