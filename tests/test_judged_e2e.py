"""The judged benchmarks end to end through run.py on the shipped COCO images, judged by a fake server."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks.base import DATA_DIR
from conftest import ROOT, run_cli
from fake_judge import KEY, KEY_ENV, FakeServer, chat_reply, prompt_text

IMAGES = DATA_DIR / "images"
SHIPPED = sorted(p.name for p in IMAGES.glob("COCO_val2014_*.jpg"))


def judge_reply(req, n):
    p = prompt_text(req)
    if "response1:" in p:
        text = "same"
    elif "Prediction answer:" in p:
        text = "correct"
    elif "Rating: 6, very informative" in p:
        text = "Fine.\nRating: 4, somewhat informative"
    else:
        text = '["dog", "person"]'
    return 200, {}, chat_reply(text), 0.0


@pytest.fixture(scope="module")
def server():
    s = FakeServer(judge_reply).start()
    yield s
    s.stop()


def question_files(d):
    """Tiny question files of each benchmark pointing at the shipped images."""
    rows = json.loads((DATA_DIR / "hallusionbench" / "HallusionBench.json").read_text())
    hb = [r for key in (("VD", "figure", "0"), ("VS", "chart", "0")) for r in rows
          if (r["category"], r["subcategory"], r["set_id"]) == key]
    for r, name in zip(hb, SHIPPED * 10):
        if r["filename"]:
            r["filename"] = name
    mm = json.loads((DATA_DIR / "mmhal_bench" / "response_template.json").read_text())[:2]
    for r, name in zip(mm, SHIPPED):
        r["image_src"] = f"https://example.invalid/{name}"
    obj = [{"idx": i, "image_id": int(name[-16:-4]), "question": "Describe this image in detail."}
           for i, name in enumerate(SHIPPED[:2])]
    files = {"hallusionbench": d / "hb.json", "mmhal_bench": d / "mm.json", "object_halbench": d / "obj.jsonl"}
    files["hallusionbench"].write_text(json.dumps(hb))
    files["mmhal_bench"].write_text(json.dumps(mm))
    files["object_halbench"].write_text("".join(json.dumps(r) + "\n" for r in obj))
    return files


def leaked(paths):
    return [p for d in paths for p in d.rglob("*") if p.is_file() and KEY in p.read_text(errors="replace")]


def run_in_process(overrides, run_dir):
    """run.py's job in this process (Hydra compose + run_job): the scores."""
    from hydra import compose, initialize_config_dir

    from harness.pipeline import run_job

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return run_job(cfg, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name,extra,limit", [
    ("hallusionbench", ["benchmark.judge_mode=judge"], 3),  # VS_chart_0_0_0 has no figure: a blank image
    ("mmhal_bench", [], 2),
    ("object_halbench", [], 2),
])
def test_run_writes_judged_scores_then_rerun_hits_the_cache(name, extra, limit, server, tmp_path, monkeypatch):
    qf = question_files(tmp_path)[name]
    run_dir, cache, store = tmp_path / "run", tmp_path / "cache", tmp_path / "results.jsonl"
    args = ["model=tiny_llava", f"benchmark={name}", f"benchmark.question_file={qf}", f"benchmark.image_root={IMAGES}",
            f"run.limit={limit}", "decoding.max_new_tokens=6", "run.num_threads=1", *extra,
            f"judge.base_url={server.base_url}", f"judge.api_key_env={KEY_ENV}", f"judge.cache_dir={cache}",
            "judge.progress=false", f"results_store={store}"]
    env = {KEY_ENV: KEY, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    before = len(server.hits)
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], env=env)
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["n_answers"] == limit and scores["judge"]["api_calls"] == len(server.hits) - before > 0
    assert scores["judge"]["request_failures"] == 0 and len(scores["judge"]["prompt_sha256"]) == 64
    row = json.loads(store.read_text().splitlines()[-1])
    assert row["benchmark"].startswith(name) and "judge=" in row["benchmark"]
    assert row["metrics"]["judge.api_calls"] == scores["judge"]["api_calls"]
    assert all(m in row["metrics"] for m in row["headline"])
    assert KEY not in proc.stdout + proc.stderr
    # The same job again: its answers are reused and every judge reply comes from the cache.
    monkeypatch.setenv(KEY_ENV, KEY)
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    n = len(server.hits)
    again = run_in_process(args, run_dir)
    assert again["judge"]["api_calls"] == 0 and len(server.hits) == n
    assert json.loads((run_dir / "scores.json").read_text())["judge"]["api_calls"] == 0
    assert not leaked([run_dir, cache, store])
    # Another judge: the same answers (same fingerprint, no generation), new requests, its own label.
    answers = (run_dir / "answers.jsonl").read_text()
    other = run_in_process([*args, "judge.model=other-judge"], run_dir)
    assert other["judge"]["id"].startswith("other-judge@") and other["judge"]["api_calls"] > 0
    assert (run_dir / "answers.jsonl").read_text() == answers
    assert json.loads(store.read_text().splitlines()[-1])["benchmark"].startswith(f"{name}/")
    assert "judge=other-judge@" in json.loads(store.read_text().splitlines()[-1])["benchmark"]


@pytest.mark.slow
def test_every_judge_request_failing_fails_the_run(server, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "answer": "A cat."}) + "\n" for i in range(3)))
    server.respond = lambda req, n: (500, {}, f"down {KEY}", 0.0)  # the server echoes the key: redacted
    before = len(server.hits)
    try:
        bad = run_cli(["benchmark=mmhal_bench", "benchmark.limit=3", f"answers={answers}",
                       f"judge.base_url={server.base_url}", f"judge.api_key_env={KEY_ENV}",
                       f"judge.cache_dir={tmp_path / 'cache'}", "judge.max_retries=1", "judge.backoff_base_s=0.01",
                       "judge.progress=false", f"hydra.run.dir={tmp_path / 'bad'}",
                       f"results_store={tmp_path / 'results.jsonl'}"], env={KEY_ENV: KEY}, check=False)
    finally:
        server.respond = judge_reply
    assert bad.returncode != 0 and "all 3 judge requests failed" in bad.stderr + bad.stdout
    assert len(server.hits) - before == 6 and KEY not in bad.stdout + bad.stderr
    assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "bad" / "scores.json").exists()
