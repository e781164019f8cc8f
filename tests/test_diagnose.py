"""Diagnosis maps (attention, relevancy, logit lens), the HTML report in a headless browser, scripts/diagnose.py."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_MODELS
from harness.diagnosis.logit_lens import logit_lens
from harness.diagnosis.maps import (attention_map, encode_answer, layer_indices, rollout, rollout_row,
                                    trace_answer)
from harness.diagnosis.report import chair_marks, coco_id_from_name, report_payload, write_report

IMAGES = ROOT / "benchmarks" / "data" / "images"
COCO_IMAGE = IMAGES / "COCO_val2014_000000562207.jpg"  # ground truth: bowl, elephant, person
QUESTION = "Describe the image."
STEPS = 4


@pytest.fixture(scope="module")
def traces(tiny_adapters, coco_images):
    """One greedy trace per tiny family on the same image (a few ms each)."""
    return {name: trace_answer(a, coco_images[0], QUESTION, max_new_tokens=STEPS)
            for name, a in tiny_adapters.items()}


def run_script(args: list[str]) -> None:
    """`halluc-bench-diagnose ARGS`, run in this process (Hydra parses ARGS from sys.argv as on the CLI)."""
    from harness.cli.diagnose import main

    argv = sys.argv
    sys.argv = ["halluc-bench-diagnose", *args, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    try:
        main()
    finally:
        sys.argv = argv


def _payload_of(path: Path) -> dict:
    m = re.search(r'<script type="application/json" id="hb-data">(.*?)</script>', path.read_text(), re.S)
    assert m, f"no report data in {path}"
    return json.loads(m.group(1).replace("<\\/", "</"))


# ------------------------------------------------------------------ maps
def test_attention_map_equals_direct_generate_attentions(tiny_adapters, coco_images, traces):
    """Mean over chosen layers and heads of generate()'s attention rows onto the image span, token by token."""
    a = tiny_adapters["tiny_llava"]
    tr = traces["tiny_llava"]
    batch = a.prepare([coco_images[0]], [QUESTION])
    with torch.no_grad():
        out = a.model.generate(**batch.inputs, max_new_tokens=STEPS, do_sample=False, output_attentions=True,
                               return_dict_in_generate=True, pad_token_id=a.tokenizer.pad_token_id)
    assert out.sequences[0, batch.inputs["input_ids"].shape[1]:].tolist() == tr.token_ids
    s0, s1 = a.image_spans(batch.inputs["input_ids"])[0]
    assert tr.span == (s0, s1) and s1 - s0 == 16
    for layers, idx in (([1, 2], [1, 2]), (None, [0, 1, 2, 3]), ("-1", [3])):
        ours = attention_map(tr, layers)
        for t in range(len(tr.token_ids)):
            # step t's attentions: the query row of the position that predicted token t is the last row
            direct = torch.stack([out.attentions[t][l][0, :, -1, s0:s1] for l in idx]).mean((0, 1))
            torch.testing.assert_close(ours[t], direct.float(), atol=1e-5, rtol=1e-4)


def test_teacher_forced_trace_matches_generated(tiny_adapters, coco_images, traces):
    a, tr = tiny_adapters["tiny_llava"], traces["tiny_llava"]
    forced = trace_answer(a, coco_images[0], QUESTION, answer_ids=tr.token_ids, relevancy=False)
    assert not forced.generated and forced.relevancy is None
    torch.testing.assert_close(forced.attention, tr.attention)
    ids = encode_answer(a.tokenizer, "a dog on a bench")
    assert a.tokenizer.decode(ids) == "a dog on a bench"
    again = trace_answer(a, coco_images[0], QUESTION, answer="a dog on a bench", relevancy=False)
    assert again.token_ids == ids and again.answer == "a dog on a bench"
    assert [again.answer[s:e].strip() for s, e in again.token_offsets] == ["a", "dog", "on", "a", "bench"]


@pytest.mark.parametrize("name,views,patch_views", [
    ("tiny_llava", {"patches": (4, 4)}, {"patches": (4, 4)}),
    ("tiny_llava_next", {"base": (4, 4), "tiles": (6, 8)}, {"base": (4, 4), "tiles": (6, 8)}),
    ("tiny_instructblip", {"queries": (1, 8), "patches": (4, 4)}, {"patches": (4, 4)}),
    ("tiny_blip2", {"queries": (1, 8), "patches": (4, 4)}, {"patches": (4, 4)}),
    # 2x2 tiles, unpadded to 6x8 cells, shrunk by anyres_max to 4x6 tokens
    ("tiny_llava_onevision", {"base": (4, 4), "tiles": (4, 6)}, {"base": (4, 4), "tiles": (4, 6)}),
])
def test_relevancy_shapes_and_non_negative(traces, name, views, patch_views):
    tr = traces[name]
    T, S = len(tr.token_ids), tr.span[1] - tr.span[0]
    assert tr.relevancy.shape == (T, S) and tr.attention.shape == (4, T, S)
    assert bool((tr.relevancy >= 0).all()) and float(tr.relevancy.sum()) > 0
    assert {v.name: (v.rows, v.cols) for v in tr.views} == views
    assert {k: tuple(v.shape[1:]) for k, v in tr.patch_relevancy.items()} == patch_views
    for v in tr.patch_relevancy.values():
        assert v.shape[0] == T and bool((v >= 0).all()) and torch.isfinite(v).all()
    assert all(0 < s <= 1 for s in tr.relevancy_image_share)


def test_rollout_row_equals_full_rollout():
    torch.manual_seed(0)
    cams = [torch.rand(1, 6, 6).tril() / 6 for _ in range(3)]
    R = rollout(cams)[0]
    for row in range(6):
        torch.testing.assert_close(rollout_row([c[0] for c in cams], row), R[row])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_logit_lens_last_layer_is_the_greedy_token(traces, name):
    tr = traces[name]
    assert len(tr.lens) == len(tr.token_ids) and len(tr.lens[0]) == 4 and len(tr.lens[0][0]) == 5
    assert [step[-1][0][1] for step in tr.lens] == tr.token_ids
    assert all([p for _, _, p in top] == sorted((p for _, _, p in top), reverse=True) for s in tr.lens for top in s)


def test_logit_lens_of_the_model_output(tiny_adapters):
    a = tiny_adapters["tiny_llava"]
    h = torch.randn(2, 64)
    top = logit_lens(a, [h], top_k=3)
    logits = a.model.lm_head(a.model.model.language_model.norm(h))
    assert [t[0][0][1] for t in top] == logits.argmax(-1).tolist()


def test_layer_indices():
    assert layer_indices(None, 4) == [0, 1, 2, 3]
    assert layer_indices([1, 2], 4) == [1, 2] and layer_indices([-2, -1], 4) == [2, 3]
    assert layer_indices("1-3", 4) == [1, 2, 3] and layer_indices("-1", 4) == [3] and layer_indices(0, 4) == [0]
    with pytest.raises(ValueError):
        layer_indices([3, 1], 4)


# ------------------------------------------------------------------ CHAIR marks
def test_chair_marks_on_coco_names():
    assert coco_id_from_name("/x/COCO_val2014_000000562207.jpg") == 562207
    assert coco_id_from_name("cat.jpg") is None
    answer = "an elephant and a dog"
    offsets = [(0, 2), (2, 11), (11, 15), (15, 17), (17, 21)]
    marks = chair_marks(answer, offsets, COCO_IMAGE)
    assert marks["hallucinated"] == ["dog"] and "elephant" in marks["gt_objects"]
    assert [m and m["mark"] for m in marks["tokens"]] == [None, "object", None, None, "hallucinated"]
    assert chair_marks(answer, offsets, "/tmp/holiday.jpg") is None


# ------------------------------------------------------------------ the script and the browser
@pytest.fixture(scope="module")
def single_report(tmp_path_factory):
    """`python scripts/diagnose.py model=tiny_llava image=... question=...` on a shipped COCO image."""
    tmp = tmp_path_factory.mktemp("diag")
    out = tmp / "report.html"
    run_script(["model=tiny_llava", f"image={IMAGES / 'COCO_val2014_000000060623.jpg'}",
                "question=Describe the image in detail.", "max_new_tokens=6", "layers=[1,3]", f"out={out}",
                f"hydra.run.dir={tmp / 'hydra'}"])
    return out


def test_script_writes_a_report(single_report):
    p = _payload_of(single_report)
    assert p["model"] == "tiny_llava" and p["generated"] and len(p["tokens"]) == 6
    assert p["layer_range"] == [1, 3] and p["num_layers"] == 4
    assert [k["name"] for k in p["kinds"]] == ["attention", "relevancy", "relevancy_vision"]
    assert p["images"]["model"]["src"].startswith("data:image/png;base64,")
    assert p["chair"]["image_id"] == 60623
    marked = {t["mark"]["object"] for t in p["tokens"] if t["mark"] and t["mark"]["mark"] == "hallucinated"}
    assert marked == set(p["chair"]["hallucinated"])
    assert len(p["lens"]) == 6 and p["lens"][0][-1][0][2] == p["tokens"][0]["id"]


def test_report_renders_and_token_click_changes_map(single_report, tmp_path, tiny_adapters, coco_images):
    from browser_check import check, find_chromium

    if not find_chromium():
        pytest.skip("chromium is not installed (apt-get install -y chromium); the report's JS is not checked")
    seen = {}
    for h in ("token=0", "token=1&kind=attention"):
        body, canvases = check(single_report, h)
        assert body.get("data-ready") == "1", body
        assert canvases and all(int(c["data-nonzero"]) > 0 and float(c["data-max"]) > 0 for c in canvases)
        seen[h] = body
    first, second = seen["token=0"], seen["token=1&kind=attention"]
    assert first["data-token"] == "0" and second["data-token"] == "1" and second["data-kind"] == "attention"
    assert first["data-layers"] == second["data-layers"] == "1-3"  # the script's layers=[1,3]
    assert first["data-signature"] != second["data-signature"]
    # a BLIP report: decoder relevancy is one bar per Q-Former query token
    tr = trace_answer(tiny_adapters["tiny_blip2"], coco_images[0], QUESTION, max_new_tokens=2)
    path = write_report(tr, tmp_path / "blip.html", image_path=IMAGES / "cat.jpg")
    body, canvases = check(path, "token=1&kind=relevancy&layers=0-1")
    assert body["data-kind"] == "relevancy" and body["data-token"] == "1" and body["data-layers"] == "0-1"
    assert [c["data-view"] for c in canvases] == ["queries"]  # bars
    assert int(canvases[0]["data-nonzero"]) > 0 and float(canvases[0]["data-max"]) > 0


def test_script_answers_index(tmp_path):
    """answers=FILE limit=2: an index page linking one teacher-forced report per record."""
    answers = tmp_path / "answers.jsonl"
    recs = [
        {"question_id": 7, "image": str(COCO_IMAGE), "question": QUESTION, "answer": "an elephant and a dog"},
        {"question_id": "q/8", "image": None, "image_id": "COCO_val2014_000000579664.jpg",
         "question": "What is on the table?", "answer": "a banana in a bowl"},
        {"question_id": 9, "image": str(COCO_IMAGE), "question": QUESTION, "answer": "not diagnosed"},
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run_script(["model=tiny_llava", f"answers={answers}", "limit=2", f"image_root={IMAGES}",
                f"out={tmp_path / 'rep'}", f"hydra.run.dir={tmp_path / 'hydra'}", "relevancy=false"])
    index = (tmp_path / "rep" / "index.html").read_text()
    links = re.findall(r'href="(items/[^"]+)"', index)
    assert len(links) == 2 and all((tmp_path / "rep" / link).is_file() for link in links)
    assert '<span class="hallucinated"> dog</span>' in index
    first, second = (_payload_of(tmp_path / "rep" / link) for link in links)
    assert not first["generated"] and first["answer"] == "an elephant and a dog"
    assert second["answer"] == "a banana in a bowl" and second["chair"]["hallucinated"] == []
    assert second["image_path"].endswith("COCO_val2014_000000579664.jpg")
    assert [k["name"] for k in first["kinds"]] == ["attention"]
