"""The tune/test split (benchmarks/split.py): fixed, seeded, disjoint, covering, grouped by image; the objective."""
from __future__ import annotations

import json
import random

import pytest

from benchmarks.base import Item
from benchmarks.split import split_items
from harness.errors import ConfigValueError, HarnessError
from harness.pipeline import build_benchmark


def _items(n_images: int = 20, per_image: int = 3) -> list[Item]:
    return [Item(f"q{i}_{k}", "p", f"/img/{i}.jpg", image_id=f"{i}.jpg") for i in range(n_images)
            for k in range(per_image)]


def test_tune_and_test_are_disjoint_cover_the_items_and_keep_their_order():
    items = _items()
    tune, test = split_items(items, "tune", 0, 0.2), split_items(items, "test", 0, 0.2)
    ids = [it.question_id for it in items]
    assert sorted(it.question_id for it in tune + test) == sorted(ids)
    assert not {it.question_id for it in tune} & {it.question_id for it in test}
    assert [it.question_id for it in tune] == [q for q in ids if q in {it.question_id for it in tune}]
    assert len({it.image_id for it in tune}) == 4  # round(0.2 x 20 images)
    assert not {it.image_id for it in tune} & {it.image_id for it in test}  # an image is on one side only
    assert split_items(items, None, 0, 0.2) == items


def test_the_split_depends_on_the_seed_only_not_on_the_item_order():
    items = _items()
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    tune = {it.question_id for it in split_items(items, "tune", 7, 0.3)}
    assert {it.question_id for it in split_items(shuffled, "tune", 7, 0.3)} == tune
    assert {it.question_id for it in split_items(items, "tune", 8, 0.3)} != tune


def test_both_sides_are_never_empty_and_text_only_items_split_by_id():
    two = [Item("a", "p", None), Item("b", "p", None)]
    assert len(split_items(two, "tune", 0, 0.01)) == 1 and len(split_items(two, "test", 0, 0.99)) == 1


def test_benchmark_split_role_filters_items_labels_and_rejects_bad_values():
    full = build_benchmark({"name": "smoke"})
    tune = build_benchmark({"name": "smoke", "split_role": "tune"})
    test = build_benchmark({"name": "smoke", "split_role": "test", "tune_fraction": 0.5})
    assert len(tune.items()) == 5 and len(full.items()) == 30  # 1 of the 6 shipped images, 5 items each
    assert tune.label() == "smoke/tune" and full.label() == "smoke"
    assert len(test.items()) == 15
    with pytest.raises(ConfigValueError, match="benchmark.split_role"):
        build_benchmark({"name": "smoke", "split_role": "train"})
    with pytest.raises(ConfigValueError, match="benchmark.tune_fraction"):
        build_benchmark({"name": "smoke", "tune_fraction": 1.0})


def test_score_only_scores_only_the_split_side_of_an_answers_file(tmp_path):
    from harness.pipeline import run_job
    from omegaconf import OmegaConf
    from hydra import compose, initialize_config_module

    full = build_benchmark({"name": "smoke"})
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": it.question_id, "answer": "A dog. Yes"}) + "\n"
                               for it in full.items()))
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose("config", overrides=[f"answers={answers}", "benchmark.split_role=tune", "benchmark.bootstrap=0",
                                           f"results_store={tmp_path / 'r.jsonl'}"])
    scores = run_job(cfg, tmp_path / "run")
    assert scores["n"] == 5
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["benchmark"] == "smoke/tune"
    assert OmegaConf.select(cfg, "optimized_metric") is None


def test_objective_reads_the_named_metric_or_names_what_exists():
    from harness.cli.run import objective

    scores = {"CHAIRs": 12.5, "existence": {"acc": 80.0}, "n": 5}
    assert objective(scores, "CHAIRs") == 12.5 and objective(scores, "existence.acc") == 80.0
    with pytest.raises(HarnessError, match="optimized_metric: no metric 'f1'.*CHAIRs"):
        objective(scores, "f1")
