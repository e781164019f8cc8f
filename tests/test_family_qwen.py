"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: prompts and image-only processors, dynamic resolution (variable image spans,
flat pixels split by grid), M-RoPE positions as `generate` builds them, the engine against `generate`,
DeepStack-aware encodings, diagnosis geometry, and end to end (smoke, batch 1 = batch 4, strength 0 = baseline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import smoke_run
from harness.models.families.qwen_common import QWEN2_VL_TEMPLATE
from harness.models.families.qwen3_vl import QWEN3_VL_TEMPLATE
from interventions.base import build_intervention
from interventions.contrastive import batch_view, contrastive_generate, views_from_pixels

NAMES = ["tiny_qwen2_vl", "tiny_qwen2_5_vl", "tiny_qwen3_vl"]
QUESTIONS = ["Is there a dog?", "Describe the image.", "What is on the table?", "Is there a car?"]
GREEDY = {"strategy": "greedy", "max_new_tokens": 8}


def _mixed(coco_images):
    """Four images of three different aspect ratios (landscape, wide, portrait): three different token grids."""
    return [coco_images[i] for i in (0, 2, 3, 1)]


# ---- prompts, processors, tiny architectures ---------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_prompt_processor_and_tiny_architecture(tiny_adapters, name):
    a = tiny_adapters[name]
    system = "" if name == "tiny_qwen3_vl" else "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert a.format_prompt("Is there a dog?") == (
        system + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a dog?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert a.processor.chat_template == (QWEN3_VL_TEMPLATE if name == "tiny_qwen3_vl" else QWEN2_VL_TEMPLATE)
    assert getattr(a.processor, "video_processor", None) is None  # built and run without torchvision
    assert type(a.processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    tc = a.model.config.text_config
    assert (tc.num_attention_heads, tc.num_key_value_heads) == (4, 2)  # grouped-query attention
    assert a.model.config.model_type == a.spec.model_types[0]
    if name == "tiny_qwen3_vl":
        assert list(a.model.config.vision_config.deepstack_visual_indexes) == [0, 1]
        assert tc.rope_parameters["mrope_interleaved"] is True


# ---- dynamic resolution ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_image_spans_follow_each_images_grid(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = a.prepare(_mixed(coco_images), QUESTIONS)
    grid = b.inputs["image_grid_thw"]
    spans = a.image_spans(b.inputs["input_ids"])
    counts = [e - s for s, e in spans]
    assert counts == (grid.prod(-1) // 4).tolist()  # merge 2x2
    assert len(set(counts)) >= 2 and len({tuple(g) for g in grid.tolist()}) == 3  # token counts and grids differ
    assert b.inputs["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    for i, (s, e) in enumerate(spans):
        ids = b.inputs["input_ids"][i]
        assert a.tokenizer.convert_ids_to_tokens([int(ids[s - 1]), int(ids[e])]) == ["<|vision_start|>",
                                                                                    "<|vision_end|>"]
        geo = a.spec.span_geometry(a, {"image_grid_thw": grid[i:i + 1]}, e - s)
        assert geo["kind"] == "patch_grid" and geo["rows"] * geo["cols"] == e - s
        assert (geo["rows"], geo["cols"]) == (int(grid[i, 1]) // 2, int(grid[i, 2]) // 2)


@pytest.mark.parametrize("name", NAMES)
def test_pixels_split_by_grid_are_the_single_images_pixels(tiny_adapters, coco_images, name):
    a, spec = tiny_adapters[name], tiny_adapters[name].spec
    imgs = _mixed(coco_images)
    vis = spec.vision_inputs(a.prepare(imgs, QUESTIONS).inputs)
    pieces = spec.split_pixels(vis)
    singles = [spec.split_pixels(spec.vision_inputs(a.prepare([im], [q]).inputs))[0] for im, q in zip(imgs, QUESTIONS)]
    assert all(torch.equal(p, s) for p, s in zip(pieces, singles))
    patch = a.processor.image_processor.patch_size
    assert [tuple(p.shape) for p in pieces] == [(3, int(g[1]) * patch, int(g[2]) * patch) for g in vis["image_grid_thw"]]
    assert torch.equal(spec.join_pixels(vis, pieces)["pixel_values"], vis["pixel_values"])  # lossless for images
    with pytest.raises(ValueError, match="3 pixel pieces for 4 images"):
        spec.join_pixels(vis, pieces[:3])


@pytest.mark.parametrize("name", NAMES)
def test_model_view_pixels_invert_the_patchify(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    inputs = a.prepare(coco_images[3:4], ["x"]).inputs
    ip = a.processor.image_processor
    px = a.spec.model_view_pixels(a, inputs)
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert tuple(px.shape) == (3, h * ip.patch_size, w * ip.patch_size)
    flat, gh, gw = ip.patchify(px.numpy(), ip.patch_size, ip.merge_size, ip.temporal_patch_size)
    assert (gh, gw) == (h, w) and torch.equal(torch.from_numpy(flat.copy()), inputs["pixel_values"])


# ---- M-RoPE positions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_position_ids_are_generates_mrope_positions(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    inputs = a.prepare(_mixed(coco_images), QUESTIONS).inputs
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    pos = a.spec.position_ids(a, ids, mask, a.spec.image_kwargs(inputs))
    kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    expected = a.model._prepare_position_ids_for_generation(ids, {**kwargs, "input_ids": ids})
    assert pos.shape == (4, *ids.shape) and torch.equal(pos, expected)
    # each row's positions do not depend on its left padding (equal to the row alone)
    for i in range(ids.shape[0]):
        single = a.prepare([_mixed(coco_images)[i]], [QUESTIONS[i]]).inputs
        alone = a.spec.position_ids(a, single["input_ids"], single["attention_mask"], a.spec.image_kwargs(single))
        n = alone.shape[-1]
        assert torch.equal(pos[:, i, -n:], alone[:, 0])
    # on the image, height and width positions follow the merged grid; after it, text resumes at
    # start + max(rows, cols) on every axis (not start + token count, the 1D rule)
    s, e = a.image_spans(ids)[0]
    rows, cols = (inputs["image_grid_thw"][0, 1:] // 2).tolist()
    start = int(pos[1, 0, s])
    hw = pos[2:, 0, s:e] - start
    assert torch.equal(hw[0].view(rows, cols), torch.arange(rows)[:, None].expand(rows, cols))
    assert torch.equal(hw[1].view(rows, cols), torch.arange(cols)[None].expand(rows, cols))
    assert pos[1:, 0, e].tolist() == [start + max(rows, cols)] * 3
    assert int(pos[0, 0, e]) == int(pos[0, 0, s]) + (e - s)  # row 0: the 1D text positions


@pytest.mark.parametrize("name", NAMES)
def test_engine_alpha0_equals_generate_and_batch_1_equals_batch_4(tiny_adapters, coco_images, name):
    """The engine's prefill (M-RoPE positions, the encoding) and steps (every axis + 1) reproduce `generate` on a
    batch of three different grids, left-padded, and each row decodes as it does alone."""
    a = tiny_adapters[name]
    imgs = _mixed(coco_images)
    b = a.prepare(imgs, QUESTIONS)
    base = a.generate_ids(b, GREEDY)
    pieces = a.spec.split_pixels(a.spec.vision_inputs(b.inputs))
    views = views_from_pixels(a, b.inputs, [pieces, [p + 0.5 for p in pieces]])
    ids = contrastive_generate(a, b.inputs["input_ids"], views, GREEDY, alpha=0.0, beta=0.1)
    assert torch.equal(ids, base)
    vcd = build_intervention({"name": "vcd", "alpha": 1.0})
    vcd.setup(a)

    def run(batch):
        with vcd.session(a, batch) as plan:
            return [a.decode(r[None])[0] for r in plan.generate_fn(batch, GREEDY, [])]

    assert run(b) == [run(a.prepare([im], [q]))[0] for im, q in zip(imgs, QUESTIONS)]


@pytest.mark.parametrize("name", NAMES)
def test_prefill_with_the_encoding_is_the_models_forward(tiny_adapters, coco_images, name):
    """The encoding the engine passes carries everything the model merges (Qwen3-VL: the DeepStack features)."""
    a, spec = tiny_adapters[name], tiny_adapters[name].spec
    inputs = a.prepare(_mixed(coco_images)[:2], QUESTIONS[:2]).inputs
    v = batch_view(a, inputs)
    pos = spec.position_ids(a, v.input_ids, v.attention_mask, v.image_kwargs)
    with torch.inference_mode():
        ours = spec.prefill(a, v.input_ids, v.attention_mask, pos, v.encoding, v.image_kwargs).logits[:, -1]
        ref = a.model(**inputs).logits[:, -1]
    torch.testing.assert_close(ours, ref)
    halves = spec.concat_encodings([spec.split_encoding(v.encoding, 0, 1), spec.split_encoding(v.encoding, 1, 2)])
    assert all(torch.equal(x, y) for x, y in zip(spec.image_features(halves), spec.image_features(v.encoding)))
    if name == "tiny_qwen3_vl":
        deep = v.encoding.deepstack_features
        assert len(deep) == 2 and all(len(d) == 2 for d in deep)
        assert all(torch.equal(x, y) for d, e in zip(halves.deepstack_features, deep) for x, y in zip(d, e))
        zeroed = type(v.encoding)(pooler_output=v.encoding.pooler_output,
                                  deepstack_features=[tuple(torch.zeros_like(x) for x in d) for d in deep])
        with torch.inference_mode():
            without = spec.prefill(a, v.input_ids, v.attention_mask, pos, zeroed, v.image_kwargs).logits[:, -1]
        assert not torch.allclose(without, ref)  # the deepstack features matter, and are carried
        with pytest.raises(ValueError, match="DeepStack features"):
            spec.with_features(v.encoding, [f[:2] for f in spec.image_features(v.encoding)])


# ---- refusals and diagnosis --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_damro_refuses_with_the_reason(tiny_adapters, name):
    with pytest.raises(ValueError, match=r"damro cannot run on model family .*: Qwen's vision transformer has no CLS"):
        build_intervention({"name": "damro"}).setup(tiny_adapters[name])


def test_diagnosis_maps_render_on_the_image_grid(tiny_adapters, coco_images):
    from harness.diagnosis.maps import trace_answer

    a = tiny_adapters["tiny_qwen2_5_vl"]
    tr = trace_answer(a, coco_images[2], "Describe the image.", max_new_tokens=3)
    rows, cols = tr.geometry["rows"], tr.geometry["cols"]
    assert tr.geometry["kind"] == "patch_grid" and [(v.name, v.rows, v.cols) for v in tr.views] == \
        [("patches", rows, cols)]
    assert tr.span[1] - tr.span[0] == rows * cols and tr.relevancy.shape == (3, rows * cols)
    assert tr.images["model"].size == (cols * 28, rows * 28)  # the resized image the model sees
    assert tr.patch_relevancy == {}  # the ViT's attention returns no weights: no vision-side relevancy


# ---- end to end --------------------------------------------------------------------------------------------
def _run(tmp: Path, label: str, overrides: list[str]) -> tuple[dict, dict]:
    """(scores, {question_id: answer}) of a smoke run (conftest.smoke_run)."""
    scores, recs = smoke_run(tmp, label, overrides)
    return scores, {str(r["question_id"]): r["answer"] for r in recs}


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end(tmp_path, name):
    model = [f"model={name}"]
    scores, base = _run(tmp_path, "base", [*model, "run.batch_size=4"])
    assert scores["n"] == 30 and len(base) == 30 and "CHAIRs" in scores and "pope_accuracy" in scores
    # images of different sizes (different token counts and M-RoPE grids) in one batch answer as alone
    assert _run(tmp_path, "bs1", [*model, "run.batch_size=1"])[1] == base
    # the interventions on the first 12 items (3 batches of 4; captions and yes/no questions) to keep it short
    part = [*model, "run.limit=12"]

    def same(answers: dict) -> bool:
        assert len(answers) == 12
        return answers == {q: base[q] for q in answers}

    hg = [*part, "intervention=head_guide", "intervention.layers=[1,2]"]
    assert same(_run(tmp_path, "hg0", [*hg, "intervention.alpha=0"])[1])
    assert not same(_run(tmp_path, "hg", [*hg, "intervention.alpha=2"])[1])  # strong enough for 12 items
    assert same(_run(tmp_path, "vcd0", [*part, "intervention=vcd", "intervention.alpha=0"])[1])
    assert not same(_run(tmp_path, "compose", [*part, "intervention=compose",
                                               "+intervention.members=[{name: head_guide, layers: [1, 2], alpha: 2}, "
                                               "{name: vcd}]"])[1])
    with pytest.raises(ValueError, match=f"damro cannot run on model family '{name[5:]}': .*no CLS token"):
        _run(tmp_path, "damro", [*model, "intervention=damro"])


# ---- detectors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_var_by_teacher_forcing_equals_var_while_generating(tiny_adapters, coco_images, name):
    """Teacher forcing places prompt + answer at generate's M-RoPE positions (mm_token_type_ids rebuilt)."""
    from harness.detect.var import answer_mask_from_ids, generate_with_var, teacher_forced_var

    a = tiny_adapters[name]
    batch = a.prepare(_mixed(coco_images)[:2], QUESTIONS[:2])  # two grids, left-padded
    ids, gen_var = generate_with_var(a, batch, {"strategy": "greedy", "max_new_tokens": 6})
    tf = teacher_forced_var(a, batch, ids, answer_mask_from_ids(ids, a.tokenizer))
    assert tf.shape == (2, ids.shape[1], a.num_layers, 4) and torch.allclose(gen_var, tf, atol=1e-5)


def test_warn_and_first_token_probe_run(tiny_adapters, coco_images, tmp_path):
    import numpy as np

    from benchmarks.base import DATA_DIR, Item
    from harness.detect.mlp import MLP, VARDetector
    from harness.detect.probe import LinearProbe
    from harness.runner import answer_batch

    a = tiny_adapters["tiny_qwen3_vl"]
    paths = sorted((DATA_DIR / "images").glob("*.jpg"))[:2]
    items = [Item(f"cap/{i}", "Please describe this image in detail.", str(p), p.name, {"kind": "caption"})
             for i, p in enumerate(paths)] + \
            [Item(f"yn/{i}", "Is there a dog in the image?", str(p), p.name, {"kind": "yes_no", "label": "no"})
             for i, p in enumerate(paths)]
    images = coco_images[:2] * 2
    decoding = {"strategy": "greedy", "max_new_tokens": 8}

    def answer(cfg):
        iv = build_intervention(cfg)
        iv.setup(a)
        return answer_batch(a, iv, items, images, decoding, {"hash": "t"}, seed=0)

    base = answer({"name": "none"})
    torch.manual_seed(0)
    VARDetector(MLP(8, 16), (1, 2), 4).save(tmp_path / "det")
    warned = answer({"name": "warn", "detector": str(tmp_path / "det.safetensors"), "threshold": 0.5})
    assert [r["answer"] for r in warned] == [r["answer"] for r in base]
    assert all(r["intervention_info"]["var_source"] == "generation" for r in warned)
    LinearProbe(np.random.default_rng(0).normal(size=a.site("lm_head").out_features), 0.0, {}).save(
        tmp_path / "probe.json")
    probed = answer({"name": "first_token_probe", "probe": str(tmp_path / "probe.json")})
    assert [r["answer"] for r in probed[:2]] == [r["answer"] for r in base[:2]]  # captions untouched
    assert {r["answer"] for r in probed[2:]} <= {"Yes", "No"}
