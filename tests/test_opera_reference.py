"""Our OPERA (interventions/opera*.py) against the reference code, github.com/shikiw/OPERA `opera_beam_search`
(its patched transformers 4.29.2), on the tiny LLaVA: the fixture tests/data/opera_reference.json holds what the
reference generated from this model's language model and merged prompts (scripts/opera_reference_export.py, then
scripts/opera_reference_run.py in a transformers 4.29.2 venv; their docstrings say how to regenerate it).

Each setting runs our OPERA with the options that reproduce the reference's LLaVA-1.5 run (configs/experiment/
opera_llava15.yaml) and asserts the same new tokens, the same best-hypothesis score (4.29 BeamSearchScorer) and
the same retrospections (decision step, position, restored step, rejected and chosen (beam, token) pairs).
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import ROOT, TEST_DATA

from harness.config import typed_node
from interventions.opera import prefilled_lane

torch.set_num_threads(1)

FIXTURE = json.loads((TEST_DATA / "opera_reference.json").read_text())
REGENERATE = ("regenerate the fixture: .venv/bin/python scripts/opera_reference_export.py, then "
              "/tmp/opera-venv/bin/python scripts/opera_reference_run.py (see that script's docstring)")


def _export_module():
    path = ROOT / "scripts" / "opera_reference_export.py"
    spec = importlib.util.spec_from_file_location("opera_reference_export", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXPORT = _export_module()


@pytest.fixture(scope="module")
def llava(tiny_adapters):
    """The tiny LLaVA, checked to be the model the fixture was made from (its language model's weights hash)."""
    a = tiny_adapters["tiny_llava"]
    got = EXPORT.fingerprint(EXPORT.lm_state_dict(a))
    if got != FIXTURE["lm_fingerprint"]:
        pytest.fail(f"tiny_llava's language model is not the one tests/data/opera_reference.json was made from "
                    f"(weights sha256 {got[:16]}..., fixture {FIXTURE['lm_fingerprint'][:16]}...): the tiny model's "
                    f"builder or seed changed; {REGENERATE}")
    return a


@pytest.fixture(scope="module")
def prompts(llava):
    """Per fixture item the prepared batch (one image, the question), checked against the exported inputs."""
    from safetensors.torch import load_file

    shipped = load_file(str(TEST_DATA / "opera_reference_inputs.safetensors"))
    images = dict(EXPORT.shipped_images())
    out = []
    for i, name in enumerate(FIXTURE["images"]):
        b = llava.prepare([images[name]], [FIXTURE["question"]])
        mine = EXPORT.prompt_inputs(llava, [(name, images[name])])[0]
        assert torch.equal(b.inputs["input_ids"], shipped[f"input_ids_{i}"]), \
            f"prompt ids of item {i} changed; {REGENERATE}"
        assert torch.allclose(mine["inputs_embeds"], shipped[f"inputs_embeds_{i}"], atol=1e-5, rtol=0), \
            f"merged prompt embeddings of item {i} changed; {REGENERATE}"
        assert mine["key_position"] == FIXTURE["key_positions"][i]
        out.append(b)
    return out


def _params(s: dict) -> dict:
    """Our options for a fixture setting: the reference's LLaVA-1.5 run (configs/experiment/opera_llava15.yaml)."""
    return dict(typed_node("intervention", {
        "name": "opera", "scale_factor": s["scale_factor"], "threshold": s["threshold"],
        "num_attn_candidates": s["num_attn_candidates"], "penalty_weights": s["penalty_weights"],
        "window_size": s["window_size"], "rollback": True, "rollback_min_location": s["rollback_min_location"],
        "rollback_max_per_position": None, "image_penalty_steps": 10, "reference_candidate_softmax": True,
        "reference_float16_scores": True, "reference_length_normalization": True}))


def test_fixture_has_rollbacks_and_plain_runs():
    res = FIXTURE["results"]
    assert any(r["rollbacks"] for name in res for r in res[name])
    assert FIXTURE["settings"]["paper"] == {**FIXTURE["settings"]["paper"], "num_beams": 5, "scale_factor": 50.0,
                                            "threshold": 15, "num_attn_candidates": 5, "penalty_weights": 1.0}
    assert FIXTURE["source"]["commit"] and FIXTURE["source"]["repository"] == "github.com/shikiw/OPERA"


@pytest.mark.parametrize("setting", sorted(FIXTURE["settings"]))
def test_same_tokens_scores_and_rollbacks_as_the_reference(llava, prompts, setting):
    s = FIXTURE["settings"][setting]
    decoding = {"strategy": "beam", "num_beams": s["num_beams"], "max_new_tokens": s["max_new_tokens"],
                "length_penalty": s["length_penalty"]}
    for i, b in enumerate(prompts):
        ref = FIXTURE["results"][setting][i]
        with torch.inference_mode():
            lane = prefilled_lane(llava, b, decoding, [], _params(s))
            (tokens,) = lane.run()
        pad = llava.tokenizer.pad_token_id
        tokens = tokens.tolist()
        while tokens and tokens[-1] == pad:
            tokens.pop()
        rolls = [{"step": r["step"], "position": r["position"], "restored": r["restored"],
                  "rejected": [list(x) for x in r["rejected"]], "chosen": [list(x) for x in r["chosen"]]}
                 for r in lane.rollbacks[0]]
        assert tokens == ref["tokens"], f"{setting}, item {i}"
        assert rolls == ref["rollbacks"], f"{setting}, item {i}"
        (g,) = lane.groups
        best = g.beams.beam_scores[0, 0].item()  # the 4.29 scorer's best hypothesis score
        assert best == pytest.approx(ref["sequence_score"], rel=1e-4), f"{setting}, item {i}"
