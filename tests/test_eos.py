"""EOS-decision methods of "Less is More": selective EOS loss, EOS data scores, conversation encoding,
the training and scoring scripts, and the LLaVA-codebase LoRA converter (all on tiny models, CPU)."""
from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from harness.eos.data import (ConversationDataset, build_coco_demo_records, encode_record, iter_batches,
                              load_records, split_labels, to_model)
from harness.eos.scoring import eos_scores, keep_mask
from harness.eos.selective_loss import IGNORE_INDEX, selective_eos_loss, standard_lm_loss
from conftest import ROOT, TINY_MODELS

DATA = ROOT / "benchmarks" / "data" / "eos" / "coco6_conversations.json"
IMAGES = ROOT / "benchmarks" / "data" / "images"
EOS = 2


def _script(name: str):
    """The code of `scripts/<name>.py` (a shim of harness/cli/<name>.py)."""
    return importlib.import_module(f"harness.cli.{name}")


def _random_example(seed: int = 0, b: int = 3, t: int = 9, v: int = 13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(3, v, (b, t), generator=g)
    labels[:, :3] = IGNORE_INDEX             # prompt
    labels[0, 5] = EOS                       # an EOS in the middle (end of a first turn)
    labels[0, -1] = EOS
    labels[1, -2] = EOS
    labels[1, -1] = IGNORE_INDEX             # padding
    labels[2, 4] = IGNORE_INDEX              # row 2: no EOS at all
    return logits, labels


# ---- the loss ---------------------------------------------------------------------------------
def test_selective_eos_loss_equals_direct_computation():
    logits, labels = _random_example()
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            row = logits[b, t].clone()
            if y != EOS:
                row[EOS] = -math.inf
            terms.append(-torch.log_softmax(row, -1)[y])
    direct = torch.stack(terms).mean()
    assert torch.allclose(selective_eos_loss(logits, labels, EOS), direct, atol=1e-6)

    # the reference's own construction (llava_llama.py): ones mask, EOS column 0, scatter 1 at each label
    sl, sy = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    keep = sy != IGNORE_INDEX
    vl, vy = sl[keep], sy[keep]
    mask = torch.ones_like(vl)
    mask[:, EOS] = 0
    mask = mask.scatter_(1, vy.unsqueeze(-1), True)
    ref = torch.nn.functional.cross_entropy(vl.masked_fill(mask == 0, -float("inf")), vy)
    assert torch.allclose(selective_eos_loss(logits, labels, EOS), ref, atol=1e-6)

    # differs from plain CE, and the EOS logit gets no gradient at non-EOS label positions
    assert not torch.allclose(ref, standard_lm_loss(logits, labels))
    x = logits.clone().requires_grad_(True)
    selective_eos_loss(x, labels, EOS).backward()
    nxt = torch.cat([labels[:, 1:], torch.full((labels.shape[0], 1), IGNORE_INDEX)], 1)
    assert torch.all(x.grad[..., EOS][(nxt != EOS)] == 0)
    assert torch.all(x.grad[..., EOS][(nxt == EOS)] != 0)
    # nothing to supervise: zero (the reference's mean would be NaN)
    assert float(selective_eos_loss(logits, torch.full_like(labels, IGNORE_INDEX), EOS)) == 0.0


def test_eos_scores_equal_direct_computation():
    logits, labels = _random_example(seed=1)
    logits[0, 5, EOS] = 40.0  # p(EOS) ~ 1 before a non-EOS label (labels[0, 6]): exercises the 1e-5 clamp
    rows = eos_scores(logits, labels, EOS)
    for b, row in enumerate(rows):
        s_pos = s_neg = 0.0
        n_pos = n_neg = 0
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            p = torch.softmax(logits[b, t].double(), -1)[EOS].item()
            if y == EOS:
                s_pos -= math.log(p)
                n_pos += 1
            else:
                s_neg -= math.log(max(1 - p, 1e-5))
                n_neg += 1
        assert row["n_pos"] == n_pos and row["n_neg"] == n_neg
        assert row["S_pos"] == pytest.approx(s_pos, rel=1e-5, abs=1e-5)
        assert row["S_neg"] == pytest.approx(s_neg, rel=1e-4, abs=1e-5)
    assert rows[0]["S_neg"] >= -math.log(1e-5) - 1e-3 and rows[2]["n_pos"] == 0 and rows[2]["S_pos"] == 0.0
    assert keep_mask(rows, max_neg=rows[1]["S_neg"]) == [r["S_neg"] <= rows[1]["S_neg"] for r in rows]
    assert keep_mask(rows) == [True] * len(rows)


# ---- data -------------------------------------------------------------------------------------
def test_demo_data_is_regenerated_exactly():
    built = build_coco_demo_records(IMAGES, ROOT / "benchmarks" / "data" / "chair" / "imid_to_objects_lemma_pos.json")
    assert built == load_records(DATA)
    assert len(built) == 6 and all((IMAGES / r["image"]).exists() for r in built)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_encode_record_supervises_answers_and_one_eos_per_turn(tiny_adapters, coco_images, name):
    adapter = tiny_adapters[name]
    rec = load_records(DATA)[0]  # two turns
    enc = encode_record(adapter, rec, coco_images[0])
    ids, labels = enc["input_ids"], enc["labels"]
    tok = adapter.tokenizer
    eos = tok.eos_token_id
    answers = [c["value"] for c in rec["conversations"][1::2]]
    expected = [t for a in answers for t in tok(a, add_special_tokens=False).input_ids + [eos]]
    assert labels[labels != IGNORE_INDEX].tolist() == expected
    assert int((labels == eos).sum()) == 2 and labels[-1] == eos
    assert torch.all(labels[adapter.image_token_mask(ids)] == IGNORE_INDEX)
    sup = labels != IGNORE_INDEX
    assert torch.equal(ids[sup], labels[sup])
    # the prompt part is exactly what the benchmarks feed the model for the first question
    prompt = adapter.prepare([coco_images[0]], ["Describe this image in detail."]).inputs["input_ids"][0]
    assert ids[:len(prompt)].tolist() == prompt.tolist()


def test_right_padded_batch_rows_equal_single_rows(tiny_adapters):
    adapter = tiny_adapters["tiny_llava"]
    ds = ConversationDataset(adapter, load_records(DATA)[1:3], IMAGES)
    _, batch = next(iter_batches(ds, 2))
    inputs, labels = split_labels(to_model(batch, adapter.model, adapter.device))
    with torch.no_grad():
        both = adapter.model(**inputs).logits
        for i in range(2):
            one = ds.collate([ds[i]])
            single = adapter.model(**split_labels(to_model(one, adapter.model, adapter.device))[0]).logits[0]
            n = single.shape[0]
            assert torch.allclose(both[i, :n], single, atol=1e-5)
            assert torch.all(labels[i, n:] == IGNORE_INDEX)


# ---- scoring script ---------------------------------------------------------------------------
def test_score_script_matches_direct_computation_and_filters(tiny_adapters, coco_images, tmp_path, capsys):
    adapter = tiny_adapters["tiny_llava"]
    records = load_records(DATA)
    out, kept_path = tmp_path / "scores.jsonl", tmp_path / "kept.json"
    # direct: prompt through the processor, answer tokens + EOS appended by hand, one forward per record
    direct = []
    for rec, image in zip(records, coco_images):
        assert rec["image"] == sorted(p.name for p in IMAGES.glob("*.jpg"))[len(direct)]
        conv = rec["conversations"]
        ids = adapter.prepare([image], [conv[0]["value"].replace("<image>", "").strip()]).inputs
        ids = {k: v.clone() for k, v in ids.items()}
        n_prompt = ids["input_ids"].shape[1]
        seq = ids["input_ids"][0].tolist()
        sup = []
        for k in range(1, len(conv), 2):
            if k > 1:
                turn = adapter.tokenizer(f"USER: {conv[k - 1]['value']} ASSISTANT:", add_special_tokens=False).input_ids
                seq += turn
            ans = adapter.tokenizer(conv[k]["value"], add_special_tokens=False).input_ids + [EOS]
            sup += list(range(len(seq), len(seq) + len(ans)))
            seq += ans
        assert sup[0] == n_prompt
        with torch.no_grad():
            logits = adapter.model(input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                                   pixel_values=ids["pixel_values"]).logits[0]
        logp = torch.log_softmax(logits.double(), -1)[:, EOS]
        s_pos = -sum(float(logp[i - 1]) for i in sup if seq[i] == EOS)
        s_neg = -sum(math.log(max(1 - math.exp(float(logp[i - 1])), 1e-5)) for i in sup if seq[i] != EOS)
        direct.append((s_pos, s_neg, sum(seq[i] == EOS for i in sup)))
    threshold = sorted(d[1] for d in direct)[2]
    mod = _script("score_eos_data")
    assert mod.main(["--model", "tiny_llava", "--out", str(out), "--batch-size", "4",
                     "--max-neg", str(threshold), "--filtered", str(kept_path)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for row, (s_pos, s_neg, n_pos) in zip(rows, direct):
        assert row["S_pos"] == pytest.approx(s_pos, rel=1e-4) and row["S_neg"] == pytest.approx(s_neg, rel=1e-3)
        assert row["n_pos"] == n_pos and row["kept"] == (row["S_neg"] <= threshold)
    kept = json.loads(kept_path.read_text())
    assert kept == [rec for rec, row in zip(records, rows) if row["kept"]] and 1 <= len(kept) < len(records)
    assert "kept" in capsys.readouterr().out


# ---- training script --------------------------------------------------------------------------
def test_train_script_end_to_end_and_adapter_loads(tiny_adapters, tmp_path):
    from harness.models.loader import load_adapter

    out = tmp_path / "adapter"
    args = ["--model", "tiny_llava", "--max-steps", "2", "--batch-size", "3", "--lora-r", "4", "--lora-alpha", "8",
            "--lr", "1e-2", "--mm-projector-lr", "1e-2", "--output", str(out), "--num-threads", "1"]
    # the script's own main() in-process: a subprocess (run_cli(["scripts/train_selective_eos.py", *args]))
    # spends ~25 s of this shared machine re-importing torch/transformers/peft
    assert _script("train_selective_eos").main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["model.multi_modal_projector"] and cfg["r"] == 4
    base = dict(tiny_adapters["tiny_llava"].model.named_parameters())
    tuned = load_adapter({"name": "t", "tiny": "tiny_llava", "family": "llava", "adapter": str(out)})
    params = dict(tuned.model.named_parameters())
    assert set(params) == set(base)  # merged and unloaded: plain transformers names
    for key in ["model.language_model.layers.0.self_attn.q_proj.weight", "model.language_model.layers.3.mlp.down_proj.weight",
                "model.multi_modal_projector.linear_1.weight"]:
        assert not torch.allclose(params[key], base[key]), key
    for key in ["model.vision_tower.encoder.layers.0.self_attn.q_proj.weight", "lm_head.weight"]:
        assert torch.equal(params[key], base[key]), key


# ---- converter --------------------------------------------------------------------------------
class NotATensor:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


LEAVES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _fake_llava_adapter(folder, base: dict, r: int = 4, alpha: int = 16, fmt: str = "bin"):
    """A LoRA adapter as LLaVA's train.py (peft of its era) saves it, on tiny_llava shapes."""
    g = torch.Generator().manual_seed(0)
    lora = {}
    for i in range(4):
        for leaf, grp in LEAVES.items():
            w = base[f"model.language_model.layers.{i}.{grp}.{leaf}.weight"]
            stem = f"base_model.model.model.layers.{i}.{grp}.{leaf}"
            lora[f"{stem}.lora_A.weight"] = torch.randn(r, w.shape[1], generator=g)
            lora[f"{stem}.lora_B.weight"] = torch.randn(w.shape[0], r, generator=g)
    non_lora = {f"base_model.model.model.mm_projector.{j}.{p}":
                torch.randn(base[f"model.multi_modal_projector.linear_{1 if j == 0 else 2}.{p}"].shape, generator=g)
                for j in (0, 2) for p in ("weight", "bias")}
    folder.mkdir(parents=True)
    if fmt == "bin":
        torch.save(lora, folder / "adapter_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(lora, str(folder / "adapter_model.safetensors"))
    torch.save(non_lora, folder / "non_lora_trainables.bin")
    config = {"auto_mapping": None, "base_model_name_or_path": "./checkpoints/llava-v1.5-7b", "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
              "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.05, "modules_to_save": None,
              "peft_type": "LORA", "r": r, "revision": None, "task_type": "CAUSAL_LM",
              "target_modules": ["up_proj", "k_proj", "gate_proj", "v_proj", "down_proj", "q_proj", "o_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return lora, non_lora


def test_convert_llava_lora_merges_to_hand_computed_weights(tiny_adapters, tmp_path, capsys):
    from harness.models.loader import load_adapter
    from harness.models.tiny import ensure_tiny_model

    base = {k: v.detach().clone() for k, v in tiny_adapters["tiny_llava"].model.named_parameters()}
    r, alpha = 4, 16
    lora, non_lora = _fake_llava_adapter(tmp_path / "llava", base, r, alpha)
    out = tmp_path / "hf"
    mod = _script("convert_llava_lora")
    assert mod.main([str(tmp_path / "llava"), str(out), "--check-base", str(ensure_tiny_model("tiny_llava"))]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert len(cfg["target_modules"]) == 28 and all(t.startswith("model.language_model.layers.")
                                                     for t in cfg["target_modules"])
    assert cfg["modules_to_save"] == ["multi_modal_projector"]
    tuned = load_adapter({"name": "t", "tiny": "tiny_llava", "family": "llava", "adapter": str(out)})
    merged = dict(tuned.model.named_parameters())
    scale = alpha / r
    for i in range(4):
        for leaf, grp in LEAVES.items():
            stem = f"base_model.model.model.layers.{i}.{grp}.{leaf}"
            key = f"model.language_model.layers.{i}.{grp}.{leaf}.weight"
            want = base[key] + lora[f"{stem}.lora_B.weight"] @ lora[f"{stem}.lora_A.weight"] * scale
            assert torch.allclose(merged[key], want, atol=1e-5), key
    for j, lin in ((0, "linear_1"), (2, "linear_2")):
        for p in ("weight", "bias"):
            assert torch.equal(merged[f"model.multi_modal_projector.{lin}.{p}"],
                               non_lora[f"base_model.model.model.mm_projector.{j}.{p}"])
    for key in base:  # nothing else moved (CLIP's q_proj/k_proj/v_proj included)
        if ".language_model.layers." not in key and "multi_modal_projector" not in key:
            assert torch.equal(merged[key], base[key]), key
    capsys.readouterr()


def test_convert_llava_lora_refuses_unmapped_names(tiny_adapters, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    base = {k: v.detach() for k, v in tiny_adapters["tiny_llava"].model.named_parameters()}
    src = tmp_path / "llava"
    _fake_llava_adapter(src, base, fmt="safetensors")
    tensors = load_file(str(src / "adapter_model.safetensors"))
    odd = ["base_model.model.model.layers.0.self_attn.rotary_emb.lora_A.weight",
           "base_model.model.model.mm_projector.weight"]  # a `linear` projector has no transformers home
    for name in odd:
        tensors[name] = torch.zeros(4, 64)
    save_file(tensors, str(src / "adapter_model.safetensors"))
    mod = _script("convert_llava_lora")
    assert mod.main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in odd) and "2 name(s)" in err
    assert not (tmp_path / "out").exists()

    # a .bin that needs real unpickling is refused, not executed
    torch.save({"x": NotATensor()}, src / "non_lora_trainables.bin")
    assert mod.main([str(src), str(tmp_path / "out2")]) == 2
    assert "weights_only" in capsys.readouterr().err
