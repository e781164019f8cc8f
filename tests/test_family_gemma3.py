"""Gemma 3: the chat template (one BOS), soft image tokens, token types as a row input (the bidirectional image
block at prefill), the engine's prefill against the model's own forward, DAMRO's refusal, end to end runs."""
from __future__ import annotations


import pytest
import torch

from conftest import check_family_end_to_end
from harness.models.families.gemma3 import GEMMA3_TEMPLATE
from interventions.base import build_intervention
from interventions.contrastive import batch_view, shrink_image_tokens, stack_views

NAME = "tiny_gemma3"
QUESTIONS = ["Is there a dog?", "Describe the image in detail please.", "What is on the table?", "Is there a car?"]


def test_prompt_processor_and_tiny_architecture(tiny_adapters, coco_images):
    a = tiny_adapters[NAME]
    assert a.format_prompt("Is there a dog?") == \
        "<bos><start_of_turn>user\n<start_of_image>Is there a dog?<end_of_turn>\n<start_of_turn>model\n"
    assert a.processor.chat_template == GEMMA3_TEMPLATE
    assert type(a.processor.image_processor).__name__ == "Gemma3ImageProcessorPil"
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    ids, mask = b.inputs["input_ids"], b.inputs["attention_mask"]
    bos = a.tokenizer.bos_token_id
    for row, m in zip(ids, mask):
        real = row[m.bool()]
        assert int(real[0]) == bos and int((real == bos).sum()) == 1  # the template's BOS, not a second one
    cfg = a.model.config
    tc = cfg.text_config
    assert (tc.model_type, tc.head_dim, tc.num_key_value_heads, tc.sliding_window) == ("gemma3_text", 16, 2, 16)
    assert "sliding_attention" in tc.layer_types and "full_attention" in tc.layer_types
    assert b.inputs["pixel_values"].shape[0] == 2  # pan-and-scan off: one crop per image


def test_image_tokens_and_token_types(tiny_adapters, coco_images):
    """Only the soft tokens hold features (between <start_of_image> and <end_of_image>); the family's token
    types are the processor's, rebuilt from any prompt ids."""
    a = tiny_adapters[NAME]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    ids = b.inputs["input_ids"]
    n = a.model.config.mm_tokens_per_image
    tok = a.tokenizer
    for row, (s, e) in zip(ids, a.image_spans(ids)):
        assert e - s == n and int(row[s - 1]) == tok.convert_tokens_to_ids("<start_of_image>")
        assert int(row[e]) == tok.convert_tokens_to_ids("<end_of_image>")
    types = a.spec.row_kwargs(a, ids)["token_type_ids"]
    assert torch.equal(types, b.inputs["token_type_ids"])
    short, _ = shrink_image_tokens(a, ids, b.inputs["attention_mask"], [2, 2, 2])
    assert a.spec.row_kwargs(a, short)["token_type_ids"].sum(-1).tolist() == [2, 2, 2]


def test_engine_prefill_equals_the_models_forward(tiny_adapters, coco_images):
    """The engine's prefill (features from the family's encoding, token types from the ids) gives the model's
    own logits; without token types (a causal image block) they differ, so the bidirectional block is used."""
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    view = stack_views(a, [batch_view(a, b.inputs)], a.tokenizer.pad_token_id)
    pos = spec.position_ids(a, view.input_ids, view.attention_mask, view.image_kwargs)
    with torch.inference_mode():
        ref = a.model(**b.inputs).logits[:, -1]
        out = spec.prefill(a, view.input_ids, view.attention_mask, pos, view.encoding, view.image_kwargs)
        causal = a.model(**{k: v for k, v in b.inputs.items() if k != "token_type_ids"}).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(causal, ref, atol=1e-5)
    feats = spec.image_features(view.encoding)
    assert len(feats) == 3 and all(f.shape[0] == a.model.config.mm_tokens_per_image for f in feats)


def test_span_geometry_is_the_pooled_grid_and_relevancy_keeps_its_mass(tiny_adapters, coco_images):
    from harness.diagnosis.relevancy import pooled_vision_relevancy

    a = tiny_adapters[NAME]
    b = a.prepare(coco_images[:1], QUESTIONS[:1])
    s0, s1 = a.image_spans(b.inputs["input_ids"])[0]
    geo = a.spec.span_geometry(a, b.inputs, s1 - s0)
    assert geo == {"kind": "grid", "side": 2, "skip": 0, "vit_offset": 0, "pool": 2}  # 4x4 patches pooled 2x2
    # the model's pooling, on index-valued patches: token (i, j) averages patches rows 2i..2i+1, cols 2j..2j+1
    idx = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    pooled = a.model.model.multi_modal_projector.avg_pool(idx)[0, 0]
    assert torch.equal(pooled, idx.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(2, 2, 4).mean(-1))
    r = torch.rand(4)
    torch.testing.assert_close(pooled_vision_relevancy(r, torch.eye(16), 2, 2, 0), r.view(2, 2))
    mix = torch.rand(16, 16)
    out = pooled_vision_relevancy(r, mix, 2, 2, 0)
    spread = r.view(2, 1, 2, 1).expand(2, 2, 2, 2).reshape(-1) / 4
    torch.testing.assert_close(out.sum(), spread @ mix.sum(-1))


def test_trace_maps_the_pooled_grid(tiny_adapters, coco_images):
    from harness.diagnosis.maps import trace_answer

    tr = trace_answer(tiny_adapters[NAME], coco_images[0], "Describe the image.", max_new_tokens=3)
    assert {v.name: (v.rows, v.cols) for v in tr.views} == {"patches": (2, 2)}
    rel = tr.patch_relevancy["patches"]
    assert rel.shape == (len(tr.token_ids), 2, 2) and bool((rel >= 0).all()) and float(rel.sum()) > 0


def test_damro_refuses_with_the_reason(tiny_adapters):
    with pytest.raises(ValueError, match="damro cannot run on model family 'gemma3': .*SigLIP .*no CLS token"):
        build_intervention({"name": "damro"}).setup(tiny_adapters[NAME])


def test_gemma3_end_to_end(tmp_path):
    check_family_end_to_end(tmp_path, NAME, "damro cannot run on model family 'gemma3': .*no CLS token")
