"""Image loading with errors that name the item and the path."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from harness.errors import HarnessError


class MissingImageError(HarnessError, FileNotFoundError):
    """An item's image file does not exist or cannot be read."""


def check_image(path: str | None, question_id: object) -> Path:
    """The image file of an item; MissingImageError names the item and the path when there is none."""
    if path is None:
        raise MissingImageError(
            f"item {question_id!r} has no image path: set the benchmark's image folder "
            f"(benchmark.image_root=/data/coco/val2014; for MME benchmark.root=/data/MME_Benchmark_release_version)")
    p = Path(path)
    if not p.is_file():
        raise MissingImageError(f"item {question_id!r}: image not found: {p} "
                                f"(set run.skip_missing=true to record it as skipped)")
    return p


def load_image(path: str | None, question_id: object) -> Image.Image:
    """The RGB image of an item; MissingImageError names the item and the path."""
    p = check_image(path, question_id)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except OSError as e:
        raise MissingImageError(f"item {question_id!r}: cannot read image {p}: {e}") from None
