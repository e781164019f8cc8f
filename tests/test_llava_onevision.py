"""LLaVA-OneVision: the chat template, the image-only processor, the packing the span geometry assumes,
per-image pixels for pixel-space views, and the diagnosis push-back through the anyres_max shrink."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.diagnosis.relevancy import _bilinear_adjoint
from harness.models.families.llava_onevision import ONEVISION_TEMPLATE, max_tiles, tile_grid
from interventions.base import build_intervention
from interventions.vcd import noised_pixels

NAME = "tiny_llava_onevision"
QUESTIONS = ["Is there a dog?", "Describe the image.", "What is on the table?", "Is there a car?"]


def test_prompt_processor_and_tiny_architecture(tiny_adapters):
    a = tiny_adapters[NAME]
    assert a.format_prompt("Is there a dog?") == \
        "<|im_start|>user <image>\nIs there a dog?<|im_end|><|im_start|>assistant\n"
    assert a.processor.chat_template == ONEVISION_TEMPLATE
    assert not hasattr(a.processor, "video_processor")  # built and run without torchvision
    assert type(a.processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"
    cfg = a.model.config
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.model_type, tc.num_attention_heads, tc.num_key_value_heads) == ("qwen2", 4, 2)  # grouped-query
    assert vc.model_type == "siglip_vision_model" and cfg.vision_feature_select_strategy == "full"
    assert max_tiles(cfg.vision_aspect_ratio) == 2 and max_tiles("anyres_max_9") == 9


def _index_features(nph: int, npw: int, h: int, w: int) -> torch.Tensor:
    """Crop features [1 + tiles, h*w, 1] whose value is the cell's index (base crop: 0..h*w-1; tiles: the flat
    index in the padded grid of tiles, row-major over the whole tiled image)."""
    grid = torch.arange(nph * h * npw * w, dtype=torch.float32).view(nph, h, npw, w)
    tiles = grid.permute(0, 2, 1, 3).reshape(nph * npw, h * w)
    return torch.cat([torch.arange(h * w, dtype=torch.float32)[None], tiles])[..., None]


def test_the_models_packing_follows_the_span_geometry(tiny_adapters, coco_images):
    """`pack_image_features` on index-valued features: the base crop in order, then per row the unpadded cells
    (bilinearly shrunk where anyres_max says so) and a newline; lengths as the processor counts them."""
    a = tiny_adapters[NAME]
    cfg = a.model.config
    shrunk = []
    for image in coco_images:
        b = a.prepare([image], ["x"])
        s0, s1 = a.image_spans(b.inputs["input_ids"])[0]
        geo = a.spec.span_geometry(a, b.inputs, s1 - s0)
        size = b.inputs["image_sizes"][0]
        assert geo["kind"] == "anyres" and geo["vit_offset"] == 0
        assert torch.equal(geo["unpad"], tile_grid(size.tolist(), cfg)["unpad"])
        h, w, rows, cols, un = geo["h"], geo["w"], geo["rows"], geo["cols"], geo["unpad"]
        feats = _index_features(geo["nph"], geo["npw"], h, w)
        (packed,), lens = a.model.model.pack_image_features([feats], size[None], image_newline=torch.tensor([-1.0]),
                                                             vision_aspect_ratio=cfg.vision_aspect_ratio)
        packed = packed[:, 0]
        assert packed.numel() == s1 - s0 == int(lens[0])
        assert torch.equal(packed[:h * w], torch.arange(h * w, dtype=torch.float32))
        tiles = packed[h * w:].view(rows, cols + 1)
        assert bool((tiles[:, -1] == -1).all())
        if tuple(un.shape) == (rows, cols):
            assert torch.equal(tiles[:, :-1], un.float())
        else:
            shrunk.append(image.size)
            torch.testing.assert_close(tiles[:, :-1], F.interpolate(un.float()[None, None], [rows, cols],
                                                                    mode="bilinear")[0, 0])
    assert 0 < len(shrunk) < len(coco_images)  # the tiny model takes both branches


def test_pixels_per_image_drop_batch_padding(tiny_adapters, coco_images):
    a, spec = tiny_adapters[NAME], tiny_adapters[NAME].spec
    b = a.prepare(coco_images[:4], QUESTIONS)
    vis = spec.vision_inputs(b.inputs)
    pieces = spec.split_pixels(vis)
    singles = [spec.split_pixels(spec.vision_inputs(a.prepare([im], [q]).inputs))[0]
               for im, q in zip(coco_images[:4], QUESTIONS)]
    assert [p.shape[0] for p in pieces] == [5, 5, 4, 5] and vis["pixel_values"].shape[1] == 5
    assert all(torch.equal(p, s) for p, s in zip(pieces, singles))
    assert torch.equal(spec.join_pixels(vis, pieces)["pixel_values"], vis["pixel_values"])
    # VCD noise of an image does not depend on the batch it is in
    noisy = noised_pixels(pieces, 500, 0, b.images)
    assert torch.equal(noisy[2], noised_pixels(singles[2:3], 500, 0, b.images[2:3])[0])


def test_damro_refuses_with_the_reason(tiny_adapters):
    import pytest

    with pytest.raises(ValueError, match="SigLIP vision encoder has no CLS token"):
        build_intervention({"name": "damro"}).setup(tiny_adapters[NAME])


def test_bilinear_adjoint_is_the_transpose_of_the_shrink():
    torch.manual_seed(0)
    x, v = torch.rand(6, 8), torch.rand(4, 6)
    wx = F.interpolate(x[None, None], [4, 6], mode="bilinear")[0, 0]
    wtv = _bilinear_adjoint(v, (6, 8))
    torch.testing.assert_close((wx * v).sum(), (x * wtv).sum())  # <W x, v> = <x, Wᵀ v>
    torch.testing.assert_close(wtv.sum(), v.sum())  # relevancy mass is kept
    assert bool((wtv >= 0).all())
