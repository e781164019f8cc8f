"""Question sets in the hub format other harnesses publish (Parquet with embedded images), via `datasets`."""
import datasets
import pytest
from PIL import Image

from benchmarks.mme import MME
from benchmarks.pope import POPE
from harness.fingerprint import make_fingerprint
from harness.records import read_jsonl
from harness.runner import generate_answers
from interventions.base import build_intervention


@pytest.fixture
def images(coco_images):
    return [im.resize((64, 48)) for im in coco_images[:2]]


def _parquet(tmp_path, rows, name):
    feats = {k: datasets.Image() if k == "image" else datasets.Value("string") for k in rows[0]}
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(feats))
    path = tmp_path / f"{name}.parquet"
    ds.to_parquet(str(path))
    return path


def test_pope_from_parquet_with_embedded_images_runs_and_scores(tmp_path, images, tiny_adapters):
    rows = []
    for split in ("random", "popular", "adversarial"):
        for i, (obj, label) in enumerate([("person", "yes"), ("dog", "no")]):
            rows.append({"question_id": str(i + 1), "question": f"Is there a {obj} in the image?", "answer": label,
                         "image": images[i], "image_source": f"img{i}", "category": split})
    path = _parquet(tmp_path, rows, "pope")
    bench = POPE({"split": "all", "question_file": str(path)})
    items = bench.items()
    assert len(items) == 6 and all(isinstance(it.image, Image.Image) and it.image_path is None for it in items)
    assert items[0].question_id == "random/1" and items[1].image_id == "img1"
    iv = build_intervention({"name": "none"})
    fp = make_fingerprint({"name": "tiny_llava"}, iv, {"max_new_tokens": 3}, 0, {"name": "pope"})
    out = tmp_path / "answers.jsonl"
    generate_answers(items, out, lambda: tiny_adapters["tiny_llava"], iv, {"max_new_tokens": 3}, fp, batch_size=4)
    recs = read_jsonl(out)
    assert len(recs) == 6
    scores = bench.score([{**r, "answer": r["meta"]["label"]} for r in recs])
    assert scores["accuracy"] == 100.0


def test_mme_from_parquet_matches_the_shipped_lists(tmp_path, images):
    from benchmarks.mme import read_ground_truth

    gt = read_ground_truth("existence")[:4]
    rows = [{"category": "existence", "question_id": f"existence/{name}", "question": q,
             "answer": label.capitalize(), "image": images[i // 2]} for i, (name, q, label) in enumerate(gt)]
    path = _parquet(tmp_path, rows, "mme")
    bench = MME({"subtasks": ["existence"], "question_file": str(path)})
    items = bench.items()
    assert [it.question_id for it in items] == [f"existence/{n}/{i % 2}" for i, (n, _, _) in enumerate(gt)]
    assert all(isinstance(it.image, Image.Image) for it in items)
    scores = bench.score([{"question_id": it.question_id, "answer": it.meta["label"]} for it in items])
    assert scores["existence"]["score"] == 200.0
