"""Composition: interventions on different sites compose through `compose`, plans merge correctly."""
from contextlib import contextmanager

import pytest
import torch

from harness.runner import generate_with_plan
from interventions.base import GenerationPlan, Intervention, build_intervention

GUIDE = {"name": "head_guide", "layers": [1, 2], "alpha": 0.5}


def _generate(adapter, cfg, images, questions, tokens=8):
    iv = build_intervention(cfg)
    iv.setup(adapter)
    batch = adapter.prepare(images, questions)
    with iv.session(adapter, batch) as plan:
        return generate_with_plan(adapter, plan, batch, {"max_new_tokens": tokens}).tolist()


@pytest.mark.parametrize("engine", ["vcd", "damro"])
@pytest.mark.parametrize("name", ["tiny_llava", "tiny_instructblip"])
def test_head_guide_inside_a_contrastive_engine_guides_the_right_rows(tiny_adapters, coco_images, name, engine):
    a = tiny_adapters[name]
    imgs, qs = coco_images[:2], ["Describe the image.", "Is there a dog?"]
    alone = _generate(a, GUIDE, imgs, qs)
    # with the engine at strength 0 only the original rows decide, and they must be guided exactly as alone
    both = _generate(a, {"name": "compose", "members": [GUIDE, {"name": engine, "alpha": 0}]}, imgs, qs)
    assert both == alone
    baseline = _generate(a, {"name": "none"}, imgs, qs)
    zero = _generate(a, {"name": "compose", "members": [{**GUIDE, "alpha": 0}, {"name": engine, "alpha": 0}]},
                     imgs, qs)
    assert zero == baseline


class _Tagger(Intervention):
    """Test double: fills its row info only in postprocess, like warn and first_token_probe."""

    def __init__(self, key):
        super().__init__({"name": key})
        self.name, self.key = key, key

    @contextmanager
    def session(self, adapter, batch):
        plan = GenerationPlan()

        def post(answers, b):
            plan.row_info = [{self.key: i} for i in range(len(answers))]
            return [x + f"|{self.key}" for x in answers]

        plan.postprocess = post
        yield plan


def test_composite_keeps_row_info_filled_in_postprocess():
    from interventions.base import Composite

    comp = Composite([_Tagger("a"), _Tagger("b")])
    with comp.session(None, None) as plan:
        answers = plan.postprocess(["x", "y"], None)
    assert answers == ["x|a|b", "y|a|b"]
    assert plan.row_info == [{"a": 0, "b": 0}, {"a": 1, "b": 1}]


def test_two_decoding_engines_do_not_compose(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    iv = build_intervention({"name": "compose", "members": [{"name": "vcd"}, {"name": "damro"}]})
    with pytest.raises(ValueError, match="two decoding engines"):
        with iv.session(a, a.prepare(coco_images[:1], ["Hi"])):
            pass


def test_a_composed_member_equals_the_same_choice_alone():
    from harness.config import group_defaults

    alone = build_intervention(group_defaults("intervention", "vcd"))  # configs/intervention/vcd.yaml as composed
    member = build_intervention({"name": "compose", "members": [{"name": "vcd"}]}).members[0]
    assert member.params() == alone.params() and member.label() == alone.label()
