"""The tiny model families: prompts, image spans, sites and batched = unbatched generation."""
import pytest
import torch

from conftest import TINY_MODELS

FAMILIES = TINY_MODELS
QUESTIONS = ["Please describe this image in detail.", "Is there a dog in the image?", "What is on the table?"]


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_generation_equals_single_rows(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    imgs = coco_images[:3]
    batched = a.generate(a.prepare(imgs, QUESTIONS), {"max_new_tokens": 10})
    singles = [a.generate(a.prepare([im], [q]), {"max_new_tokens": 10})[0] for im, q in zip(imgs, QUESTIONS)]
    assert batched == singles
    assert all(isinstance(t, str) for t in batched)


@pytest.mark.parametrize("name", FAMILIES)
def test_image_positions_hold_exactly_the_image_features(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    batch = a.prepare(coco_images[:2], QUESTIONS[:2])
    ids = batch.inputs["input_ids"]
    mask = a.image_token_mask(ids)
    with torch.inference_mode():
        feats = a.spec.image_features(a.spec.encode_images(a, a.spec.vision_inputs(batch.inputs)))
    assert [int(m.sum()) for m in mask] == [f.shape[0] for f in feats]  # one entry per row's image
    assert not bool((mask & (batch.inputs["attention_mask"] == 0)).any())  # never on padding
    assert bool((ids[mask] == a.image_token_id).all())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_site_resolves(tiny_adapters, name):
    from harness.models.families.base import SITE_NAMES

    a = tiny_adapters[name]
    assert set(a.sites) == set(SITE_NAMES), f"{name}: sites must name every abstract site (None if absent)"
    for site in ("decoder_layers", "attention", "final_norm", "lm_head", "embed_tokens", "vision_layers",
                 "vision_tower", "projector"):
        assert a.sites[site], f"{name}: site {site} is required"
    for site in SITE_NAMES:
        if a.sites[site] and site != "attention":
            assert isinstance(a.site(site), torch.nn.Module)
    assert isinstance(a.decoder_layers()[0].get_submodule(a.sites["attention"]), torch.nn.Module)
    assert a.num_layers == 4


def test_prompt_templates(tiny_adapters):
    assert tiny_adapters["tiny_llava"].format_prompt("Hi?") == "USER: <image>\nHi? ASSISTANT:"
    assert tiny_adapters["tiny_blip2"].format_prompt("Hi?") == "Question: Hi? Answer:"
    assert tiny_adapters["tiny_instructblip"].format_prompt("Hi?") == "Hi?"
    assert tiny_adapters["tiny_llava_next"].format_prompt("Hi?").endswith("USER: <image>\nHi? ASSISTANT:")


def test_unknown_site_names_the_family(tiny_adapters):
    with pytest.raises(KeyError, match="llava"):
        tiny_adapters["tiny_llava"].site("no_such_site")


def test_model_path_errors_are_clear(tmp_path):
    from harness.models.loader import load_adapter

    with pytest.raises(ValueError, match="either model.tiny .* or model.path"):
        load_adapter({"name": "x", "family": "llava", "tiny": "tiny_llava", "path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        load_adapter({"name": "llava15_7b", "tiny": None, "path": str(tmp_path / "missing")})
