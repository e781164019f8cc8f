"""Nothing silent, nothing lost: bad values, bad files, torn stores, busy run folders, unreachable hubs."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli

BASE = ["model=tiny_llava", "benchmark=smoke", "run.num_threads=1"]


def compose(overrides):
    """The run config for these overrides, composed in-process as run.py would."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _store_rows(path):
    return path.read_text().splitlines() if path.exists() else []


def _one_line_error(proc, *needles):
    """The process stopped on a HarnessError: exit 2, one `error:` line naming what went wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- item 6: bad values, nothing to score
@pytest.mark.parametrize("override, key", [
    ("run.batch_size=0", "run.batch_size"),
    ("run.batch_size=-2", "run.batch_size"),
    ("run.limit=0", "run.limit"),
    ("run.limit=-3", "run.limit"),
    ("decoding.max_new_tokens=0", "decoding.max_new_tokens"),
    ("benchmark=pope benchmark.limit=0", "benchmark.limit"),
    ("benchmark=chair benchmark.limit=-1", "benchmark.limit"),
])
def test_bad_config_values_fail_before_the_model_loads_and_store_nothing(tmp_path, monkeypatch, override, key):
    import harness.models.loader
    from harness.errors import ConfigValueError
    from harness.pipeline import run_job

    def never(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(harness.models.loader, "load_adapter", never)
    cfg = compose([*BASE, *override.split(), f"results_store={tmp_path / 'r.jsonl'}"])
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        run_job(cfg, tmp_path / "run")
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "run" / "answers.jsonl").exists()


def test_a_value_of_the_wrong_type_is_refused_when_the_config_is_composed(tmp_path):
    from harness.config import config_error_line

    with pytest.raises(Exception) as err:
        compose([*BASE, "run.batch_size=abc"])
    assert config_error_line(err.value).startswith("run.batch_size: ")
    store = tmp_path / "r.jsonl"
    proc = run_cli([*BASE, "run.batch_size=abc", f"hydra.run.dir={tmp_path / 'run'}", f"results_store={store}"],
                   check=False)
    _one_line_error(proc, "run.batch_size", "abc")
    assert not store.exists()


def test_bad_value_is_one_line_on_the_command_line(tmp_path):
    store = tmp_path / "r.jsonl"
    proc = run_cli([*BASE, "run.limit=0", f"hydra.run.dir={tmp_path / 'run'}", f"results_store={store}"],
                   check=False)
    _one_line_error(proc, "run.limit", "0")
    assert not store.exists()
    full = run_cli([*BASE, "run.limit=0", f"hydra.run.dir={tmp_path / 'run'}", f"results_store={store}"],
                   check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "ConfigValueError" in full.stderr


def test_empty_answers_file_is_an_error_and_stores_nothing(tmp_path):
    empty = tmp_path / "answers.jsonl"
    empty.write_text("")
    store = tmp_path / "r.jsonl"
    proc = run_cli(["benchmark=pope", f"answers={empty}", f"hydra.run.dir={tmp_path / 'r'}",
                    f"results_store={store}"], check=False)
    _one_line_error(proc, str(empty))
    assert _store_rows(store) == [] and not (tmp_path / "r" / "scores.json").exists()


def test_all_items_skipped_is_an_error_and_stores_nothing(tmp_path):
    store = tmp_path / "r.jsonl"
    proc = run_cli(["benchmark=pope", "benchmark.limit=2", "benchmark.image_root=/nonexistent/coco",
                    "run.skip_missing=true", "run.num_threads=1", f"hydra.run.dir={tmp_path / 'b'}",
                    f"results_store={store}"], check=False)
    _one_line_error(proc, "skipped")
    assert len((tmp_path / "b" / "answers.jsonl").read_text().splitlines()) == 2  # the records are kept
    assert _store_rows(store) == [] and not (tmp_path / "b" / "scores.json").exists()


# ---------------------------------------------------------------- item 9: smoke duplicates
def test_smoke_score_only_rejects_duplicated_yes_no_records(tmp_path):
    from benchmarks.base import DuplicateAnswerError
    from harness.pipeline import build_benchmark

    bench = build_benchmark({"name": "smoke"})
    recs = [{"question_id": it.question_id, "answer": "Yes"} for it in bench.items()]
    dup = next(r for r in recs if r["question_id"].startswith("pope/"))
    with pytest.raises(DuplicateAnswerError, match=dup["question_id"]):
        bench.score(recs + [dict(dup, answer="No")])


# ---------------------------------------------------------------- item 10: binary files, non-string answers
def test_binary_answers_file_names_the_file(tmp_path):
    from harness.errors import InputFileError
    from harness.pipeline import build_benchmark

    binary = tmp_path / "answers.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 10)
    for name in ("pope", "chair", "smoke", "mme"):
        with pytest.raises(InputFileError, match=str(binary)):
            build_benchmark({"name": name}).load_answers(binary)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question_id": 1, "text": "Oui, il y a un caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(InputFileError, match="not UTF-8"):
        build_benchmark({"name": "pope"}).load_answers(latin1)


def test_binary_question_file_names_the_file(tmp_path):
    from benchmarks.loading import load_question_records
    from harness.errors import InputFileError

    qf = tmp_path / "questions.jsonl"
    qf.write_bytes(b"\x00\x01\xff\xfe" * 50)
    with pytest.raises(InputFileError, match=str(qf)):
        load_question_records(qf)
    garbage = tmp_path / "rows.json"
    garbage.write_text("this is not json\n")
    with pytest.raises(InputFileError, match=str(garbage)):
        load_question_records(garbage)


@pytest.mark.parametrize("bad", [1, ["a", "caption"], {"text": "x"}, True])
def test_non_string_answers_name_the_record(tmp_path, bad):
    from harness.records import MalformedRecordError
    from harness.pipeline import build_benchmark

    pope = tmp_path / "pope.jsonl"
    pope.write_text(json.dumps({"question_id": 1, "text": "Yes"}) + "\n"
                    + json.dumps({"question_id": 2, "text": bad}) + "\n")
    with pytest.raises(MalformedRecordError, match=r"pope\.jsonl, record 2"):
        build_benchmark({"name": "pope"}).load_answers(pope)
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"image_id": 9, "caption": bad}) + "\n")
    with pytest.raises(MalformedRecordError, match=r"caps\.jsonl, record 1"):
        build_benchmark({"name": "chair"}).load_answers(caps)
    # records handed to score() directly (our own answers format) are checked too
    bench = build_benchmark({"name": "smoke"})
    recs = [{"question_id": it.question_id, "answer": "Yes"} for it in bench.items()]
    recs[3]["answer"] = bad
    with pytest.raises(MalformedRecordError, match="record 4"):
        bench.score(recs, source="mine.jsonl")
    mme = build_benchmark({"name": "mme", "subtasks": ["existence"]})
    recs = [{"question_id": it.question_id, "answer": "Yes"} for it in mme.items()]
    recs[0]["answer"] = bad
    with pytest.raises(MalformedRecordError, match="record 1"):
        mme.score(recs, source="mme.jsonl")


# ---------------------------------------------------------------- item 11: torn results store
def _row(i):
    return {"model": f"m{i}", "benchmark": "pope/coco/random", "metrics": {"accuracy": float(i)}}


def test_results_store_survives_a_torn_last_row(tmp_path):
    from harness.results import add_result, read_results

    store = tmp_path / "results.jsonl"
    add_result(store, _row(1))
    with open(store, "a") as fh:  # a writer killed mid-row
        fh.write('{"time": "2026-01-01T00:00:00", "model": "m2", "bench')
    assert [r["model"] for r in read_results(store)] == ["m1"]
    add_result(store, _row(3))
    assert [r["model"] for r in read_results(store)] == ["m1", "m3"]
    assert all(json.loads(l) for l in store.read_text().splitlines())  # every line is whole again


def test_results_store_torn_by_an_old_writer_is_still_read(tmp_path, caplog):
    from harness.results import read_results

    store = tmp_path / "results.jsonl"
    whole = json.dumps({"time": "t", **_row(1)})
    store.write_text(whole + "\n" + '{"time": "t", "model": "m2", "ben' + json.dumps({"time": "t", **_row(3)})
                     + "\nnot json at all\n" + whole + "\n")
    assert [r["model"] for r in read_results(store)] == ["m1", "m3", "m1"]
    assert "line 2" in caplog.text and "line 3" in caplog.text


def test_scores_json_is_written_atomically(tmp_path, monkeypatch):
    from harness.records import atomic_write_text

    target = tmp_path / "scores.json"
    target.write_text('{"old": 1}\n')

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, '{"new": 2}\n')
    assert target.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temporary file left behind


def test_failed_append_rolls_back_and_names_the_store(tmp_path, monkeypatch):
    from harness.errors import OutputNotWritableError
    from harness.results import add_result, read_results

    store = tmp_path / "results.jsonl"
    add_result(store, _row(1))
    before = store.read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):  # the first half lands, then the disk is full
        n = real_write(fd, bytes(data[: len(data) // 2]))
        if n < len(data):
            monkeypatch.setattr(os, "write", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        return n

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OutputNotWritableError, match="results.jsonl"):
        add_result(store, _row(2))
    monkeypatch.undo()
    assert store.read_bytes() == before
    assert [r["model"] for r in read_results(store)] == ["m1"]


def test_disk_full_on_a_small_tmpfs_leaves_the_store_readable(tmp_path):
    from harness.errors import OutputNotWritableError
    from harness.results import add_result, read_results

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount not permitted here: {mounted.stderr.decode()[:200]}")
    try:
        store = mnt / "results.jsonl"
        big = {"pad": "x" * 3000}
        n_ok = 0
        with pytest.raises(OutputNotWritableError, match="No space left"):
            for i in range(100):
                add_result(store, {**_row(i), **big})
                n_ok += 1
        rows = read_results(store)
        assert len(rows) == n_ok > 0 and rows[-1]["model"] == f"m{n_ok - 1}"
        assert store.read_bytes().endswith(b"\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- item 12: one writer per answers file
def test_second_writer_refuses_naming_the_first(tmp_path):
    from harness.errors import RunLockedError
    from harness.locks import exclusive_writer

    target = tmp_path / "answers.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from harness.locks import exclusive_writer\n"
        "with exclusive_writer(sys.argv[2]):\n    print('held', flush=True); time.sleep(60)\n"),
        str(ROOT), str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            with exclusive_writer(target):
                pass
        assert time.time() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    with exclusive_writer(target):  # a killed holder frees the lock
        pass
    with exclusive_writer(tmp_path / "answers.shard000-of-002.jsonl"):  # shards do not block each other
        with exclusive_writer(tmp_path / "answers.shard001-of-002.jsonl"):
            pass


# ---------------------------------------------------------------- item 14: unwritable outputs, found first
def test_unwritable_results_store_is_found_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    t0 = time.time()
    proc = run_cli([*BASE, f"hydra.run.dir={tmp_path / 'run'}", f"results_store={blocker / 'results.jsonl'}"],
                   check=False)
    _one_line_error(proc, "results_store", str(blocker))
    assert not (tmp_path / "run" / "answers.jsonl").exists()  # nothing was generated
    assert "Loading" not in proc.stderr and time.time() - t0 < 60


def test_unwritable_run_folder_is_found_before_the_model_loads(tmp_path):
    from harness.errors import OutputNotWritableError
    from harness.validate import check_dir_writable

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputNotWritableError, match="a_file"):
        check_dir_writable(blocker / "run")
    check_dir_writable(tmp_path / "fine" / "run")


# ---------------------------------------------------------------- issue 14: hub ids fail fast
def test_hub_check_offline_names_the_fixes(monkeypatch):
    from harness.errors import HubUnreachableError
    from harness.hub import check_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="model.path.*HF_HUB_OFFLINE"):
        check_reachable("no-such-org/no-such-model-xyz")
    assert check_reachable(str(ROOT)) == "local"
    assert check_reachable(None) == "local"


def test_hub_check_unreachable_endpoint_fails_in_seconds(monkeypatch):
    from harness.errors import HubUnreachableError
    from harness.hub import check_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    with pytest.raises(HubUnreachableError, match=r"127\.0\.0\.1:9.*model\.path.*HF_HUB_OFFLINE"):
        check_reachable("llava-hf/llava-1.5-7b-hf", timeout=3)
    assert time.time() - t0 < 10


def test_unreachable_hub_model_fails_fast_from_the_command_line(tmp_path):
    t0 = time.time()
    proc = run_cli(["model=llava15_7b", f"hydra.run.dir={tmp_path / 'run'}", f"results_store={tmp_path / 'r'}"],
                   check=False, env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    _one_line_error(proc, "llava-hf/llava-1.5-7b-hf", "HF_HUB_OFFLINE")
    assert time.time() - t0 < 20  # python and hydra start-up included (~4 s on an idle machine), no torch import
