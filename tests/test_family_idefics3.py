"""Idefics3 / SmolVLM: chat template and processor, the non-contiguous image positions (tiles, then the global
image), per-image tiles for pixel-space views, padding across views, engine prefill vs the model, the `tiles`
diagnosis layout, the SmolVLM model type, and the family end to end."""
from __future__ import annotations

import base64

import pytest
import torch

from conftest import check_family_end_to_end
from harness.diagnosis.span_geometry import span_views, to_views
from harness.models.families import family_for_model_type
from harness.models.families.idefics3 import IDEFICS3_TEMPLATE, image_only_smolvlm_processor_class, tile_layout
from interventions.contrastive_views import encode

NAME = "tiny_idefics3"
QUESTIONS = ["Is there a dog?", "Describe the image.", "What is on the table?", "Is there a car?"]


def test_prompt_processor_and_tiny_architecture(tiny_adapters):
    a = tiny_adapters[NAME]
    assert a.format_prompt("Is there a dog?") == \
        "<|begin_of_text|>User:<image>Is there a dog?<end_of_utterance>\nAssistant:"
    assert a.processor.chat_template == IDEFICS3_TEMPLATE
    assert type(a.processor.image_processor).__name__ == "Idefics3ImageProcessorPil"
    cfg = a.model.config
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.model_type, tc.num_attention_heads, tc.num_key_value_heads) == ("llama", 4, 2)  # grouped-query
    assert (vc.image_size, vc.patch_size, cfg.scale_factor) == (56, 14, 2)
    assert a.processor.image_seq_len == a.model.model.image_seq_len == 4
    assert family_for_model_type("idefics3") is a.spec and family_for_model_type("smolvlm") is a.spec


def test_image_mask_marks_exactly_the_image_tokens_of_tiles_then_global(tiny_adapters, coco_images):
    """Per tile `<fake><row_r_col_c>` + 4 `<image>`, then `<fake><global-img>` + 4 `<image>` `<fake>`: the mask is
    the `<image>` tokens only (not contiguous), and the model fills exactly those positions with the features."""
    a = tiny_adapters[NAME]
    b = a.prepare(coco_images[:4], QUESTIONS)
    ids = b.inputs["input_ids"]
    mask = a.image_token_mask(ids)
    assert torch.equal(mask, ids == a.processor.image_token_id)
    tok = a.tokenizer
    seq = a.processor.image_seq_len
    for i in range(4):
        rows, cols = tile_layout(a, ids[i])
        pos = a.image_positions(ids)[i]
        assert pos.numel() == (rows * cols + 1) * seq
        runs = pos.view(-1, seq)
        assert bool((runs[:, 1:] - runs[:, :-1] == 1).all())  # each tile one run of seq tokens...
        assert bool((runs[1:, 0] - runs[:-1, -1] > 1).all())  # ... with text tokens between runs
        before = tok.convert_ids_to_tokens(ids[i, runs[:, 0] - 1].tolist())
        headers = [f"<row_{r + 1}_col_{c + 1}>" for r in range(rows) for c in range(cols)] + ["<global-img>"]
        assert before == headers
        assert bool((ids[i, runs[:, 0] - 2] == tok.convert_tokens_to_ids("<fake_token_around_image>")).all())
    with pytest.raises(ValueError, match="not contiguous"):
        a.image_spans(ids)
    # the model scatters each row's features into exactly the masked positions, in order
    m = a.model.model
    with torch.no_grad():
        feats = a.spec.image_features(encode(a, a.spec.vision_inputs(b.inputs)))
        embeds = m.inputs_merger(ids, m.get_input_embeddings()(ids), torch.cat(feats))
    for i in range(4):
        assert torch.equal(embeds[i][mask[i]], feats[i])
    assert [f.shape[0] for f in feats] == mask.sum(1).tolist()


def test_tiles_per_image_drop_padding_and_views_of_different_tile_counts_pad(tiny_adapters, coco_images):
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    b = a.prepare(coco_images[:4], QUESTIONS)
    vis = spec.vision_inputs(b.inputs)
    assert set(vis) == {"pixel_values", "pixel_attention_mask"}
    pieces = spec.split_pixels(vis)
    singles = [spec.vision_inputs(a.prepare([im], [q]).inputs) for im, q in zip(coco_images[:4], QUESTIONS)]
    counts = [p.shape[0] for p in pieces]
    assert counts == [5, 5, 3, 5] and vis["pixel_values"].shape[1] == 5  # 2x2 + global; 1x2 + global
    assert all(torch.equal(p, spec.split_pixels(s)[0]) for p, s in zip(pieces, singles))
    assert torch.equal(spec.join_pixels(vis, pieces)["pixel_values"], vis["pixel_values"])
    # a 3-tile batch and a 5-tile batch concatenated: padded with all-zero tiles, features as encoded alone
    both = spec.concat_vision_inputs([singles[2], singles[0]])
    assert both["pixel_values"].shape[:2] == (2, 5) and both["pixel_attention_mask"].shape[:2] == (2, 5)
    assert not bool(both["pixel_values"][0, 3:].any()) and not bool(both["pixel_attention_mask"][0, 3:].any())
    with torch.no_grad():
        joint = spec.image_features(encode(a, both))
        alone = [spec.image_features(encode(a, s))[0] for s in (singles[2], singles[0])]
    assert all(torch.allclose(j, s, atol=1e-5) for j, s in zip(joint, alone))


def test_engine_prefill_positions_match_the_model_and_the_row_alone(tiny_adapters, coco_images):
    """The engine's prefill (cumsum - 1 positions, precomputed features) equals the model's own forward on the
    pixels for an unpadded row, and a left-padded row of a batch equals the row alone."""
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec

    def last_logits(inputs):
        ids, att = inputs["input_ids"], inputs["attention_mask"]
        enc = encode(a, spec.vision_inputs(inputs))
        pos = spec.position_ids(a, ids, att, {})
        with torch.no_grad():
            return spec.prefill(a, ids, att, pos, enc, {}).logits[:, -1]

    alone = a.prepare([coco_images[2]], [QUESTIONS[2]]).inputs
    with torch.no_grad():
        ref = a.model(**alone).logits[:, -1]
    torch.testing.assert_close(last_logits(alone), ref, rtol=1e-5, atol=1e-5)
    batch = a.prepare(coco_images[:4], QUESTIONS).inputs
    assert int(batch["attention_mask"][2].sum()) < batch["attention_mask"].shape[1]  # row 2 is left-padded
    torch.testing.assert_close(last_logits(batch)[2:3], ref, rtol=1e-4, atol=1e-4)


def test_tiles_geometry_reassembles_each_tile_grid(tiny_adapters, coco_images):
    a = tiny_adapters[NAME]
    b = a.prepare([coco_images[0]], ["x"])
    n = a.image_token_mask(b.inputs["input_ids"]).sum().item()
    g = a.spec.span_geometry(a, b.inputs, n)
    assert g == {"kind": "tiles", "side": 2, "rows": 2, "cols": 2, "scale": 2}
    assert [(v.name, v.rows, v.cols) for v in span_views(g)] == [("tiles", 4, 4), ("global", 2, 2)]
    # token k of tile (r, c) at row-major cell (i, j) of its 2x2 grid holds 100 r + 10 c + (2 i + j)
    vals = torch.tensor([100 * r + 10 * c + k for r in range(2) for c in range(2) for k in range(4)] + [-1.0] * 4)
    views = to_views(g, vals[None])
    tiles = views["tiles"][0]
    for r in range(2):
        for c in range(2):
            for i in range(2):
                for j in range(2):
                    assert tiles[2 * r + i, 2 * c + j] == 100 * r + 10 * c + 2 * i + j
    assert bool((views["global"] == -1).all())
    # the connector's pixel shuffle: token (i, j) of a tile is the 2x2 patch block at patch rows 2i.., cols 2j..
    shuffled = a.model.model.connector.pixel_shuffle(torch.arange(16.).view(1, 16, 1), 2)[0]  # [4 tokens, 4]
    assert shuffled[:, 0].tolist() == [8.0 * i + 2 * j for i in range(2) for j in range(2)]
    assert a.spec.span_geometry(a, b.inputs, n - 1)["kind"] == "tokens"  # a layout that does not fit


def test_diagnosis_attention_is_read_at_the_image_positions(tiny_adapters, coco_images):
    from harness.diagnosis.maps import trace_answer

    a = tiny_adapters[NAME]
    tr = trace_answer(a, coco_images[0], "Describe the image.", max_new_tokens=3, relevancy=True)
    batch = a.prepare([coco_images[0]], ["Describe the image."])
    pos = a.image_positions(batch.inputs["input_ids"])[0]
    assert tr.image_positions == pos.tolist() and tr.span == (int(pos[0]), int(pos[-1]) + 1)
    assert tr.attention.shape == (4, 3, 20) and tr.relevancy.shape == (3, 20)
    with torch.no_grad():
        out = a.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False, output_attentions=True,
                               return_dict_in_generate=True, pad_token_id=a.tokenizer.pad_token_id)
    assert out.sequences[0, batch.inputs["input_ids"].shape[1]:].tolist() == tr.token_ids
    first = torch.stack([att[0, :, -1, pos].float().mean(0) for att in out.attentions[0]])  # token 0, per layer
    torch.testing.assert_close(tr.attention[:, 0], first, rtol=1e-4, atol=1e-5)
    assert [v.name for v in tr.views] == ["tiles", "global"]
    # relevancy pushed through each tile's encoder rollout, shown at the token grids
    assert {k: tuple(v.shape) for k, v in tr.patch_relevancy.items()} == {"tiles": (3, 4, 4), "global": (3, 2, 2)}
    assert all(bool(v.isfinite().all()) and bool(v.abs().sum() > 0) for v in tr.patch_relevancy.values())
    from harness.diagnosis.report import report_payload

    payload = report_payload(tr, chair=False)
    assert payload["geometry"] == "tiles"
    for kind in payload["kinds"]:  # attention, relevancy, relevancy through the encoder: tile grid and global
        assert [(v["name"], v["rows"], v["cols"]) for v in kind["views"]] == [("tiles", 4, 4), ("global", 2, 2)]
        for v in kind["views"]:  # one cell per grid cell, per (token, layer)
            assert len(base64.b64decode(v["data"])) == len(v["scale"]) * v["rows"] * v["cols"], kind["name"]


def test_smolvlm_model_type_and_image_only_processor(tmp_path, tiny_adapters, coco_images):
    """A SmolVLM checkpoint (model_type smolvlm) loads under this family with the image-only SmolVLM processor,
    whose prompts equal Idefics3's, and the model encodes what the family expects."""
    import transformers
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from harness.models.adapter import VLMAdapter

    a = tiny_adapters[NAME]
    ip = a.processor.image_processor
    smol_ip = transformers.SmolVLMImageProcessorPil(size=ip.size, max_image_size=ip.max_image_size,
                                                    image_mean=ip.image_mean, image_std=ip.image_std)
    proc = image_only_smolvlm_processor_class()(image_processor=smol_ip, tokenizer=a.tokenizer, image_seq_len=4,
                                                chat_template=IDEFICS3_TEMPLATE)
    cfg = a.model.config.to_dict()
    smol = SmolVLMConfig(vision_config={**cfg["vision_config"], "model_type": "smolvlm_vision"},
                         text_config=cfg["text_config"], image_token_id=cfg["image_token_id"], scale_factor=2)
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(smol).save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    spec = family_for_model_type("smolvlm")
    loaded = spec.load_processor(str(tmp_path))
    assert not hasattr(loaded, "video_processor")
    model = SmolVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    s = VLMAdapter(model, loaded, spec, name="tiny_smolvlm")
    assert s.format_prompt("x") == a.format_prompt("x")
    bs, bi = s.prepare(coco_images[:2], QUESTIONS[:2]), a.prepare(coco_images[:2], QUESTIONS[:2])
    assert torch.equal(bs.inputs["input_ids"], bi.inputs["input_ids"])
    torch.testing.assert_close(bs.inputs["pixel_values"], bi.inputs["pixel_values"])
    assert s.site("decoder_layers") is model.model.text_model.layers
    with torch.no_grad():
        feats = spec.image_features(encode(s, spec.vision_inputs(bs.inputs)))
    assert [f.shape[0] for f in feats] == s.image_token_mask(bs.inputs["input_ids"]).sum(1).tolist()


# ------------------------------------------------------------------ end to end
def test_idefics3_end_to_end(tmp_path):
    # images with 2x2 and 1x2 tiles (padding tiles) in one batch answer as alone
    check_family_end_to_end(tmp_path, NAME,
                            "damro cannot run on model family 'idefics3': .*no CLS token")
