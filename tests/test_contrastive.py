"""The contrastive-decoding engine (interventions/contrastive.py), `damro` and `vcd` on the tiny models."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_MODELS

from benchmarks.base import Item
from harness.runner import answer_batch
from interventions.base import build_intervention
from interventions.contrastive import contrast_logits, contrastive_generate, views_from_pixels
from interventions.damro import Damro
from interventions.vcd import Vcd, add_diffusion_noise, diffusion_alphas_bar, noised_pixels
from harness.models.vision_attention import topk_patches

torch.set_num_threads(1)

FAMILIES = TINY_MODELS
QUESTIONS = ["Is there a dog in the image?", "Please describe this image in detail.",
             "What is on the table?", "Is there a car?"]
GREEDY = {"strategy": "greedy", "max_new_tokens": 8}


def _batch(adapter, images, n=3, offset=0):
    return adapter.prepare(images[offset:offset + n], QUESTIONS[offset:offset + n])


def _row(ids: torch.Tensor, pad: int) -> list[int]:
    """A generated row without its trailing padding."""
    out = ids.tolist()
    while out and out[-1] == pad:
        out.pop()
    return out


def _merged(a, view):
    """The input embeddings the model builds for a view: token embeddings with the image features scattered in."""
    with torch.inference_mode():
        emb = a.model.get_input_embeddings()(view.input_ids)
        feats = torch.cat(a.spec.image_features(view.encoding)).to(emb.dtype)
        return emb.masked_scatter(a.image_token_mask(view.input_ids)[..., None], feats)


def _run(intervention, adapter, batch, decoding, processors=None):
    with intervention.session(adapter, batch) as plan:
        return plan.generate_fn(batch, decoding, processors or [])


# ---- the engine and strength 0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_engine_alpha0_equals_hf_greedy(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = _batch(a, coco_images)
    base = a.generate_ids(b, GREEDY)
    pieces = a.spec.split_pixels(a.spec.vision_inputs(b.inputs))
    views = views_from_pixels(a, b.inputs, [pieces, [p + 0.5 for p in pieces]])  # ignored at alpha 0
    ids = contrastive_generate(a, b.inputs["input_ids"], views, GREEDY, alpha=0.0, beta=0.1)
    assert torch.equal(ids, base)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("iv", ["damro", "vcd"])
def test_alpha0_reproduces_baseline(tiny_adapters, coco_images, name, iv):
    a = tiny_adapters[name]
    if iv == "damro" and a.spec.damro_unsupported:  # no CLS token: a clear refusal instead
        with pytest.raises(ValueError, match=f"damro cannot run on model family {a.family!r}: .*CLS"):
            build_intervention({"name": iv, "alpha": 0}).setup(a)
        return
    b = _batch(a, coco_images, offset=1)
    base = a.generate_ids(b, GREEDY)
    intervention = build_intervention({"name": iv, "alpha": 0})
    intervention.setup(a)
    assert torch.equal(_run(intervention, a, b, GREEDY), base)


def test_contrast_logits_formula_and_cut():
    torch.manual_seed(0)
    lo, lc = torch.randn(3, 50), torch.randn(3, 50)
    beta = 0.2
    s = contrast_logits(lo, lc, 1.5, beta)
    p = torch.softmax(lo, -1)
    keep = p >= beta * p.max(-1, keepdim=True).values
    assert torch.equal(torch.isfinite(s), keep)
    assert torch.allclose(s[keep], (2.5 * lo - 1.5 * lc)[keep])
    assert torch.equal(contrast_logits(lo, lc, 0.0, beta), lo)  # alpha 0: no contrast, no cut
    # the cut never removes the argmax of the original view
    assert torch.isfinite(s.gather(1, lo.argmax(-1, keepdim=True))).all()


# ---- one step against independent plain forwards -------------------------------------------------------------
def _first_step(a, intervention, b, alpha, beta):
    ids, scores = contrastive_generate(a, b.inputs["input_ids"], intervention.views(a, b),
                                       {"strategy": "greedy", "max_new_tokens": 1}, alpha=alpha, beta=beta,
                                       return_scores=True)
    return ids[:, 0], scores[0]


def _expected(lo, lc, alpha, beta):
    """The reference formula by hand: (1+a) lo - a lc, -inf where p(lo) < beta * max p(lo)."""
    p = torch.softmax(lo, -1)
    out = (1 + alpha) * lo - alpha * lc
    return out.masked_fill(p < beta * p.max(-1, keepdim=True).values, -math.inf)


def _check_step(tok, scores, expected):
    assert torch.equal(torch.isfinite(scores), torch.isfinite(expected))
    fin = torch.isfinite(expected)
    assert torch.allclose(scores[fin], expected[fin], atol=1e-4, rtol=1e-4)
    assert torch.equal(tok, expected.argmax(-1))


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_instructblip"])
def test_vcd_step_equals_independent_forwards(tiny_adapters, coco_images, name):
    a = tiny_adapters[name]
    b = _batch(a, coco_images)
    iv = Vcd({"alpha": 1.0, "beta": 0.1, "noise_step": 500})
    tok, scores = _first_step(a, iv, b, 1.0, 0.1)
    noisy = torch.stack(noised_pixels(list(b.inputs["pixel_values"]), 500, 0, b.images))
    exp = []
    with torch.inference_mode():
        for i in range(len(b.prompts)):  # one row at a time, no padding: plain forwards
            keep = b.inputs["attention_mask"][i].bool()
            row = {k: v[i:i + 1] for k, v in b.inputs.items()}
            row["input_ids"] = row["input_ids"][:, keep]
            row["attention_mask"] = row["attention_mask"][:, keep]
            lo = a.model(**row).logits[0, -1].float()
            lc = a.model(**{**row, "pixel_values": noisy[i:i + 1]}).logits[0, -1].float()
            exp.append(_expected(lo, lc, 1.0, 0.1))
    _check_step(tok, scores, torch.stack(exp))


def _direct_clip_topk(a, pixel_values, k):
    """CLS attention of the tiny LLaVA vision tower computed from scratch: full q.k^T softmax, layer -2."""
    layers = a.site("vision_layers")
    out = a.model.model.vision_tower(pixel_values, output_hidden_states=True)
    layer = layers[len(layers) - 2]  # vision_feature_layer -2 reads the output of this block
    x = layer.layer_norm1(out.hidden_states[-3])  # the input of that block
    q, kk = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
    attn = torch.softmax(q @ kk.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    cls = attn[:, 0, 1:]
    return torch.topk(cls, k, dim=1).indices, out.hidden_states[-2][:, 1:]


def test_llava_topk_selection_equals_direct_computation(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images, n=4)
    with torch.inference_mode():
        _, cls_attn, _ = a.spec.cls_patch_attention(a, a.spec.vision_inputs(b.inputs))
        idx = topk_patches(cls_attn, 6)
        direct, _ = _direct_clip_topk(a, b.inputs["pixel_values"], 6)
    assert torch.equal(idx, direct)
    with pytest.raises(ValueError, match="topk"):
        topk_patches(torch.rand(2, 16), 17)


def test_damro_llava_step_equals_independent_forwards(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    k, alpha, beta = 5, 2.0, 0.1
    iv = Damro({"alpha": alpha, "beta": beta, "topk": k})
    tok, scores = _first_step(a, iv, b, alpha, beta)
    m = a.model
    exp = []
    with torch.inference_mode():
        idx, feats = _direct_clip_topk(a, b.inputs["pixel_values"], k)
        proj = m.model.multi_modal_projector(feats)  # [B, patches, D]
        for i in range(len(b.prompts)):
            keep = b.inputs["attention_mask"][i].bool()
            ids = b.inputs["input_ids"][i][keep]
            lo = m(input_ids=ids[None], pixel_values=b.inputs["pixel_values"][i:i + 1]).logits[0, -1].float()
            img = (ids == a.image_token_id).nonzero().flatten()
            short = torch.cat([ids[: int(img[0]) + k], ids[int(img[-1]) + 1:]])  # k image tokens left
            emb = m.get_input_embeddings()(short).clone()
            emb[int(img[0]): int(img[0]) + k] = proj[i, idx[i]]  # highest attention first, consecutive
            lc = m(inputs_embeds=emb[None]).logits[0, -1].float()
            exp.append(_expected(lo, lc, alpha, beta))
    _check_step(tok, scores, torch.stack(exp))


# ---- per-family contrastive views ---------------------------------------------------------------------------------
def test_llava_next_damro_view_is_base_crop_topk_plus_newline(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava_next"]
    b = _batch(a, coco_images)
    k = 4
    iv = Damro({"alpha": 1.0, "topk": k})
    m = a.model
    captured = {}
    h = m.model.multi_modal_projector.register_forward_hook(lambda mod, args, out: captured.setdefault("proj", out))
    with torch.inference_mode():
        try:
            orig, cd = iv.views(a, b)
        finally:
            h.remove()
    assert orig.input_ids.shape[0] == cd.input_ids.shape[0] == 3
    cd_embeds = _merged(a, cd)
    # every contrastive row holds k + 1 image embeddings: the base crop's top-k, then the newline
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    crops = [image_size_to_num_patches(image_size=s, grid_pinpoints=m.config.image_grid_pinpoints,
                                       patch_size=m.config.vision_config.image_size) for s in b.inputs["image_sizes"]]
    starts = [0] + list(torch.tensor(crops).cumsum(0)[:-1].tolist())
    with torch.inference_mode():
        layers = a.site("vision_layers")
        idx_all = []
        for i in range(len(starts)):
            pv = b.inputs["pixel_values"][i, :1]  # the base crop (the resized whole image)
            out = m.model.vision_tower(pv, output_hidden_states=True)
            layer = layers[len(layers) - 2]
            x = layer.layer_norm1(out.hidden_states[-3])
            q, kk = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
            cls = torch.softmax(q @ kk.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)[:, 0, 1:]
            idx_all.append(torch.topk(cls, k, dim=1).indices[0])
    for i, s in enumerate(starts):
        n_real = int(cd.attention_mask[i].sum())
        row = cd_embeds[i, -n_real:]
        expected = torch.cat([captured["proj"][s][idx_all[i]], m.model.image_newline[None]])
        # the k + 1 embeddings form one consecutive block, in that order (highest attention first)
        starts_at = [j for j in range(n_real) if torch.allclose(row[j], expected[0], atol=1e-5)]
        assert len(starts_at) == 1
        j = starts_at[0]
        assert torch.allclose(row[j:j + k + 1], expected, atol=1e-5)
        # the original view keeps the full AnyRes features: many more image tokens
        assert int(orig.attention_mask[i].sum()) > n_real


@pytest.mark.parametrize("offset", [False, True])
def test_instructblip_damro_reruns_qformer_on_kept_patches(tiny_adapters, coco_images, offset):
    a = tiny_adapters["tiny_instructblip"]
    b = _batch(a, coco_images)
    k = 4
    iv = Damro({"alpha": 1.0, "topk": k, "reference_cls_offset": offset})
    m = a.model
    with torch.inference_mode():
        _, cd = iv.views(a, b)
        # independent: per-head CLS attention of encoder block -2, head mean, top-k; then the model's OWN
        # get_image_features with its vision output replaced by the kept embeddings (a forward hook)
        vm = m.vision_model
        out = vm(b.inputs["pixel_values"], output_hidden_states=True)
        layer = vm.encoder.layers[len(vm.encoder.layers) - 2]
        x = layer.layer_norm1(out.hidden_states[-3])
        qkv = layer.self_attn.qkv(x)
        n, t, _ = qkv.shape
        hds = layer.self_attn.num_heads
        q, kk, _ = qkv.reshape(n, t, 3, hds, -1).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ kk.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1).mean(1)
        idx = torch.topk(attn[:, 0, 1:], k, dim=1).indices
        pick = idx if offset else idx + 1
        kept = out.last_hidden_state.gather(1, pick[..., None].expand(-1, -1, out.last_hidden_state.shape[-1]))

        def swap(mod, args, output):
            output.last_hidden_state = kept
            return output

        h = vm.register_forward_hook(swap)
        try:
            feats = m.get_image_features(b.inputs["pixel_values"], qformer_input_ids=b.inputs["qformer_input_ids"],
                                         qformer_attention_mask=b.inputs["qformer_attention_mask"],
                                         return_dict=True).pooler_output
        finally:
            h.remove()
        emb = m.get_input_embeddings()(b.inputs["input_ids"])
        emb = emb.masked_scatter(a.image_token_mask(b.inputs["input_ids"])[..., None],
                                 feats.reshape(-1, feats.shape[-1]))
    assert torch.allclose(_merged(a, cd), emb, atol=1e-5)
    assert torch.equal(cd.attention_mask, b.inputs["attention_mask"])


# ---- VCD noise -----------------------------------------------------------------------------------------------------
def test_vcd_noise_is_closed_form_q_xt_given_x0():
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8)
    t = 500
    # abar_t from the schedule written out independently (float64): VCD's sigmoid beta schedule
    betas = [1 / (1 + math.exp(-(-6 + 12 * s / 999))) * (0.5e-2 - 1e-5) + 1e-5 for s in range(1000)]
    abar = math.prod(1 - bs for bs in betas[: t + 1])
    assert diffusion_alphas_bar()[t].item() == pytest.approx(abar, rel=1e-5)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    expected = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    got = add_diffusion_noise(x0, t, torch.Generator().manual_seed(7))
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.dtype == x0.dtype
    # t = 999 is almost pure noise, t = 0 almost the image
    assert torch.allclose(add_diffusion_noise(x0, 0, torch.Generator().manual_seed(1)), x0, atol=0.05)
    with pytest.raises(ValueError, match="noise_step"):
        add_diffusion_noise(x0, 1000)


def test_vcd_noise_per_row_is_batch_independent(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    pieces = list(b.inputs["pixel_values"])
    full = noised_pixels(pieces, 500, 3, b.images)
    one = noised_pixels(pieces[1:2], 500, 3, b.images[1:2])
    assert torch.equal(full[1], one[0])
    assert not torch.equal(torch.stack(full), torch.stack(noised_pixels(pieces, 500, 4, b.images)))


# ---- batching, sampling, integration -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,iv", [("tiny_llava", "damro"), ("tiny_llava_next", "damro"),
                                     ("tiny_llava_next", "vcd"), ("tiny_instructblip", "damro"),
                                     ("tiny_llava_onevision", "vcd")])
def test_batched_equals_unbatched(tiny_adapters, coco_images, name, iv):
    a = tiny_adapters[name]
    intervention = build_intervention({"name": iv, "alpha": 1.0, "topk": 4} if iv == "damro" else {"name": iv})
    intervention.setup(a)
    b = _batch(a, coco_images, n=3)
    ids = _run(intervention, a, b, GREEDY)
    pad = a.tokenizer.pad_token_id
    for i in range(3):
        single = a.prepare(coco_images[i:i + 1], QUESTIONS[i:i + 1])
        assert _row(ids[i], pad) == _row(_run(intervention, a, single, GREEDY)[0], pad)


def test_contrast_changes_outputs(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    base = a.generate_ids(b, GREEDY)
    for cfg in ({"name": "damro", "alpha": 2.0, "topk": 4}, {"name": "vcd", "alpha": 1.0}):
        iv = build_intervention(cfg)
        iv.setup(a)
        assert not torch.equal(_run(iv, a, b, GREEDY), base), cfg


def test_sampling_runs_and_is_reproducible(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    dec = {"strategy": "sample", "temperature": 0.8, "top_p": 0.9, "top_k": 20, "max_new_tokens": 8}
    iv = build_intervention({"name": "vcd", "alpha": 1.0})
    torch.manual_seed(11)
    first = _run(iv, a, b, dec)
    torch.manual_seed(11)
    assert torch.equal(_run(iv, a, b, dec), first)
    # alpha 0 samples exactly like generate (same processors, same order, same random numbers)
    iv0 = build_intervention({"name": "damro", "alpha": 0})
    torch.manual_seed(5)
    hf = a.generate_ids(b, dec)
    torch.manual_seed(5)
    assert torch.equal(_run(iv0, a, b, dec), hf)


def test_reference_sampling_bypasses_warpers(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images)
    iv = build_intervention({"name": "damro", "alpha": 2.0, "topk": 4, "reference_sampling": True})
    outs = []
    for dec in ({"strategy": "sample", "temperature": 0.3, "top_p": 0.5, "max_new_tokens": 6},
                {"strategy": "sample", "max_new_tokens": 6}):
        torch.manual_seed(2)
        outs.append(_run(iv, a, b, dec))
    assert torch.equal(outs[0], outs[1])


def test_beam_search_is_not_supported(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images, n=1)
    with pytest.raises(NotImplementedError, match="beam"):
        _run(build_intervention({"name": "vcd"}), a, b, {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4})
    with pytest.raises(ValueError, match="does not support generate kwargs"):
        with build_intervention({"name": "vcd"}).session(a, b) as plan:
            plan.generate_fn(b, GREEDY, [], output_attentions=True)


def test_damro_family_defaults_and_runner(tiny_adapters, coco_images, tmp_path):
    a = tiny_adapters["tiny_instructblip"]
    iv = build_intervention({"name": "damro"})
    assert iv.resolved(a)["alpha"] == 0.5 and iv.resolved(a)["topk"] == 4
    assert iv.params()["alpha"] == 0.5 and iv.params()["topk"] == 4  # resolved values, never None
    assert build_intervention({"name": "damro"}).resolved(tiny_adapters["tiny_llava"])["topk"] == 10
    iv.setup(a)
    items = [Item(question_id=i, prompt=q, image_path=None) for i, q in enumerate(QUESTIONS[:2])]
    recs = answer_batch(a, iv, items, coco_images[:2], {"strategy": "greedy", "max_new_tokens": 5}, {"x": 1})
    assert [r["question_id"] for r in recs] == [0, 1] and all(isinstance(r["answer"], str) for r in recs)


def test_active_rows_describe_the_stacked_views(tiny_adapters, coco_images):
    from interventions.contrastive import active_rows

    a = tiny_adapters["tiny_llava"]
    b = _batch(a, coco_images, n=2)
    seen = []
    layer = a.decoder_layers()[0]
    h = layer.register_forward_hook(lambda mod, args, out: seen.append(active_rows()))
    try:
        _run(build_intervention({"name": "damro", "alpha": 1.0, "topk": 3}), a, b, {"strategy": "greedy",
                                                                                  "max_new_tokens": 2})
    finally:
        h.remove()
    assert active_rows() is None and seen and seen[0]["num_views"] == 2 and seen[0]["batch_size"] == 2
    n_img = (seen[0]["input_ids"] == a.image_token_id).sum(-1).tolist()
    assert n_img == [16, 16, 3, 3]  # the original views, then DAMRO's top-3 views
