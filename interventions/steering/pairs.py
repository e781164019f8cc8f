"""Contrastive pair data for building steering directions: an image, a faithful and a hallucinated caption.

A pair file is JSON Lines, one object per image:

    {"id": "coco/60623", "image": "COCO_val2014_000000060623.jpg", "coco_id": 60623,
     "question": "Please describe this image in detail.",
     "faithful": "...",          # mentions only objects present in the image
     "hallucinated": "...",      # the faithful caption plus objects that are not in the image
     "objects": [...], "added_objects": [...]}

`image` is a path, absolute or relative to the image folder (default: the shipped COCO images in
benchmarks/data/images). This is the shape of VTI's demonstration file, whose `value` / `h_value`
keys are accepted for `faithful` / `hallucinated`.

The shipped file `benchmarks/data/steering/coco_pairs.jsonl` is *templated from ground truth*
(`template_pairs`): for each of the 6 shipped COCO val2014 images, the faithful caption lists its
CHAIR ground-truth objects (`chair/imid_to_objects_lemma_pos.json`) and the hallucinated caption
appends two frequent COCO objects absent from that ground truth (`HALLUCINATION_POOL`, rotated
by the COCO id). It is a small, honest stand-in for
the model- or human-written pairs the papers use; pass `steering.pairs=FILE` for real data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from benchmarks.base import DATA_DIR

DEFAULT_PAIRS = DATA_DIR / "steering" / "coco_pairs.jsonl"
DEFAULT_IMAGE_DIR = DATA_DIR / "images"
DEFAULT_QUESTION = "Please describe this image in detail."
#: frequent COCO objects used as hallucinations when absent from an image's ground truth
HALLUCINATION_POOL = ("dog", "car", "cat", "clock", "umbrella", "bus", "horse", "laptop", "train", "bicycle")


@dataclass
class Pair:
    """One contrastive example: an image with a faithful and a hallucinated caption."""

    id: str
    image_path: str  # absolute path
    question: str
    faithful: str
    hallucinated: str
    meta: dict = field(default_factory=dict)

    def load_image(self):
        """The image as an RGB PIL image."""
        from PIL import Image

        with Image.open(self.image_path) as im:
            return im.convert("RGB")


def load_pairs(path: str | Path | None = None, image_dir: str | Path | None = None,
               limit: int | None = None) -> list[Pair]:
    """Pairs from a JSON Lines file (default: the shipped templated COCO pairs), first `limit` only."""
    path = Path(path) if path else DEFAULT_PAIRS
    if not path.exists():
        raise FileNotFoundError(f"pair file {path} does not exist")
    image_dir = Path(image_dir) if image_dir else DEFAULT_IMAGE_DIR
    pairs: list[Pair] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for ours, theirs in (("faithful", "value"), ("hallucinated", "h_value")):  # VTI's demo file keys
            if not row.get(ours) and row.get(theirs):
                row[ours] = row.pop(theirs)
        missing = [k for k in ("image", "faithful", "hallucinated") if not row.get(k)]
        if missing:
            raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
        img = Path(row["image"])
        img = img if img.is_absolute() else image_dir / img
        if not img.exists():
            raise FileNotFoundError(f"{path}:{n}: image {img} does not exist (set steering.image_dir)")
        meta = {k: v for k, v in row.items() if k not in ("id", "image", "question", "faithful", "hallucinated")}
        pairs.append(Pair(str(row.get("id", n)), str(img), row.get("question") or DEFAULT_QUESTION,
                          row["faithful"], row["hallucinated"], meta))
    if limit:
        pairs = pairs[: int(limit)]
    if not pairs:
        raise ValueError(f"pair file {path} has no pairs")
    return pairs


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _listing(objects: list[str]) -> str:
    words = [_article(o) for o in objects]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def template_pair(coco_id: int, image: str, objects: Iterable[str], n_added: int = 2,
                  question: str = DEFAULT_QUESTION) -> dict:
    """One templated pair row: faithful = the ground-truth objects; hallucinated = those plus absent ones."""
    objects = sorted(set(objects))
    start = coco_id % len(HALLUCINATION_POOL)  # rotate the pool so images get different additions
    pool = HALLUCINATION_POOL[start:] + HALLUCINATION_POOL[:start]
    added = [o for o in pool if o not in objects][:n_added]
    return {
        "id": f"coco/{coco_id}", "image": image, "coco_id": coco_id, "question": question,
        "faithful": f"The image shows {_listing(objects)}.",
        "hallucinated": f"The image shows {_listing(objects + added)}.",
        "objects": objects, "added_objects": added,
        "source": "templated from CHAIR ground truth (imid_to_objects_lemma_pos.json)",
    }


def template_pairs(ground_truth: Mapping[str, list] | None = None, image_dir: str | Path | None = None) -> list[dict]:
    """Templated pair rows for every COCO val2014 image in `image_dir` (default: the shipped images)."""
    if ground_truth is None:
        ground_truth = json.loads((DATA_DIR / "chair" / "imid_to_objects_lemma_pos.json").read_text())
    image_dir = Path(image_dir) if image_dir else DEFAULT_IMAGE_DIR
    rows = []
    for p in sorted(image_dir.glob("COCO_val2014_*.jpg")):
        cid = int(p.stem.rsplit("_", 1)[-1])
        rows.append(template_pair(cid, p.name, ground_truth[str(cid)]))
    return rows


def write_pairs(rows: list[dict], path: str | Path) -> Path:
    """Write pair rows as JSON Lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
