"""A fixed, seeded tune/test split of a benchmark's items, so a method is never tuned on what it is reported on.

`benchmark.split_role=tune` keeps the tuning part, `test` the rest, null every item (the default). Items
are grouped by image (`image_id`, else `image_path`, else the item's own id), so an image's questions (a
POPE image's probes, an MME image's question pair) all fall on the same side and no image is seen while
tuning and again in the reported part. Each group's side depends only on the seed and its key: groups are
ranked by sha256(f"{seed}:{key}") and the first round(tune_fraction x groups) form the tuning part (at least
one group on each side when there are two or more), so the split does not move when items are reordered
and the same seed gives the same split on every machine.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

ROLES = ("tune", "test")


def group_key(item: Any) -> str:
    """The unit an item is split with: its image (id or path), else its question id."""
    for attr in ("image_id", "image_path"):
        value = getattr(item, attr, None)
        if value:
            return f"{attr}:{value}"
    return f"question_id:{item.question_id}"


def tune_groups(keys: Sequence[str], seed: int, tune_fraction: float) -> set[str]:
    """The group keys of the tuning part: the first round(fraction x n) keys ranked by their seeded hash."""
    unique = sorted(set(keys))
    ranked = sorted(unique, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n = round(tune_fraction * len(ranked))
    if len(ranked) >= 2:
        n = min(max(n, 1), len(ranked) - 1)
    return set(ranked[:n])


def split_items(items: list, role: str | None, seed: int, tune_fraction: float) -> list:
    """The items of one side of the split, in their original order (`role` None: all of them)."""
    if role is None:
        return list(items)
    if role not in ROLES:
        raise ValueError(f"benchmark.split_role: expected one of tune, test or null, got {role!r}")
    tune = tune_groups([group_key(it) for it in items], seed, tune_fraction)
    return [it for it in items if (group_key(it) in tune) == (role == "tune")]
