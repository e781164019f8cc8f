"""InternVL: the chat template and image-only processor, dynamic tiles (image tokens, per-image tile counts and
pixels), the encoding the engine merges, DAMRO's CLS attention through pixel shuffle, and end to end runs."""
from __future__ import annotations


import torch

from conftest import check_family_end_to_end
from harness.models.families.internvl import INTERNVL_TEMPLATE, shuffle_groups
from interventions.contrastive import batch_view, stack_views
from interventions.vcd import noised_pixels

NAME = "tiny_internvl"
QUESTIONS = ["Is there a dog?", "Describe the image.", "What is on the table?", "Is there a car?"]


def test_prompt_processor_and_tiny_architecture(tiny_adapters):
    a = tiny_adapters[NAME]
    assert a.format_prompt("Is there a dog?") == \
        "<|im_start|>user\n<IMG_CONTEXT>\nIs there a dog?<|im_end|>\n<|im_start|>assistant\n"
    assert a.processor.chat_template == INTERNVL_TEMPLATE
    assert not hasattr(a.processor, "video_processor")  # built and run without torchvision
    assert type(a.processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    cfg = a.model.config
    tc = cfg.text_config
    assert (tc.model_type, tc.num_attention_heads, tc.num_key_value_heads) == ("qwen2", 4, 2)
    assert cfg.vision_config.model_type == "internvl_vision" and cfg.downsample_ratio == 0.5
    assert a.spec.tokens_per_tile(a) == a.processor.image_seq_length == 4  # 4x4 patches, 2x2 after the shuffle


def test_tiles_image_tokens_and_pixels_per_image(tiny_adapters, coco_images):
    """Tile counts as the image processor gives them, one contiguous <IMG_CONTEXT> run per row between <img> and
    </img>, per-image pixels independent of the batch."""
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    images = coco_images[:4]
    b = a.prepare(images, QUESTIONS)
    vis = spec.vision_inputs(b.inputs)
    counts = a.processor.image_processor(images, crop_to_patches=True)["num_patches"]
    assert vis["num_patches"].tolist() == list(counts) and len(set(counts)) > 1  # tiles differ per image
    ids = b.inputs["input_ids"]
    tok = a.tokenizer
    for row, (s, e), n in zip(ids, a.image_spans(ids), counts):
        assert e - s == 4 * n and int(row[s - 1]) == tok.convert_tokens_to_ids("<img>")
        assert int(row[e]) == tok.convert_tokens_to_ids("</img>")
    assert a.image_token_mask(ids).sum(-1).tolist() == [4 * n for n in counts]
    pieces = spec.split_pixels(vis)
    singles = [spec.split_pixels(spec.vision_inputs(a.prepare([im], [q]).inputs))[0]
               for im, q in zip(images, QUESTIONS)]
    assert all(torch.equal(p, s) for p, s in zip(pieces, singles))
    assert torch.equal(spec.join_pixels(vis, pieces)["pixel_values"], vis["pixel_values"])
    noisy = noised_pixels(pieces, 500, 0, b.images)
    assert torch.equal(noisy[1], noised_pixels(singles[1:2], 500, 0, b.images[1:2])[0])


def test_engine_prefill_equals_the_models_forward_and_positions(tiny_adapters, coco_images):
    """The engine's prefill with the family's encoding gives the model's own logits (pixel path); positions
    are each row's cumsum - 1 (padding does not shift a row)."""
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    view = stack_views(a, [batch_view(a, b.inputs)], a.tokenizer.pad_token_id)
    pos = spec.position_ids(a, view.input_ids, view.attention_mask, view.image_kwargs)
    with torch.inference_mode():
        ref = a.model(**b.inputs).logits[:, -1]
        out = spec.prefill(a, view.input_ids, view.attention_mask, pos, view.encoding, view.image_kwargs)
    torch.testing.assert_close(out.logits[:, -1], ref, rtol=1e-4, atol=1e-4)
    for row, mask in zip(pos, view.attention_mask):
        n = int(mask.sum())
        assert row[-n:].tolist() == list(range(n)) and not bool(row[:-n].any())
    feats = spec.image_features(view.encoding)
    assert [f.shape[0] for f in feats] == a.image_token_mask(b.inputs["input_ids"]).sum(-1).tolist()


def test_pixel_shuffle_groups_are_2x2_blocks(tiny_adapters):
    groups = shuffle_groups(tiny_adapters[NAME].model, 4)
    assert groups.shape == (4, 4) and sorted(groups.flatten().tolist()) == list(range(16))
    for g in groups.tolist():
        rows, cols = {i // 4 for i in g}, {i % 4 for i in g}
        assert len(rows) == len(cols) == 2 and max(rows) - min(rows) == 1 and max(cols) - min(cols) == 1
        assert min(rows) % 2 == 0 and min(cols) % 2 == 0


def test_damro_cls_attention_is_the_encoders_own(tiny_adapters, coco_images):
    """The recipe's CLS row equals the encoder's eager attention (head mean), summed over each token's 2x2
    patches, on each image's last (whole-image) tile; the kept features are that tile's top-k tokens."""
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    vis = spec.vision_inputs(b.inputs)
    enc, cls_attn, _ = spec.cls_patch_attention(a, vis)
    last = torch.cumsum(vis["num_patches"], 0) - 1
    with torch.inference_mode():
        att = a.model.model.vision_tower(pixel_values=vis["pixel_values"], output_attentions=True).attentions[-1]
    ref = att[last][:, :, 0, 1:].float().mean(1)[:, shuffle_groups(a.model, 4)].sum(-1)
    torch.testing.assert_close(cls_attn, ref, rtol=1e-5, atol=1e-6)
    idx = torch.topk(cls_attn, 2, dim=1).indices
    kept, shrinks = spec.topk_features(a, enc, None, idx, vis, False)
    assert shrinks
    for f, k, i in zip(spec.image_features(enc), kept, idx):
        assert torch.equal(k, f[-4:][i])


def test_one_tile_diagnosis_is_the_token_grid(tiny_adapters, coco_images):
    """A square image is one tile: its 2x2 token grid, relevancy pushed through the encoder's rollout; an
    image of several tiles stays a bar per token."""
    from harness.diagnosis.maps import trace_answer

    a = tiny_adapters[NAME]
    square = coco_images[0].resize((56, 56))
    tr = trace_answer(a, square, "Describe the image.", max_new_tokens=3)
    assert tr.geometry["kind"] == "grid" and tr.geometry["pool"] == 2 and tr.span[1] - tr.span[0] == 4
    assert {v.name: (v.rows, v.cols) for v in tr.views} == {"patches": (2, 2)}
    rel = tr.patch_relevancy["patches"]
    assert rel.shape[1:] == (2, 2) and bool((rel >= 0).all()) and bool(torch.isfinite(rel).all())
    wide = a.prepare([coco_images[0]], ["x"])
    s0, s1 = a.image_spans(wide.inputs["input_ids"])[0]
    assert a.spec.span_geometry(a, wide.inputs, s1 - s0)["kind"] == "tokens"


def test_internvl_end_to_end(tmp_path):
    # images with different tile counts in one batch answer as alone; DAMRO runs (its recipe is not from the paper)
    check_family_end_to_end(tmp_path, NAME, None)
