"""Leaderboards: per-benchmark tables, labels, CIs, significance stars, CSV, sweep plots and the HTML page."""
from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import run_cli, run_in_process
from harness.leaderboard import (LONG_COLUMNS, benchmark_tables, latest_rows, method_label, to_markdown)
from harness.results import read_results, setting_label
from test_compare_runs import planted_flip
from test_stats import TEST_DATA, pope_answers

CAPS = TEST_DATA / "chair_captions" / "less_is_more_table1"
N_CAPTIONS = 40


def _row(time, metrics, setting="", bench="mme", interv="none", params=None, model="m"):
    return {"time": time, "model": model, "intervention": interv, "params": params or {}, "setting": setting,
            "benchmark": bench, "headline": ["perception", "cognition"], "metrics": metrics}


def test_latest_run_wins_whole_and_settings_stay_apart():
    rows = [_row("1", {"perception": 900.0, "cognition": 250.0, "n": 2374}),
            _row("2", {"perception": 411.0, "n": 240}),  # a later run without cognition: no mixing
            _row("3", {"perception": 1.0, "cognition": 2.0, "n": 4}, setting="first 4")]
    (t,) = benchmark_tables(rows)
    full = next(r for r in t.rows if r["setting"] == "")
    assert full["cells"]["perception"].value == 411.0 and full["n"] == 240
    assert "cognition" not in full["cells"]  # not the 250 of the older run
    assert "| m | none | first 4 | 1.00 | 2.00 | 4 |" in to_markdown([t])
    assert len(latest_rows(rows)) == 2


def test_method_labels_show_only_non_default_resolved_parameters():
    damro_defaults = {"alpha": None, "beta": 0.1, "topk": None, "reference_sampling": False,
                      "reference_cls_offset": False}
    assert method_label({"intervention": "damro", "params": damro_defaults}) == "damro"
    assert method_label({"intervention": "damro", "params": {**damro_defaults, "alpha": 2, "topk": 10}}) == \
        "damro alpha=2 topk=10"
    assert method_label({"intervention": "vcd", "params": {"alpha": 1.0, "beta": 0.1, "noise_step": 500}}) == "vcd"
    assert method_label({"intervention": "vcd", "params": {"alpha": 0.5, "noise_step": 999}}) == \
        "vcd alpha=0.5 noise_step=999"
    assert method_label({"intervention": "compose", "params": {"members": [
        {"name": "vcd", "alpha": 1.0}, {"name": "yes_bias", "strength": 2.0, "steps": "first"}]}}) == \
        "vcd + yes_bias strength=2"
    assert method_label({"intervention": "none", "params": {}}) == "none"
    assert method_label({"intervention": "external", "intervention_label": "external answers"}) == "external answers"


def test_setting_label():
    assert setting_label({"strategy": "greedy", "max_new_tokens": None}, 0, None) == ""
    assert setting_label({"strategy": "sample", "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 64}, 7, 10) == \
        "sample T=1.0 p=0.9 seed=7, max_new_tokens=64, first 10"
    assert setting_label({"strategy": "beam", "num_beams": 3}, 0, None) == "beam 3"


def _store_run(tmp_path, store, model, bench_cfg, records, interv_cfg):
    """Score records as a run of `model` under an intervention, exactly as run.py stores it."""
    from harness.pipeline import build_benchmark, score_and_store
    from interventions.base import build_intervention

    name = interv_cfg["name"]
    interv = build_intervention(interv_cfg)
    run_dir = tmp_path / "runs" / f"{model}-{name}-{len(list((tmp_path / 'runs').glob('*'))) if (tmp_path / 'runs').exists() else 0}"
    run_dir.mkdir(parents=True)
    cfg = {"model": {"name": model}, "decoding": {"strategy": "greedy", "max_new_tokens": None}, "seed": 0,
           "run": {"limit": None}, "benchmark": bench_cfg, "results_store": str(store)}
    score_and_store(build_benchmark(bench_cfg), records, "answers", run_dir, cfg, interv, None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results store: a default-parameter damro run, an alpha sweep, three models, CHAIR and POPE tables."""
    tmp = tmp_path_factory.mktemp("lb")
    path = tmp / "results.jsonl"
    chair = {"name": "chair", "ground_truth": "lemma_pos", "image_set": "chair500", "bootstrap": 500}
    from benchmarks.chair import ChairBenchmark

    reader = ChairBenchmark(chair)
    first = None

    def caps(name):
        nonlocal first
        recs = reader.load_answers(CAPS / name)
        first = first or [r["question_id"] for r in recs[:N_CAPTIONS]]
        by_id = {r["question_id"]: r for r in recs}
        return [by_id[i] for i in first]

    runs = [("llava15_7b", "r1-llava1.5-7b.jsonl", {"name": "none"}),
            ("llava15_7b", "r3-opera.jsonl", {"name": "damro"}),  # default parameters: alpha/topk null
            ("llava15_7b", "r2-vcd.jsonl", {"name": "damro", "alpha": 0.5, "topk": 10}),
            ("llava15_7b", "r4-opera-fast.jsonl", {"name": "damro", "alpha": 1.0, "topk": 10}),
            ("llava15_7b", "r10-ours-cap.jsonl", {"name": "damro", "alpha": 2.0, "topk": 10}),
            ("llava15_13b", "r7-llava1.5-13b.jsonl", {"name": "none"}),
            ("llava15_13b", "r8-ours-cap.jsonl", {"name": "damro"}),
            ("minigpt_v2", "r11-minigptv2.jsonl", {"name": "none"})]
    for model, file, iv in runs:
        _store_run(tmp, path, model, chair, caps(file), iv)
    pope = {"name": "pope", "bootstrap": 500}
    recs = pope_answers()
    _store_run(tmp, path, "llava15_7b", pope, recs, {"name": "none"})
    _store_run(tmp, path, "llava15_7b", pope, planted_flip(recs), {"name": "yes_bias", "strength": 1.0})
    return tmp, path


def test_tables_stars_and_markdown(store):
    tmp, path = store
    tables = {t.benchmark: t for t in benchmark_tables(read_results(path))}
    assert set(tables) == {"chair/lemma_pos", "pope/coco/random/current/llava"}
    t = tables["chair/lemma_pos"]
    assert t.metrics[:2] == ["CHAIRs", "CHAIRi"] and t.directions["CHAIRs"] == "lower"
    rows = {(r["model"], r["method"]): r for r in t.rows}
    assert ("llava15_7b", "damro") in rows and ("llava15_7b", "damro alpha=2 topk=10") in rows
    assert not any("None" in m for _, m in rows)
    none7 = rows[("llava15_7b", "none")]["cells"]["CHAIRs"]
    assert none7.p is None and none7.low <= none7.value <= none7.high and none7.half_width > 0
    strong = rows[("llava15_7b", "damro alpha=2 topk=10")]["cells"]
    assert strong["CHAIRs"].value < none7.value and strong["CHAIRs"].p is not None
    assert strong["Len"].significant  # r10's captions are 60 words shorter than r1's on the same images
    assert rows[("llava15_7b", "damro alpha=0.5 topk=10")]["cells"]["Len"].p > 0.05  # vcd vs greedy: same length
    assert rows[("minigpt_v2", "none")]["cells"]["CHAIRs"].p is None
    p = {r["method"]: r for r in tables["pope/coco/random/current/llava"].rows}
    assert p["yes_bias strength=1"]["cells"]["accuracy"].significant
    assert p["yes_bias strength=1"]["cells"]["yes_ratio"].value == pytest.approx(
        p["none"]["cells"]["yes_ratio"].value + 5)
    md = to_markdown(list(tables.values()))
    assert "### chair/lemma_pos" in md and "CHAIRs ↓" in md and "Recall ↑" in md
    assert re.search(r"\| llava15_7b \| damro alpha=2 topk=10 \|  \| \d+\.\d\d ± \d+\.\d\d\*? \|.*\d\* \| 40 \|", md)


def test_scripts_leaderboard_csv_html_and_sweep_plot(store):
    tmp, path = store
    out = tmp / "lb"
    proc = run_in_process(["scripts/leaderboard.py", "--store", str(path), "--out", str(out)])
    assert "### pope/coco/random/current/llava" in proc.stdout and "damro alpha=1 topk=10" in proc.stdout
    with open(out / "leaderboard.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == LONG_COLUMNS and all(len(r) == len(LONG_COLUMNS) for r in rows)
    assert sum(1 for r in rows[1:] if r[0] == "chair/lemma_pos" and r[6] == "CHAIRs") == 8
    html = (out / "leaderboard.html").read_text()
    assert html.count("<table class='lb'") == 2 and "data:image/png;base64," in html  # the alpha sweep
    png = tmp / "sweep.png"
    run_in_process(["scripts/plot_sweep.py", "--store", str(path), "--param", "alpha", "--metric", "CHAIRs",
             "--intervention", "damro", "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli(["scripts/plot_sweep.py", "--store", str(path), "--param", "alpha", "--metric", "CHAIRs",
                   "--model", "minigpt_v2", "--out", str(tmp / "none.png")], check=False)
    assert bad.returncode == 2 and "model=minigpt_v2" in bad.stderr


def test_sweep_series_ignore_rows_without_the_parameter(store):
    from harness.sweep_plot import detect_sweeps, sweep_series

    _, path = store
    rows = read_results(path)
    series = sweep_series(rows, "alpha", "CHAIRs", intervention="damro")
    (pts,) = series.values()  # llava15_7b only: the default damro rows have alpha null
    assert sorted(pts) == [0.5, 1.0, 2.0]
    assert all(lo <= v <= hi for v, lo, hi in pts.values())
    assert ("chair/lemma_pos", "damro", "alpha") in detect_sweeps(rows)


def test_html_tables_sort_in_headless_chromium(store):
    from browser_check import dump_dom, find_chromium

    if not find_chromium():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    tmp, path = store
    out = tmp / "lb_browser"
    run_in_process(["scripts/leaderboard.py", "--store", str(path), "--out", str(out), "--no-plots"])
    page = out / "leaderboard.html"
    html = page.read_text()
    tid = re.search(r"<table class='lb' id='([^']+)' data-benchmark='chair/lemma_pos'", html).group(1)
    dom = dump_dom(page)
    assert 'data-ready="2"' in dom
    values = {}
    for key, cell in re.findall(r"<tr data-key='(\d+)'><td data-sort='[^']*' class='t'>[^<]*</td>"
                                r"<td data-sort='[^']*' class='t'>[^<]*</td><td[^>]*>[^<]*</td>"
                                r"<td[^>]*data-sort='([^']+)'", html.split(f"id='{tid}'")[1].split("</table>")[0]):
        values[key] = float(cell)
    for direction, reverse in (("asc", False), ("desc", True)):
        dom = dump_dom(page, f"sort={tid}:3:{direction}")  # column 3 = CHAIRs
        m = re.search(rf'id="{tid}"[^>]*data-sorted="3:{direction}"[^>]*data-order="([^"]+)"', dom) or re.search(
            rf'data-order="([^"]+)"[^>]*id="{tid}"', dom)
        assert m, "the table was not sorted on load"
        order = m.group(1).split("|")
        got = [values[k] for k in order]
        assert got == sorted(got, reverse=reverse) and len(got) == 8
