"""head_guide (Devils in Middle Layers) and the scoped attention-function mechanism it uses."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY_MODELS
from interventions import attention_fn
from interventions.attention_fn import edit_attention_logits
from interventions.base import build_intervention
from interventions.head_guide import guide_scores, image_columns, proportional_layers, resolve_layers

torch.set_num_threads(1)

FAMILIES = TINY_MODELS
QUESTIONS = ["Please describe this image in detail.", "Is there a dog in the image?"]
GUIDE = {"name": "head_guide", "layers": [1, 2]}


def _hg(**kw):
    return build_intervention({**GUIDE, **kw})


def _batch(a, imgs, questions=QUESTIONS):
    return a.prepare(imgs[:len(questions)], questions)


def _gen(a, iv, batch, n=5):
    if iv is None:
        return a.generate_ids(batch, {"max_new_tokens": n})
    with iv.session(a, batch) as plan:
        return a.generate_ids(batch, {"max_new_tokens": n}, plan.logits_processors, **plan.generate_kwargs)


def _logits(a, iv, batch):
    with torch.inference_mode():
        if iv is None:
            return a.model(**batch.inputs).logits
        with iv.session(a, batch):
            return a.model(**batch.inputs).logits


def _impl(a):
    return a.decoder_layers()[0].get_submodule(a.site_path("attention")).config._attn_implementation


@pytest.mark.parametrize("name", FAMILIES)
def test_alpha_zero_is_the_baseline_exactly(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = _batch(a, coco_images)
    iv = _hg(alpha=0.0)
    iv.setup(a)
    assert torch.equal(_gen(a, None, b), _gen(a, iv, b))
    assert torch.equal(_logits(a, None, b), _logits(a, iv, b))


@pytest.mark.parametrize("name", FAMILIES)
def test_alpha_changes_only_the_last_position(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = _batch(a, coco_images)
    base, guided = _logits(a, None, b), _logits(a, _hg(alpha=2.0), b)
    assert not torch.allclose(base[:, -1], guided[:, -1], atol=1e-4)
    # only the last query row is edited and attention is causal: earlier real positions are untouched
    # (a fully masked padding row attends uniformly to everything, so it is not compared)
    real = b.inputs["attention_mask"].bool()
    real[:, -1] = False
    assert torch.equal(base[real], guided[real])
    # the reference's bidirectional prefill in guided layers changes earlier positions too
    ref = _logits(a, _hg(alpha=2.0, reference_prefill_mask=True), b)
    assert not torch.allclose(base[real], ref[real], atol=1e-4)


def _expected_weights(rec, spans, attn_mask2d, alpha, scaling, prefill_mask_off=False):
    """softmax(logits + mask + alpha * mean_h |logits| on the image span of the last row), from q and k."""
    q, k = rec["query"].float(), rec["key"].float()
    logits = q @ k.transpose(-1, -2) * scaling  # [B, H, Q, K]
    B, H, Q, K = logits.shape
    pos_q = torch.arange(K - Q, K)[:, None]
    pos_k = torch.arange(K)[None, :]
    allowed = (pos_k <= pos_q)[None] & attn_mask2d[:, None, :K].bool()  # causal + key padding
    if prefill_mask_off and Q > 1:
        allowed = attn_mask2d[:, None, :K].bool().expand(B, Q, K)
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
    bonus = torch.zeros(B, 1, Q, K)
    for r, (s, e) in enumerate(spans):
        bonus[r, 0, -1, s:e] = alpha * logits[r, :, -1, s:e].abs().mean(dim=0)
    return torch.softmax(logits + mask + bonus, dim=-1)


@pytest.mark.parametrize("name,ref_mask", [("tiny_llava", False), ("tiny_blip2", False), ("tiny_llava", True)])
def test_guided_weights_match_the_formula(tiny_adapters, coco_images, name, ref_mask):
    a = tiny_adapters[name]
    b = _batch(a, coco_images)  # two rows of different lengths: left padding shifts the spans
    spans = a.image_spans(b.inputs["input_ids"])
    assert spans[0] != spans[1]
    alpha, layer = 0.7, 2
    attn = a.decoder_layers()[layer].get_submodule(a.site_path("attention"))
    # LLaMA scales the logits in attention; OPT pre-scales the query
    scaling = attn.scaling if a.family != "blip2" else 1.0
    records = []
    iv = _hg(alpha=alpha, reference_prefill_mask=ref_mask)
    with iv.session(a, b), edit_attention_logits([attn], capture=lambda m, r: records.append(r)):
        ids = a.generate_ids(b, {"max_new_tokens": 2})
    assert len(records) == 2 and records[0]["weights"].shape[2] > 1 and records[1]["weights"].shape[2] == 1
    mask2d = torch.cat([b.inputs["attention_mask"], torch.ones_like(ids)], dim=1)
    for rec in records:
        exp = _expected_weights(rec, spans, mask2d, alpha, scaling, prefill_mask_off=ref_mask)
        got = rec["weights"].float()
        real = mask2d[:, :got.shape[-1]].bool()[:, -got.shape[2]:]  # real (non-padding) query rows
        for r in range(got.shape[0]):
            torch.testing.assert_close(got[r][:, real[r]], exp[r][:, real[r]], atol=1e-6, rtol=1e-5)
        # and the guidance did something on the image span of the last row
        s, e = spans[0]
        assert not torch.allclose(rec["scores"][0, :, -1, s:e], rec["edited_scores"][0, :, -1, s:e])


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_equals_unbatched_under_guidance(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    iv = _hg(alpha=3.0)
    b = _batch(a, coco_images)
    batched = _gen(a, iv, b)
    for i, q in enumerate(QUESTIONS):
        single = _gen(a, iv, a.prepare([coco_images[i]], [q]))
        assert torch.equal(batched[i, :single.shape[1]], single[0])
    lb = _logits(a, iv, b)[:, -1]
    for i, q in enumerate(QUESTIONS):
        ls = _logits(a, iv, a.prepare([coco_images[i]], [q]))[:, -1]
        torch.testing.assert_close(lb[i], ls[0], atol=1e-5, rtol=1e-4)


def test_implementation_is_restored_also_on_errors(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    assert _impl(a) == "eager"
    with _hg(alpha=1.0).session(a, b):
        assert _impl(a) == attention_fn.ATTN_KEY
        # only the language model: the vision tower keeps its own implementation
        assert a.model.config.vision_config._attn_implementation == "eager"
    assert _impl(a) == "eager" and not attention_fn._STATES
    with pytest.raises(RuntimeError, match="boom"):
        with _hg(alpha=1.0).session(a, b):
            raise RuntimeError("boom")
    assert _impl(a) == "eager" and not attention_fn._STATES
    # nested sessions (e.g. head_guide + a diagnosis capture) restore when the outermost exits
    attn = a.decoder_layers()[0].get_submodule(a.site_path("attention"))
    with _hg(alpha=1.0).session(a, b):
        with edit_attention_logits([attn], capture=lambda m, r: None):
            a.model(**b.inputs)
        assert _impl(a) == attention_fn.ATTN_KEY
    assert _impl(a) == "eager"


def test_previous_sdpa_implementation_is_kept_for_other_layers(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    cfg = a.decoder_layers()[0].get_submodule(a.site_path("attention")).config
    eager_guided = _logits(a, _hg(alpha=1.0), b)
    cfg._attn_implementation_internal = "sdpa"
    try:
        sdpa_base = _logits(a, None, b)
        assert torch.equal(sdpa_base, _logits(a, _hg(alpha=0.0), b))  # strength 0 installs nothing here
        torch.testing.assert_close(_logits(a, _hg(alpha=1.0), b), eager_guided, atol=1e-5, rtol=1e-4)
        assert _impl(a) == "sdpa"
        cfg._attn_implementation_internal = "flash_attention_2"
        with pytest.raises(ValueError, match="attn_implementation"):
            with _hg(alpha=1.0).session(a, b):
                pass
    finally:
        cfg._attn_implementation_internal = "eager"


def test_out_of_range_layers_are_a_clear_error(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_blip2"]
    iv = build_intervention({"name": "head_guide", "layers": [5, 18]})  # the paper's range on a 4-layer model
    with pytest.raises(ValueError, match=r"5\.\.18.*4 decoder layers.*0\.\.3"):
        iv.setup(a)
    with pytest.raises(ValueError, match="4 decoder layers"):
        with iv.session(a, _batch(a, coco_images)):
            pass
    assert _impl(a) == "eager"
    with pytest.raises(ValueError, match="4 decoder layers"):
        _hg(layers=[3, 4]).setup(a)
    _hg(layers=[3, 4], layers_inclusive=False).setup(a)  # end-exclusive: just layer 3


def test_layer_ranges_and_options():
    assert resolve_layers([5, 18]) == list(range(5, 19))  # the reference's --guide-range 5,18
    assert resolve_layers([5, 18], inclusive=False) == list(range(5, 18))
    assert resolve_layers([3]) == [3]
    for bad in ([], [1, 2, 3], [4, 2]):
        with pytest.raises(ValueError):
            resolve_layers(bad)
    with pytest.raises(ValueError, match="aggregation"):
        _hg(aggregation="max")
    with pytest.raises(ValueError, match="top_k"):
        _hg(aggregation="topk")
    with pytest.raises(ValueError, match="intervention.beta: unknown key .beta."):
        _hg(beta=0.5)


def test_guide_scores_math_topk_and_beams():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 3, 7, generator=g)
    spans = [(1, 4), (2, 6)]
    prompt_mask = torch.zeros(2, 6, dtype=torch.bool)  # a 6-token prompt; column 6 is a generated token
    for r, (s, e) in enumerate(spans):
        prompt_mask[r, s:e] = True
    cols = image_columns(prompt_mask, 2, 7)
    out = guide_scores(scores, None, cols, 0.5)
    assert torch.equal(out[:, :, :-1], scores[:, :, :-1])
    exp = scores.clone()
    for r, (s, e) in enumerate(spans):
        exp[r, :, -1, s:e] += 0.5 * scores[r, :, -1, s:e].abs().mean(dim=0)
    torch.testing.assert_close(out, exp)
    # topk over all heads is the mean; top-1 uses the head with the most attention on the image
    torch.testing.assert_close(guide_scores(scores, None, cols, 0.5, "topk", 4), out)
    top1 = guide_scores(scores, None, cols, 0.5, "topk", 1)
    mass = (torch.softmax(scores[:, :, -1], -1) * cols[:, :, 0]).sum(-1)
    for r, (s, e) in enumerate(spans):
        h = int(mass[r].argmax())
        torch.testing.assert_close(top1[r, :, -1, s:e], scores[r, :, -1, s:e] + 0.5 * scores[r, h, -1, s:e].abs())
    # beam search: rows are B * beams, repeat-interleaved
    assert torch.equal(image_columns(prompt_mask, 4, 7)[:, 0, 0], cols[:, 0, 0].repeat_interleave(2, dim=0))
    assert not bool(cols[..., 6:].any())  # generated tokens are never image keys


def test_non_contiguous_image_positions_are_guided_exactly():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(1, 4, 1, 9, generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)  # two tiles with a marker between
    out = guide_scores(scores, None, image_columns(mask, 1, 9), 1.0)
    exp = scores.clone()
    exp[0, :, -1, mask[0]] += scores[0, :, -1, mask[0]].abs().mean(dim=0)
    torch.testing.assert_close(out, exp)


def test_default_layers_are_the_papers_relative_depth(tiny_adapters):
    assert proportional_layers(32) == [5, 18]  # LLaVA-1.5-7B: exactly the paper's range
    assert proportional_layers(40) == [6, 23]
    assert proportional_layers(4) == [1, 2]
    hg = _hg()
    del hg.cfg["layers"]
    hg.cfg["layers"] = None
    hg.resolve(tiny_adapters["tiny_llava"].info)
    assert hg.params()["layers"] == [1, 2] and hg.layer_ids == [1, 2]


def test_nan_or_negative_alpha_is_a_clear_error():
    with pytest.raises(ValueError, match="intervention.alpha: expected a finite number, got nan"):
        _hg(alpha=float("nan"))
    with pytest.raises(ValueError, match="intervention.alpha: expected a number >= 0, got -0.5"):
        _hg(alpha=-0.5)


def test_beam_search_runs_under_guidance(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    with _hg(alpha=0.0).session(a, b):
        ids0 = a.generate_ids(b, {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4})
    assert torch.equal(ids0, a.generate_ids(b, {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4}))
    with _hg(alpha=2.0).session(a, b):
        a.generate_ids(b, {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4})


def test_config_file_and_composition(tiny_adapters, coco_images):
    from harness.config import group_defaults

    node = group_defaults("intervention", "head_guide")
    assert node == {"name": "head_guide", "layers": None, "layers_inclusive": True, "alpha": 0.5,
                    "aggregation": "mean", "top_k": None, "reference_prefill_mask": False}
    iv = build_intervention({**node, "layers": [5, 18]})
    assert iv.name == "head_guide" and iv.layer_ids == list(range(5, 19)) and iv.strength_key == "alpha"
    assert iv.params()["alpha"] == 0.5 and "name" not in iv.params()
    a = tiny_adapters["tiny_instructblip"]
    b = _batch(a, coco_images)
    member = {**node, "layers": [1, 2], "alpha": 2.0}
    comp = build_intervention({"name": "compose", "members": [member, {"name": "none"}]})
    comp.setup(a)
    assert comp.label().startswith("head_guide ") and comp.label().endswith(" + none")
    assert torch.equal(_gen(a, comp, b), _gen(a, build_intervention(member), b))
    assert _impl(a) == "eager"


def test_experiment_preset_pins_the_reference_setup():
    path = ROOT / "configs/experiment/middle_layers_chair_llava15.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_")
    cfg = yaml.safe_load(text)
    assert {"override /model": "llava15_7b"} in cfg["defaults"]
    assert {"override /intervention": "head_guide"} in cfg["defaults"]
    assert {"override /benchmark": "chair"} in cfg["defaults"]
    assert cfg["intervention"]["layers"] == [5, 18] and cfg["intervention"]["layers_inclusive"] is True
    assert cfg["intervention"]["alpha"] == 0.5 and cfg["intervention"]["aggregation"] == "mean"
    assert cfg["benchmark"]["prompt"] == "Please help me describe the image in detail."
    assert cfg["decoding"]["strategy"] == "greedy" and cfg["decoding"]["max_new_tokens"] == 512
    # the reference's own 500 images (from its log), in its order
    assert cfg["benchmark"]["image_set"] == "middle_layers500"
    ids_file = ROOT / "benchmarks/data/chair/middle_layers_llava15_500.jsonl"
    ids = [json.loads(line)["image_id"] for line in ids_file.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 500 and ids[:3] == [236338, 255315, 86800] and ids[-1] == 143696
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        c = compose(config_name="config", overrides=["experiment=middle_layers_chair_llava15"])
    c = OmegaConf.to_container(c, resolve=False)
    assert c["model"]["name"] == "llava15_7b" and c["benchmark"]["name"] == "chair"
    assert c["intervention"]["name"] == "head_guide" and c["decoding"]["strategy"] == "greedy"
    assert "{question}" in c["model"]["prompt_template"] and "<image>" in c["model"]["prompt_template"]
    build_intervention(c["intervention"])
    from harness.registry import BENCHMARKS

    bench = BENCHMARKS.get("chair")(c["benchmark"])
    items = bench.items()
    assert [it.question_id for it in items] == ids
    assert items[0].prompt == "Please help me describe the image in detail."
