import json

import pytest

from harness.sharding import merge_shards, shard_file, shard_items, shard_world


def test_shards_are_disjoint_and_cover():
    items = list(range(23))
    parts = [shard_items(items, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert not set(parts[0]) & set(parts[1])


def test_shard_world_from_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert shard_world(None, None) == (4, 2)
    assert shard_world(2, 1) == (2, 1)
    with pytest.raises(ValueError):
        shard_world(2, 2)


def _write(path, ids):
    path.write_text("".join(json.dumps({"question_id": i, "answer": str(i)}) + "\n" for i in ids))


def test_merge_waits_for_all_shards_then_orders(tmp_path):
    ids = list(range(10))
    _write(shard_file(tmp_path, 2, 0), ids[0::2])
    assert merge_shards(tmp_path, 2, ids) is None  # shard 1 missing
    _write(shard_file(tmp_path, 2, 1), ids[1::2][:-1])
    assert merge_shards(tmp_path, 2, ids) is None  # shard 1 incomplete
    _write(shard_file(tmp_path, 2, 1), ids[1::2])
    merged = merge_shards(tmp_path, 2, ids)
    assert [json.loads(l)["question_id"] for l in merged.read_text().splitlines()] == ids


def test_merge_refuses_duplicates(tmp_path):
    _write(shard_file(tmp_path, 2, 0), [0, 1])
    _write(shard_file(tmp_path, 2, 1), [1])
    with pytest.raises(ValueError, match="answered twice"):
        merge_shards(tmp_path, 2, [0, 1])
