"""Hallucination detectors: VAR features, the MLP detector, the first-token probe, `warn` and `first_token_probe`."""
import json

import numpy as np
import pytest
import torch

from benchmarks.base import DATA_DIR, Item
from harness.detect import binary_report, roc_auc
from harness.detect.var import (answer_mask_from_ids, encode_answer, first_token_at, generate_with_var, load_var,
                                save_var, teacher_forced_var, token_char_spans)

IMAGES = sorted((DATA_DIR / "images").glob("*.jpg"))
CAPTION = "Please describe this image in detail."


def _attentions(out):
    return out.attentions if getattr(out, "attentions", None) is not None else out.language_model_outputs.attentions


def _direct_var(adapter, image, question, answer_ids, row="generating"):
    """[T, L, H] image-attention sums from output_attentions of one unpadded row."""
    b = adapter.prepare([image], [question])
    p = b.inputs["input_ids"].shape[1]
    full = dict(b.inputs)
    full["input_ids"] = torch.cat([b.inputs["input_ids"], answer_ids[None]], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    with torch.no_grad():
        out = adapter.model(**full, output_attentions=True)
    s, e = adapter.image_spans(b.inputs["input_ids"])[0]
    first = p - 1 if row == "generating" else p
    rows = slice(first, first + len(answer_ids))
    return torch.stack([a[0, :, rows, s:e].float().sum(-1).T for a in _attentions(out)], dim=1)


# ------------------------------------------------------------------ metrics
def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    rep = binary_report([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.6])
    assert rep["accuracy"] == 0.5 and rep["auroc"] == 0.75
    assert binary_report([1, 1], [0.2, 0.9])["auroc"] is None


# ------------------------------------------------------------------ VAR features
@pytest.mark.parametrize("name", ["tiny_llava", "tiny_blip2"])
def test_var_equals_direct_attention_sums(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    questions = [CAPTION, "Is there a dog in the image?"]  # different lengths: the batch is left-padded
    batch = a.prepare(coco_images[:2], questions)
    ids, gen_var = generate_with_var(a, batch, {"strategy": "greedy", "max_new_tokens": 8})
    mask = answer_mask_from_ids(ids, a.tokenizer)
    tf = teacher_forced_var(a, batch, ids, mask)
    tf_token = teacher_forced_var(a, batch, ids, mask, row="token")
    assert tf.shape == (2, ids.shape[1], a.num_layers, 4)
    assert torch.allclose(gen_var, tf, atol=1e-5)  # captured while generating == teacher forced
    for i in range(2):
        n = int(mask[i].sum())
        direct = _direct_var(a, coco_images[i], questions[i], ids[i, :n])
        assert torch.allclose(tf[i, :n], direct, atol=1e-5)
        assert torch.allclose(tf_token[i, :n], _direct_var(a, coco_images[i], questions[i], ids[i, :n], "token"),
                              atol=1e-5)
        assert float(direct.min()) >= 0 and float(direct.max()) <= 1 + 1e-5
    assert not torch.allclose(tf, tf_token)


def test_token_char_spans_and_mention_lookup(tiny_adapters):
    tok = tiny_adapters["tiny_llava"].tokenizer
    ids, offsets = encode_answer(tok, "There is a dog, and a dining table.")
    text, spans = token_char_spans(tok, ids)
    assert text == "there is a dog, and a dining table."
    assert [text[s:e].strip() for s, e in spans] == [tok.decode([i]) for i in ids]
    for sp in (spans, offsets):
        assert tok.decode([ids[first_token_at(sp, 11, 14)]]) == "dog"
        assert tok.decode([ids[first_token_at(sp, 22, 34)]]) == "dining"  # first sub-token of a two-word object
    assert first_token_at(spans, 100, 104) is None


def test_extract_var_from_answers_file_labels_by_chair(tiny_adapters, tmp_path):
    from pathlib import Path

    import harness.cli.extract_var as mod
    a = tiny_adapters["tiny_llava"]
    # COCO 60623 has bowl, dining table, person, spoon, wine glass; 579664 has banana, bowl
    recs = [{"question_id": "c1", "image": str(IMAGES[0]), "image_id": IMAGES[0].name, "question": CAPTION,
             "answer": "A man eats from a bowl next to a dog and a dog.", "meta": {"kind": "caption"}},
            {"question_id": "y1", "image": str(IMAGES[0]), "image_id": IMAGES[0].name, "question": "Is there a cat?",
             "answer": "No cat.", "meta": {"kind": "yes_no"}},
            {"question_id": "c2", "image": str(IMAGES[5]), "image_id": IMAGES[5].name, "question": CAPTION,
             "answer": "Bananas in a bowl on a table.", "meta": {"kind": "caption"}}]
    src = tmp_path / "answers.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "var"
    summary = mod.extract({"answers": str(src), "out": str(out), "kinds": ["caption"], "ground_truth": "lemma_pos",
                           "row": "generating", "unique": True, "batch_size": 2, "model": {"name": "tiny_llava"}}, a)
    feats, labels, rows, meta = load_var(out)
    got = [(r["question_id"], r["object"], r["hallucinated"]) for r in rows]
    assert got == [("c1", "person", False), ("c1", "bowl", False), ("c1", "dog", True),
                   ("c2", "banana", False), ("c2", "bowl", False), ("c2", "dining table", True)]
    assert labels.tolist() == [0, 0, 1, 0, 0, 1] and summary["duplicates_dropped"] == 1
    assert feats.shape == (6, 4, 4) and meta["num_layers"] == 4 and meta["row"] == "generating"
    # the stored feature is the VAR of the word's first token, teacher-forced on the tokenized answer
    ids, _ = encode_answer(a.tokenizer, recs[0]["answer"])
    from PIL import Image

    im = Image.open(IMAGES[0]).convert("RGB")
    want = _direct_var(a, im, CAPTION, torch.tensor(ids))
    assert torch.allclose(feats[2], want[rows[2]["token"]], atol=1e-5)
    assert a.tokenizer.decode([ids[rows[2]["token"]]]) == "dog"


# ------------------------------------------------------------------ the MLP detector
def _synthetic_var(n=320, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.4).long()
    var = torch.rand(n, 4, 4, generator=g) * 0.5
    var[:, 1, 0] += 0.5 * (1 - y)  # real words look at the image more in layer 1 head 0 ...
    var[:, 2, 3] -= 0.3 * y  # ... and less so hallucinated ones in layer 2 head 3
    return var.clamp(0, 1), y


def test_detector_learns_separable_signal_and_round_trips(tmp_path):
    from harness.detect.mlp import VARDetector, train_detector, train_mlp

    var, y = _synthetic_var()
    det, rep = train_detector(var, y, layers=(1, 2), grid={"epochs": [5, 15], "hidden": [16], "lr": [1e-2, 1e-3]})
    assert rep["test"]["auroc"] > 0.95 and rep["test"]["accuracy"] > 0.85
    assert len(rep["grid_results"]) == 4 and rep["best"] in rep["grid_results"]
    assert det.input_size == 8 and det.layers == (1, 2)
    path = det.save(tmp_path / "det")
    assert path.suffix == ".safetensors" and (tmp_path / "det.json").exists()
    back = VARDetector.load(tmp_path / "det.json")
    assert np.array_equal(back.predict_proba(var), det.predict_proba(var))
    assert back.meta["report"]["test"]["auroc"] == rep["test"]["auroc"]
    # snapshots after 5 epochs of a 15-epoch run equal a separate 5-epoch run (same seeds)
    x = var[:, 1:3].flatten(1)
    m5, _ = train_mlp(x, y, 16, 1e-2, 5)
    _, snaps = train_mlp(x, y, 16, 1e-2, [5, 15])
    assert all(torch.equal(m5.state_dict()[k], snaps[5]["state"][k]) for k in snaps[5]["state"])
    with pytest.raises(ValueError, match="does not fit"):
        from harness.detect.mlp import parse_layers

        parse_layers("5-18", 4)


def test_train_detector_cli(tmp_path, capsys):
    from pathlib import Path

    var, y = _synthetic_var(200, seed=1)
    save_var(tmp_path / "feats", var, y, [], {"model": "synthetic", "num_layers": 4, "num_heads": 4})
    import harness.cli.train_detector as mod
    rep = mod.run(["--features", str(tmp_path / "feats.safetensors"), "--layers", "1-2", "--epochs", "10",
                    "--hidden", "16", "--lr", "0.01", "--out", str(tmp_path / "d"), "--quiet"])
    assert rep["test"]["auroc"] > 0.9
    info = json.loads((tmp_path / "d.json").read_text())
    assert info["layers"] == [1, 2] and info["layers_inclusive"] and info["model"] == "synthetic"
    assert "test: AUROC=" in capsys.readouterr().out


# ------------------------------------------------------------------ the first-token probe
def test_probe_learns_separable_logits_and_round_trips_json(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from harness.detect.probe import LinearProbe, evaluate_probe, fit_probe, load_features, save_features

    rng = np.random.default_rng(0)
    w = rng.normal(size=60)
    x = rng.normal(size=(500, 60)).astype(np.float32)
    y = (x @ w + 0.3 * rng.normal(size=500) > 0).astype(int)
    probe = fit_probe(x[:300], y[:300], max_iter=1000)
    m = evaluate_probe(probe, x[300:], y[300:])
    assert m["accuracy"] > 0.9 and m["auroc"] > 0.97
    ref = LogisticRegression(max_iter=1000, random_state=0).fit(x[:300], y[:300]).predict_proba(x[300:])[:, 1]
    assert np.allclose(probe.predict_proba(x[300:]), ref, atol=1e-10)
    probe.save(tmp_path / "p.json")
    assert "coef" in json.loads((tmp_path / "p.json").read_text())
    back = LinearProbe.load(tmp_path / "p.json")
    assert np.array_equal(back.coef, probe.coef) and back.intercept == probe.intercept
    assert np.array_equal(back.predict_proba(x), probe.predict_proba(x))
    # feature files: ours (safetensors + JSON) and LVLM-LP's JSONL
    save_features(tmp_path / "f", torch.tensor(x[:5]), y[:5].tolist(), [{"question_id": i} for i in range(5)], {})
    fx, fy, rows, _ = load_features(tmp_path / "f")
    assert np.array_equal(fx, x[:5]) and fy.tolist() == y[:5].tolist() and rows[4]["question_id"] == 4
    (tmp_path / "lp.jsonl").write_text("".join(json.dumps({"logits": x[i].tolist(), "label": int(y[i]), "image": "a"})
                                               + "\n" for i in range(3)))
    lx, ly, lrows, _ = load_features(tmp_path / "lp.jsonl")
    assert np.allclose(lx, x[:3]) and ly.tolist() == y[:3].tolist() and lrows[0] == {"label": int(y[0]), "image": "a"}
    with pytest.raises(ValueError, match="columns"):
        probe.predict_proba(x[:, :10])


def test_probe_cli_trains_and_evaluates(tmp_path, capsys):
    from pathlib import Path

    from harness.detect.probe import LinearProbe, save_features

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30)).astype(np.float32)
    y = (x[:, 3] - x[:, 7] > 0).astype(int)
    rows = [{"question_id": i, "image_id": f"im{i // 4}"} for i in range(200)]
    save_features(tmp_path / "tr", torch.tensor(x[:140]), y[:140].tolist(), rows[:140], {"model": "m"})
    save_features(tmp_path / "ev", torch.tensor(x[140:]), y[140:].tolist(), rows[140:], {"model": "m"})
    import harness.cli.probe_first_token as mod
    res = mod.run(["train", "--train", str(tmp_path / "tr"), "--eval", str(tmp_path / "ev.safetensors"),
                    "--out", str(tmp_path / "probe.json"), "--max-iter", "500"])
    assert res["eval"]["accuracy"] > 0.9 and res["eval"]["auroc"] > 0.95
    assert LinearProbe.load(tmp_path / "probe.json").meta["metrics"]["eval"]["n"] == 60
    res2 = mod.run(["train", "--train", str(tmp_path / "tr"), "--out", str(tmp_path / "p2.json")])
    assert res2["eval"]["n"] + res2["train"]["n"] == 140
    assert "AUROC=" in capsys.readouterr().out


# ------------------------------------------------------------------ interventions
def _items(indices, kinds=("caption", "yes")):
    out = []
    for i in indices:
        p = IMAGES[i]
        if "caption" in kinds:
            out.append(Item(f"cap/{i}", CAPTION, str(p), p.name, {"kind": "caption"}))
        if "yes" in kinds:
            out.append(Item(f"yn/{i}", "Is there a dog in the image?", str(p), p.name, {"kind": "yes_no", "label": "no"}))
    return out


def _answer(adapter, intervention, items, images, decoding):
    from harness.runner import answer_batch

    intervention.setup(adapter)
    return answer_batch(adapter, intervention, items, images, decoding, {"hash": "t"}, seed=0)


def test_warn_keeps_text_and_records_object_probabilities(tiny_adapters, coco_images, tmp_path):
    from harness.detect.mlp import MLP, VARDetector
    from harness.detect.var import answer_mentions
    from interventions.base import build_intervention

    a = tiny_adapters["tiny_llava"]
    torch.manual_seed(0)
    det = VARDetector(MLP(8, 16), (1, 2), 4)
    det.save(tmp_path / "det")
    items = _items([0, 2])
    images = [coco_images[0]] * 2 + [coco_images[2]] * 2
    decoding = {"strategy": "greedy", "max_new_tokens": 16}
    base = _answer(a, build_intervention({"name": "none"}), items, images, decoding)
    warn = build_intervention({"name": "warn", "detector": str(tmp_path / "det.safetensors"), "threshold": 0.5})
    recs = _answer(a, warn, items, images, decoding)
    assert [r["answer"] for r in recs] == [r["answer"] for r in base]
    n_objects = 0
    for r in recs:
        info = r["intervention_info"]
        assert info["var_source"] == "generation"
        mentions = answer_mentions(r["answer"])
        assert [(o["word"], o["object"]) for o in info["objects"]] == [(m["word"], m["object"]) for m in mentions]
        for o in info["objects"]:
            assert 0.0 <= o["prob"] <= 1.0 and o["warn"] == (o["prob"] > 0.5)
            assert r["answer"][o["start"]:o["end"]].lower() == o["word"].lower()
        n_objects += len(info["objects"])
    assert n_objects > 0  # the tiny vocabulary is full of COCO words
    # a probability equals the detector on the teacher-forced VAR of the word's first generated token
    r = next(r for r in recs if r["intervention_info"]["objects"])
    i = recs.index(r)
    b = a.prepare([images[i]], [items[i].prompt])
    ids = a.generate_ids(b, decoding)
    tf = teacher_forced_var(a, b, ids, answer_mask_from_ids(ids, a.tokenizer))[0]
    o = r["intervention_info"]["objects"][0]
    assert det.predict_proba(tf[o["token"]])[0] == pytest.approx(o["prob"], abs=1e-5)
    # beam search: same text as the baseline, VAR by teacher forcing
    beam = {"strategy": "beam", "num_beams": 2, "max_new_tokens": 8}
    b_base = _answer(a, build_intervention({"name": "none"}), items[:1], images[:1], beam)
    b_warn = _answer(a, warn, items[:1], images[:1], beam)
    assert b_warn[0]["answer"] == b_base[0]["answer"]
    assert b_warn[0]["intervention_info"]["var_source"] == "teacher_forced"


def test_warn_config_errors(tmp_path):
    from interventions.base import build_intervention

    with pytest.raises(ValueError, match="detector"):
        build_intervention({"name": "warn"})
    with pytest.raises(ValueError, match="probe"):
        build_intervention({"name": "first_token_probe"})


def test_first_token_probe_replaces_yes_no_answers(tiny_adapters, coco_images, tmp_path):
    from harness.detect.probe import LinearProbe
    from interventions.base import build_intervention

    a = tiny_adapters["tiny_llava"]
    vocab = a.site("lm_head").out_features
    rng = np.random.default_rng(0)
    probe = LinearProbe(rng.normal(size=vocab), 0.0, {})
    probe.save(tmp_path / "probe.json")
    items = _items([0, 1, 3])
    images = [coco_images[i] for i in (0, 0, 1, 1, 3, 3)]
    decoding = {"strategy": "greedy", "max_new_tokens": 6}
    base = _answer(a, build_intervention({"name": "none"}), items, images, decoding)
    ftp = build_intervention({"name": "first_token_probe", "probe": str(tmp_path / "probe.json")})
    recs = _answer(a, ftp, items, images, decoding)
    for r, rb, it, im in zip(recs, base, items, images):
        info = r["intervention_info"]
        if it.meta["kind"] == "caption":
            assert r["answer"] == rb["answer"] and info == {"probe": "not a yes/no question"}
            continue
        assert info["model_answer"] == rb["answer"]
        assert r["answer"] == info["probe_answer"] == ("Yes" if info["probe_prob"] > 0.5 else "No")
        b = a.prepare([im], [it.prompt])  # the probe reads the first generated token's logits
        with torch.no_grad():
            logits = a.model(**b.inputs).logits[0, -1]
        assert probe.predict_proba(logits)[0] == pytest.approx(info["probe_prob"], abs=1e-6)
    assert {r["answer"] for r in recs if r["meta"]["kind"] == "yes_no"} <= {"Yes", "No"}
    # a probe for another vocabulary is refused
    LinearProbe(np.zeros(7), 0.0, {}).save(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="7 logits"):
        build_intervention({"name": "first_token_probe", "probe": str(tmp_path / "bad.json")}).setup(a)


def test_yes_no_prompt_detection(tiny_adapters):
    from interventions.first_token_probe import is_yes_no_prompt

    for name, a in tiny_adapters.items():
        assert is_yes_no_prompt(a.format_prompt("Is there a dog in the image?")), name
        assert is_yes_no_prompt(a.format_prompt("Are there two cats? Please answer yes or no.")), name
        assert not is_yes_no_prompt(a.format_prompt(CAPTION)), name
        assert not is_yes_no_prompt(a.format_prompt("What is the man holding?")), name


def test_probe_rows_follow_the_benchmark_label_when_items_are_known():
    from types import SimpleNamespace

    from benchmarks.base import Item
    from interventions.first_token_probe import is_yes_no_row

    batch = SimpleNamespace(items=[Item("a", "Describe it.", None, meta={"label": "yes"}),
                                   Item("b", "Is there a dog?", None, meta={"kind": "caption"})])
    assert is_yes_no_row(batch, 0, "USER: Describe it. ASSISTANT:")  # label decides, not the wording
    assert is_yes_no_row(batch, 1, "USER: Is there a dog? ASSISTANT:")  # no label: the prompt decides
    assert not is_yes_no_row(SimpleNamespace(items=[]), 0, "USER: Describe the image. ASSISTANT:")
