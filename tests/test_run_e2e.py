"""End to end through run.py: default run, kill -9 and resume, sharded = single-process, bad input."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, run_in_process

BASE = ["model=tiny_llava", "benchmark=smoke", "run.num_threads=1"]


def _answers(run_dir):
    return [json.loads(l) for l in (run_dir / "answers.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process default run."""
    d = tmp_path_factory.mktemp("ref")
    return d, run_in_process([*BASE, f"hydra.run.dir={d}", f"results_store={d / 'results.jsonl'}"])


def test_default_run_scores_and_prints_leaderboard(reference_run):
    d, proc = reference_run
    scores = json.loads((d / "scores.json").read_text())
    for key in ("CHAIRs", "CHAIRi", "Recall", "Precision", "F1", "Len", "pope_accuracy", "pope_f1", "n"):
        assert key in scores
    assert scores["n"] == 30
    assert "leaderboard rows" in proc.stdout and "tiny_llava" in proc.stdout
    assert f"run directory: {d}" in proc.stdout and "95% CI" in proc.stdout
    assert {"CHAIRs", "pope_accuracy"} <= set(scores["ci"]) and (d / "units.json").is_file()
    recs = _answers(d)
    assert len({r["question_id"] for r in recs}) == 30
    fp = recs[0]["fingerprint"]
    assert fp["model"]["name"] == "tiny_llava" and fp["attn_implementation"] == "sdpa"
    assert "torch" in fp["versions"] and fp["hash"]
    row = json.loads((d / "results.jsonl").read_text().splitlines()[-1])
    assert row["metrics"]["CHAIRs"] == scores["CHAIRs"] and row["ci"] == scores["ci"]
    prov = row["provenance"]
    assert prov["decoding"]["strategy"] == "greedy" and prov["seed"] == 0 and prov["versions"]["transformers"]
    assert "commit" in prov["harness"] or "version" in prov["harness"]
    assert "benchmarks/data/images/COCO_val2014_000000060623.jpg" in prov["dataset"]["files"]


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_duplicates_nothing(reference_run, tmp_path):
    ref_dir, _ = reference_run
    d = tmp_path / "run"
    args = [sys.executable, "run.py", *BASE, "run.batch_size=2", f"hydra.run.dir={d}",
            f"results_store={tmp_path / 'results.jsonl'}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    answers = d / "answers.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if answers.exists() and answers.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = answers.read_text().count("\n")
    assert 4 <= n_before < 30, "the run was not interrupted mid-way"
    with open(answers, "a") as fh:  # a write cut short by the kill
        fh.write('{"question_id": "pope/60623/3", "answ')
    run_cli(BASE[:2] + ["run.batch_size=2", "run.num_threads=1", f"hydra.run.dir={d}",
                        f"results_store={tmp_path / 'results.jsonl'}"])
    got = _answers(d)
    ids = [r["question_id"] for r in got]
    assert len(ids) == len(set(ids)) == 30
    ref = {r["question_id"]: r["answer"] for r in _answers(ref_dir)}
    assert {r["question_id"]: r["answer"] for r in got} == ref


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_torchrun_equals_single_process_and_stores_one_row(reference_run, tmp_path):
    ref_dir, _ = reference_run
    d = tmp_path / "sharded"
    store = tmp_path / "results.jsonl"
    with socket.socket() as squatter:  # another program on torchrun's usual port must not matter
        try:
            squatter.bind(("127.0.0.1", 29533))
            squatter.listen()
        except OSError:
            pass  # already held by someone else: the same situation
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), "run.py", *BASE, f"hydra.run.dir={d}", f"results_store={store}"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (d / "answers.shard000-of-002.jsonl").exists() and (d / "answers.shard001-of-002.jsonl").exists()
    merged = _answers(d)
    ref = _answers(ref_dir)
    assert [r["question_id"] for r in merged] == [r["question_id"] for r in ref]
    assert [r["answer"] for r in merged] == [r["answer"] for r in ref]
    assert json.loads((d / "scores.json").read_text()) == json.loads((ref_dir / "scores.json").read_text())
    # only the rank that merged scored: one printout, one results row; the other says it finished its shard
    assert proc.stdout.count("smoke scores:") == 1, proc.stdout
    assert len(store.read_text().splitlines()) == 1
    assert "finished" in proc.stdout
    # running the finished job again neither answers nor scores anything twice
    again = subprocess.run(cmd[:6] + [str(_free_port())] + cmd[7:], cwd=ROOT, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(store.read_text().splitlines()) == 1 and _answers(d) == merged


@pytest.mark.slow
def test_two_runs_on_one_run_dir_one_refuses_and_the_dir_stays_scorable(reference_run, tmp_path):
    ref_dir, _ = reference_run
    d, store = tmp_path / "run", tmp_path / "results.jsonl"
    args = [*BASE, "run.batch_size=1", f"hydra.run.dir={d}", f"results_store={store}"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=log, stderr=log,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    owner = d / "answers.jsonl.owner"
    deadline = time.time() + 300
    while not owner.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert owner.exists(), "the first run never took the run lock"
    # paused (still holding its lock) while the second starts, so the two runs overlap however fast the first is
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = run_cli(args, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    log.close()
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid} on host" in second.stderr and "Traceback" not in second.stderr
    got = _answers(d)
    assert [(r["question_id"], r["answer"]) for r in got] == [(r["question_id"], r["answer"]) for r in _answers(ref_dir)]
    assert len(store.read_text().splitlines()) == 1
    run_cli(args)  # the folder is scorable by a rerun
    assert len(store.read_text().splitlines()) == 2
    assert json.loads((d / "scores.json").read_text()) == json.loads((ref_dir / "scores.json").read_text())


@pytest.mark.slow
def test_kill_9_soak_three_kills_then_resume_equals_uninterrupted(reference_run, tmp_path):
    ref_dir, _ = reference_run
    proc = run_cli(["scripts/soak_kill.py", "--kills", "3", "--batch-size", "4", "--reference", str(ref_dir),
                    "--workdir", str(tmp_path)], check=False)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_explicit_shards_merge_when_the_last_one_finishes(reference_run, tmp_path):
    ref_dir, _ = reference_run
    d = tmp_path / "explicit"
    common = [*BASE, "run.limit=10", f"hydra.run.dir={d}", f"results_store={tmp_path / 'r.jsonl'}"]
    run_in_process([*common, "run.num_shards=2", "run.shard_id=1"])
    assert not (d / "answers.jsonl").exists()
    run_in_process([*common, "run.num_shards=2", "run.shard_id=0"])
    merged = _answers(d)
    assert [r["answer"] for r in merged] == [r["answer"] for r in _answers(ref_dir)[:10]]
    assert json.loads((d / "scores.json").read_text())["n"] == 10
    # a shard that reaches the merge after the set was merged and scored (as a second torchrun rank can)
    # scores nothing again: one results row per set of answers
    out = run_in_process([*common, "run.num_shards=2", "run.shard_id=1"]).stdout
    assert "already merged and scored" in out and "scores:" not in out
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1


def test_unknown_config_choice_lists_valid_choices(tmp_path):
    proc = run_cli(["model=no_such_model", f"hydra.run.dir={tmp_path}"], check=False)
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "tiny_llava" in proc.stderr


def test_missing_image_names_item_and_path_or_is_skipped(tmp_path):
    # gpt4v_aided without an image root: every item lacks its image
    proc = run_cli(["benchmark=gpt4v_aided", "benchmark.limit=2", f"hydra.run.dir={tmp_path / 'a'}",
                    f"results_store={tmp_path / 'r.jsonl'}"], check=False)
    assert proc.returncode != 0 and "000000" in proc.stderr and "image" in proc.stderr
    with pytest.raises(SystemExit):  # every item skipped: nothing to score (answers still recorded)
        run_in_process(["benchmark=pope", "benchmark.limit=3", "benchmark.image_root=/nonexistent/coco",
                        "run.skip_missing=true", f"hydra.run.dir={tmp_path / 'b'}",
                        f"results_store={tmp_path / 'r.jsonl'}"])
    recs = _answers(tmp_path / "b")
    assert len(recs) == 3 and all(r["skipped"] and "/nonexistent/coco" in r["skip_reason"] for r in recs)


def test_score_only_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": "No"\n')
    proc = run_cli(["benchmark=pope", f"answers={bad}", f"hydra.run.dir={tmp_path / 'r'}",
                    f"results_store={tmp_path / 'r.jsonl'}"], check=False)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "line 2" in proc.stderr


def test_score_only_reports_missing_ids(tmp_path):
    ans = tmp_path / "answers.jsonl"
    ans.write_text("".join(json.dumps({"question_id": i, "text": "Yes"}) + "\n" for i in range(1, 11)))
    proc = run_cli(["benchmark=pope", f"answers={ans}", f"hydra.run.dir={tmp_path / 'r'}",
                    f"results_store={tmp_path / 'r.jsonl'}"], check=False)
    assert proc.returncode != 0 and "missing 2990" in proc.stderr


def test_sweep_rows_land_in_the_store_and_plot(tmp_path):
    store = tmp_path / "results.jsonl"
    run_in_process(["-m", "model=tiny_llava", "benchmark=smoke", "intervention=vcd", "intervention.alpha=0,1",
             "run.limit=6", "run.num_threads=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"results_store={store}"])
    rows = [json.loads(l) for l in store.read_text().splitlines()]
    assert sorted(r["params"]["alpha"] for r in rows) == [0, 1]
    png = tmp_path / "sweep.png"
    run_in_process(["scripts/plot_sweep.py", "--store", str(store), "--param", "alpha", "--metric", "CHAIRs",
             "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "lb"
    printed = run_in_process(["scripts/leaderboard.py", "--store", str(store), "--out", str(out)]).stdout
    assert "| vcd alpha=0 |" in printed and "| vcd |" in printed  # alpha=1 is vcd's default
    assert (out / "leaderboard.html").exists() and (out / "leaderboard.csv").exists()


def test_missing_images_fail_before_the_model_loads(tmp_path):
    from benchmarks.base import Item
    from harness.images import MissingImageError
    from harness.runner import generate_answers

    def never():
        raise AssertionError("the model must not be loaded")

    items = [Item(1, "q", str(tmp_path / "there.jpg")), Item(2, "q", str(tmp_path / "missing.jpg"))]
    (tmp_path / "there.jpg").write_bytes(b"")
    with pytest.raises(MissingImageError, match="missing.jpg"):
        generate_answers(items, tmp_path / "a.jsonl", never, None, {}, {}, batch_size=2)
    assert not (tmp_path / "a.jsonl").exists()
