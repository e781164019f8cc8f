"""OPERA beam search (interventions/opera.py, opera_math.py, beam.py) on the tiny models and by hand."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODELS

from harness.config import typed_node
from interventions import opera_math as om
from interventions.base import build_intervention
from interventions.beam import BeamState
from interventions.opera import opera_generate, prefilled_lane
from interventions.opera_reader import check_cache

torch.set_num_threads(1)

QUESTIONS = ["Is there a dog in the image?", "Please describe this image in detail.",
             "What is on the table?", "Is there a car?"]
BEAM = {"strategy": "beam", "num_beams": 3, "max_new_tokens": 8}
OFF = {"penalty_weights": 0.0, "rollback": False, "reference_candidate_softmax": False}
ROLL = {"threshold": 2, "rollback_min_location": 0}  # rollbacks early in a short answer


def _params(**over):
    return dict(typed_node("intervention", {"name": "opera", **over}))


def _trim(row: torch.Tensor, pad: int) -> list[int]:
    out = row.tolist()
    while out and out[-1] == pad:
        out.pop()
    return out


def _sliding_window(adapter) -> bool:
    """Whether the text model has sliding-window layers (Gemma 3): their KV cache cannot be cut per beam."""
    return "sliding_attention" in (getattr(adapter.model.config.get_text_config(), "layer_types", None) or [])


def _refused(adapter):
    return pytest.raises(ValueError, match=f"opera cannot run on model family '{adapter.family}': its KV cache layers")


# ---- off = plain beam search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS)
def test_off_equals_generate_beam_search(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    iv = build_intervention({"name": "opera", **OFF})
    iv.setup(a)
    if _sliding_window(a):
        with _refused(a), iv.session(a, b) as plan:
            plan.generate_fn(b, BEAM, [])
        return
    with iv.session(a, b) as plan:
        ids = plan.generate_fn(b, BEAM, [])
    assert torch.equal(ids, a.generate_ids(b, BEAM))


# ---- the penalty math by hand -----------------------------------------------------------------------------------
def test_column_scores_by_hand():
    # two response tokens already fed, one candidate: the 3x3 local matrix
    #   row0: [0.5]          row1: [0.2, 0.4]        candidate: [0.1, 0.3, 0.6]
    history = torch.tensor([[[0.5, 0.0], [0.2, 0.4]]])
    cand = torch.tensor([[[0.1, 0.3, 0.6]]])
    scores, index = om.column_scores(history, cand, scale_factor=10.0, window_size=512, float16_scores=False)
    expected = 1e-7 * torch.tensor([5.0 * 2.0 * 1.0, 4.0 * 3.0, 6.0])  # prod_{r>=j} 10 * M[r, j]
    assert torch.allclose(scores[0, 0], expected)
    assert index.tolist() == [0, 1, 2]
    # a window of 2 keeps the last two columns only
    scores2, index2 = om.column_scores(history, cand, 10.0, 2, False)
    assert torch.allclose(scores2[0, 0], expected[1:]) and index2.tolist() == [1, 2]
    # float16 rounding of the reference's buffer: a large product overflows to inf
    big, _ = om.column_scores(history * 100, cand * 100, 1e3, 512, True)
    assert torch.isinf(big[0, 0, 0])


def test_penalty_switches_from_image_bonus_to_column_max():
    history = torch.tensor([[[0.5, 0.0], [0.2, 0.4]]])
    cand = torch.tensor([[[0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]])
    img = torch.tensor([[0.25, 0.5]])
    pen, loc = om.penalty(history, cand, img, 10.0, 512, image_steps=3, float16_scores=False)
    assert torch.equal(pen, -img)  # 3 response tokens with the candidate <= 3: minus the image attention
    pen, loc = om.penalty(history, cand, img, 10.0, 512, image_steps=2, float16_scores=False)
    assert torch.allclose(pen, 1e-7 * torch.tensor([[12.0, 90.0]]))  # [max(10, 12, 6), max(90, 2, .5)]
    assert loc.tolist() == [[1, 0]]
    assert om.beam_locations(torch.tensor([[2, 1, 2], [0, 1, 3]])).tolist() == [2, 0]
    assert om.wants_rollback(torch.tensor([[[1, 1, 2], [1, 0, 1]]]), torch.tensor([1]), 1).tolist() == [True]
    assert om.wants_rollback(torch.tensor([[[1, 1, 2], [1, 0, 0]]]), torch.tensor([1]), 1).tolist() == [False]


def test_first_step_scores_equal_independent_forwards(tiny_adapters, coco_images):
    """Step 0 on one item: candidate score = logit + w * (its last-layer attention to the image), from one plain
    eager forward of prompt + candidate per candidate."""
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:1], QUESTIONS[1:2])
    p = _params(penalty_weights=2.0, rollback=False)
    with torch.inference_mode():
        lane = prefilled_lane(a, b, BEAM, [], p)
        cp = lane.candidate_pass()
        tok, (scores, _) = cp["tok"], lane.penalized(lane.groups[0], cp)
        ids = b.inputs["input_ids"]
        img = a.image_token_mask(ids)[0]
        for c in range(tok.shape[1]):
            t = tok[0, c]
            inputs = {**b.inputs, "input_ids": torch.cat([ids, t.view(1, 1)], 1),
                      "attention_mask": torch.cat([b.inputs["attention_mask"], torch.ones_like(ids[:, :1])], 1)}
            out = a.model(**inputs, output_attentions=True, return_dict=True)
            first = a.model(**b.inputs, return_dict=True).logits[0, -1].float()
            row = out.attentions[-1][0, :, -1].float().amax(0)
            row = row / row.sum()
            expected = first[t] + 2.0 * row[:-1][img].sum()
            assert torch.allclose(scores[:, c], expected.expand(3), atol=1e-5)


def test_candidate_softmax_renormalizes_the_first_beam_scores(tiny_adapters, coco_images):
    """reference_candidate_softmax: after step 0 the beams score log_softmax over the live beam's C candidate
    logits (the -999 fillers carry no mass); without it, log_softmax over the vocabulary."""
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:1], QUESTIONS[1:2])
    with torch.inference_mode():
        first = a.model(**b.inputs, return_dict=True).logits[0, -1].float()
        top = first.topk(5).values
        cases = ((True, torch.log_softmax(top, -1)[:3]), (False, torch.log_softmax(first, -1).topk(3).values))
        for softmax, expected in cases:
            lane = prefilled_lane(a, b, BEAM, [], _params(penalty_weights=0.0, rollback=False,
                                                          reference_candidate_softmax=softmax))
            lane.step()
            assert torch.allclose(lane.groups[0].beams.running_beam_scores[0], expected, atol=1e-5)


# ---- rollback ---------------------------------------------------------------------------------------------------
def test_one_rollback_rejects_the_beams_it_undoes(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:1], QUESTIONS[:1])
    trace = []
    p = _params(**ROLL, rollback_max_per_position=1)
    opera_generate(a, b, BEAM, [], p, trace=trace)
    rolls = trace[0]
    assert rolls, "no rollback on this configuration"
    first = rolls[0]
    assert first["step"] >= p["threshold"]  # the location must be seen more than `threshold` times
    assert len(first["rejected"]) == BEAM["num_beams"]  # the beams chosen at the restored step
    assert not set(first["chosen"]) & set(first["rejected"])
    positions = [r["position"] for r in rolls]
    assert all(positions.count(x) <= 1 for x in positions)  # rollback_max_per_position


def test_without_rollback_the_penalty_changes_nothing_at_weight_zero(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    p0 = _params(**OFF)
    p1 = _params(**{**OFF, "penalty_weights": 1e6})
    assert torch.equal(opera_generate(a, b, BEAM, [], p0), a.generate_ids(b, BEAM))
    assert not torch.equal(opera_generate(a, b, BEAM, [], p1), a.generate_ids(b, BEAM))


@pytest.mark.parametrize("width", [5, 7])  # 7: two left-padding tokens in the batch
def test_reference_length_normalization_divides_by_the_whole_length(tiny_adapters, width):
    """A hypothesis that ends at step 0 with log-prob -1: transformers 5 divides by its 1 generated token,
    the 4.29 scorer by its whole length before EOS (the 5 unpadded prompt tokens)."""
    model = tiny_adapters["tiny_llava"].model
    prompt = torch.zeros(1, width, dtype=torch.long)
    lp = torch.full((2, 4), -50.0)
    lp[0, 3], lp[0, 1], lp[0, 2] = -1.0, -2.0, -3.0  # EOS (3) is the best continuation of the live beam
    for lengths, expected in ((None, -1.0), (torch.tensor([5]), -1.0 / 5)):
        beams = BeamState(model, prompt, 2, 4, eos_ids=[3], pad_id=0, prompt_lengths=lengths)
        beams.advance(lp.clone())
        assert beams.is_sent_finished[0, 0]
        assert beams.beam_scores[0, 0].item() == pytest.approx(expected)


def test_one_item_rolls_back_while_the_others_go_on(tiny_adapters, coco_images, monkeypatch):
    """A rollback forced on item 1 only (at its step 3, back to step 2): in the batch every item still equals
    its own run, the other items equal a run without it, and only item 1 records it."""
    from interventions.opera_engine import Lane

    a = tiny_adapters["tiny_llava"]
    decoding = {**BEAM, "max_new_tokens": 10}
    p = _params(threshold=10 ** 6)  # the rule itself never fires
    b = a.prepare(coco_images[:4], QUESTIONS)
    plain = opera_generate(a, b, decoding, [], p)
    target_len = int(a.prepare(coco_images[1:2], QUESTIONS[1:2]).inputs["attention_mask"].sum())
    real = Lane._rollback_targets

    def forced(self, g):
        out = real(self, g)
        for j, item in enumerate(g.items):
            row = g.rows.start + j * self.n
            if g.t == 3 and not self.rollbacks[item] and int(self.mask[row, :self.P].sum()) == target_len:
                out[j] = {"pos": 2, "k": 2}
        return out

    monkeypatch.setattr(Lane, "_rollback_targets", forced)
    trace = []
    ids = opera_generate(a, b, decoding, [], p, trace=trace)
    pad = a.tokenizer.pad_token_id
    assert [len(x) for x in trace] == [0, 1, 0, 0]
    for i in range(4):
        one = opera_generate(a, a.prepare(coco_images[i:i + 1], QUESTIONS[i:i + 1]), decoding, [], p)
        assert _trim(ids[i], pad) == _trim(one[0], pad)
        if i != 1:
            assert _trim(ids[i], pad) == _trim(plain[i], pad)
    assert not set(trace[1][0]["chosen"]) & set(trace[1][0]["rejected"])


# ---- batching ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,over", [("tiny_llava", {"rollback": False, "reference_length_normalization": True})]
                         + [(n, ROLL) for n in TINY_MODELS])
def test_batch4_equals_batch1(tiny_adapters, coco_images, name, over):
    a = tiny_adapters[name]
    p = _params(**over)
    b = a.prepare(coco_images[:4], QUESTIONS)
    if _sliding_window(a):
        with _refused(a):
            opera_generate(a, b, BEAM, [], p)
        return
    ids = opera_generate(a, b, BEAM, [], p)
    pad = a.tokenizer.pad_token_id
    for i in range(4):
        one = opera_generate(a, a.prepare(coco_images[i:i + 1], QUESTIONS[i:i + 1]), BEAM, [], p)
        assert _trim(ids[i], pad) == _trim(one[0], pad)


# ---- refusals ---------------------------------------------------------------------------------------------------
def test_unsupported_cache_and_sampling_are_clear_errors(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]

    class Sliding:
        pass

    class Cache:
        layers = [Sliding()]

    with pytest.raises(ValueError, match="opera cannot run on model family 'llava'"):
        check_cache(a, Cache())
    b = a.prepare(coco_images[:1], QUESTIONS[:1])
    with pytest.raises(NotImplementedError, match="beam search"):
        opera_generate(a, b, {"strategy": "sample", "max_new_tokens": 4}, [], _params())
    with pytest.raises(Exception, match="num_attn_candidates"):
        build_intervention({"name": "opera", "num_attn_candidates": 0})


def test_composing_with_an_attention_edit_is_refused_but_processors_compose(tiny_adapters, coco_images):
    from transformers import LogitsProcessor

    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:1], QUESTIONS[:1])
    iv = build_intervention({"name": "compose", "members": [{"name": "head_guide"}, {"name": "opera"}]})
    iv.resolve(a.info)
    iv.setup(a)
    with iv.session(a, b) as plan, pytest.raises(NotImplementedError, match="head_guide"):
        plan.generate_fn(b, BEAM, [])

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(-1, torch.tensor([banned]), -float("inf"))

    p = _params(**OFF)
    banned = int(opera_generate(a, b, BEAM, [], p)[0, 0])
    assert int(opera_generate(a, b, BEAM, [Ban()], p)[0, 0]) != banned
