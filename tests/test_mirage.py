"""Mirage controls: yes_bias and plausibility_cut on every tiny family."""
from __future__ import annotations

import pytest
import torch

from benchmarks.base import Item
from harness.runner import generate_with_plan
from interventions.base import build_intervention
from interventions.mirage import PlausibilityCutProcessor, YesBiasProcessor, yes_no_token_ids

FAMILIES = ["tiny_llava", "tiny_llava_next", "tiny_instructblip", "tiny_blip2"]
GREEDY = {"strategy": "greedy", "max_new_tokens": 10}
QUESTIONS = ["Is there a dog in the image?", "Is there a bowl in the image?", "Please describe this image in detail."]


def batch_of(adapter, images, questions=QUESTIONS):
    b = adapter.prepare(images[: len(questions)], questions)
    b.items = [Item(i, q, None) for i, q in enumerate(questions)]
    return b


def generate(adapter, interv, batch, decoding, seed=0):
    torch.manual_seed(seed)
    with interv.session(adapter, batch) as plan:
        return generate_with_plan(adapter, plan, batch, decoding)


@pytest.mark.parametrize("name", FAMILIES)
def test_yes_no_token_ids_read_yes_and_no(tiny_adapters, name):
    tok = tiny_adapters[name].tokenizer
    yes, no = yes_no_token_ids(tok)
    assert yes and no and not set(yes) & set(no)
    assert {tok.decode([i]).strip().lower() for i in yes} == {"yes"}
    assert {tok.decode([i]).strip().lower() for i in no} == {"no"}


@pytest.mark.parametrize("name", FAMILIES)
def test_strength_zero_and_greedy_cut_equal_the_baseline(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = batch_of(a, coco_images)
    base = generate(a, build_intervention({"name": "none"}), b, GREEDY)
    for cfg in ({"name": "yes_bias", "strength": 0.0}, {"name": "yes_bias", "strength": 0.0, "steps": "all"},
                {"name": "plausibility_cut", "beta": 0.1}, {"name": "plausibility_cut", "beta": 0.9}):
        assert torch.equal(generate(a, build_intervention(cfg), b, GREEDY), base), cfg


@pytest.mark.parametrize("name", FAMILIES)
def test_a_strong_bias_decides_the_first_token(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = batch_of(a, coco_images)
    yes, no = yes_no_token_ids(a.tokenizer)
    for strength, wanted in ((1e4, yes), (-1e4, no)):
        ids = generate(a, build_intervention({"name": "yes_bias", "strength": strength}), b, GREEDY)
        assert all(int(t) in wanted for t in ids[:, 0]), (strength, ids[:, 0])
        # steps=first: later tokens are not forced (no row is "yes yes yes ...")
        assert not all(int(t) in wanted for t in ids[:, 1:].flatten())


def test_yes_bias_shifts_exactly_the_log_odds():
    scores = torch.randn(2, 10)
    p = YesBiasProcessor([3], [5, 7], 1.5)
    out = p(torch.zeros(2, 4, dtype=torch.long), scores)
    assert torch.allclose(out[:, 3] - scores[:, 3], torch.full((2,), 0.75))
    assert torch.allclose(out[:, [5, 7]] - scores[:, [5, 7]], torch.full((2, 2), -0.75))
    keep = [i for i in range(10) if i not in (3, 5, 7)]
    assert torch.equal(out[:, keep], scores[:, keep])
    assert torch.equal(p(torch.zeros(2, 5, dtype=torch.long), scores), scores)  # a later step: untouched


def test_cut_masks_exactly_the_implausible_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    out = PlausibilityCutProcessor(0.2)(None, logits)  # keep p >= 0.2 * 0.5 = 0.1
    assert torch.isfinite(out).tolist() == [[True, True, True, False, False]]
    assert torch.equal(out[:, :3], logits[:, :3])
    assert torch.equal(PlausibilityCutProcessor(0.0)(None, logits), logits)
    with pytest.raises(ValueError, match="beta"):
        build_intervention({"name": "plausibility_cut", "beta": 1.5})


def test_cut_changes_sampling(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = batch_of(a, coco_images, QUESTIONS[2:] * 3)
    sample = {"strategy": "sample", "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 12}
    base = generate(a, build_intervention({"name": "none"}), b, sample, seed=7)
    again = generate(a, build_intervention({"name": "plausibility_cut", "beta": 0.0}), b, sample, seed=7)
    cut = generate(a, build_intervention({"name": "plausibility_cut", "beta": 0.9}), b, sample, seed=7)
    assert torch.equal(base, again)  # beta 0 samples exactly like the baseline
    assert not torch.equal(base, cut)
    # the first sampled token had p >= 0.9 * max p under the model's own first-step distribution
    with torch.inference_mode():
        out = a.model.generate(**b.inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=a.tokenizer.pad_token_id)
    probs = torch.softmax(out.logits[0].float(), dim=-1)
    chosen = probs.gather(1, cut[:, :1]).squeeze(1)
    assert bool((chosen >= 0.9 * probs.max(dim=-1).values - 1e-6).all())
    assert int((probs >= 0.9 * probs.max(dim=-1, keepdim=True).values).sum()) < probs.numel() / 10
