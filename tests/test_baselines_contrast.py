"""The baseline mitigation methods pai, icd, m3id and dola on the tiny models: off = baseline on every family,
first-step scores against independent computations of the reference formulas, batch 4 = batch 1, refusals."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_MODELS

from interventions.base import build_intervention
from interventions.dola import candidate_layers, dola_scores
from interventions.icd import disturbed_prompts
from interventions.m3id import m3id_weight
from interventions.pai import amplify_scores

torch.set_num_threads(1)

QUESTIONS = ["Is there a dog in the image?", "Please describe this image in detail.",
             "What is on the table?", "Is there a car?"]
GREEDY = {"strategy": "greedy", "max_new_tokens": 8}
ONE = {"strategy": "greedy", "max_new_tokens": 1}
OFF = {"pai": {"alpha": 0.0, "gamma": 1.0}, "icd": {"alpha": 0.0}, "m3id": {"lam": 0.0}, "dola": {"layers": None}}
ON = {"pai": {"alpha": 0.5, "gamma": 1.5}, "icd": {"alpha": 1.0}, "m3id": {"lam": 0.5}, "dola": {"layers": "high"}}


def _generate(iv, a, b, decoding, processors=None, **kw):
    with iv.session(a, b) as plan:
        if plan.generate_fn is not None:
            return plan.generate_fn(b, decoding, [*plan.logits_processors, *(processors or [])], **kw)
        return a.generate_ids(b, decoding, [*plan.logits_processors, *(processors or [])], **kw)


def _make(name, a, **cfg):
    iv = build_intervention({"name": name, **cfg})
    iv.setup(a)
    return iv


def _row(a, b, i):
    """Row i of a batch without its left padding (a plain single-row forward's inputs)."""
    keep = b.inputs["attention_mask"][i].bool()
    row = {k: v[i:i + 1] for k, v in b.inputs.items()}
    row["input_ids"], row["attention_mask"] = row["input_ids"][:, keep], row["attention_mask"][:, keep]
    return row


def _text_only(a, row):
    """The row's prompt ids with every image token removed (the references' no-image prompt)."""
    ids = row["input_ids"][0]
    ids = ids[ids != a.image_token_id][None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _Recorder:
    """A logits processor that keeps the scores it sees."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.clone())
        return scores


# ---- off = baseline, every family ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("method", ["pai", "icd", "m3id", "dola"])
def test_off_reproduces_baseline(tiny_adapters, coco_images, name, method):
    a = tiny_adapters[name]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    base = a.generate_ids(b, GREEDY)
    assert torch.equal(_generate(_make(method, a, **OFF[method]), a, b, GREEDY), base)
    assert not torch.equal(_generate(_make(method, a, **ON[method]), a, b, GREEDY), base)


def test_m3id_lam0_through_the_engine_and_pai_alpha0_edit_are_exact(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    sampled = {"strategy": "sample", "max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
               "repetition_penalty": 1.3}
    torch.manual_seed(3)
    base = a.generate_ids(b, sampled)
    torch.manual_seed(3)
    assert torch.equal(_generate(_make("m3id", a, lam=0.0), a, b, sampled), base)  # raw logits, same processors
    s = torch.randn(2, 4, 3, 7)
    assert torch.equal(amplify_scores(s, torch.ones(2, 1, 1, 7, dtype=torch.bool), 0.0), s)


# ---- first-step scores against the reference formulas -------------------------------------------------------
def _pai_reference_attention(alpha, layers, spans, state):
    """PAI attention.py `llama_new_forward` math as an attention function: logits + mask, clamp, then the last row's
    image span becomes |w| * alpha + w in the amplified layers (when state['on']), fp32 softmax."""
    from interventions.attention_fn import repeat_kv

    def fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        n_rep = module.num_key_value_groups
        k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
        w = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
            w = torch.max(w, torch.tensor(torch.finfo(w.dtype).min))
        if state["on"] and module.layer_idx in layers:
            s, e = spans[0]
            w[:, :, -1, s:e] = w[:, :, -1, s:e].abs() * alpha + w[:, :, -1, s:e]
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w

    return fn


@pytest.mark.parametrize("name,skip_prefill", [("tiny_llava", False), ("tiny_llava_onevision", False),
                                               ("tiny_llava", True)])
def test_pai_first_step_equals_reference_formula(tiny_adapters, coco_images, name, skip_prefill):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    a = tiny_adapters[name]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    alpha, gamma = 2.0, 1.5
    iv = _make("pai", a, alpha=alpha, gamma=gamma, start_layer=1, reference_cfg_prefill=skip_prefill)
    rec = _Recorder()
    tok = _generate(iv, a, b, ONE, [rec])[:, 0]
    layers = set(range(1, a.num_layers))
    spans, state = [None], {"on": True}
    AttentionInterface.register("test_pai_ref", _pai_reference_attention(alpha, layers, spans, state))
    AttentionMaskInterface.register("test_pai_ref", eager_mask)
    config = a.decoder_layers()[0].get_submodule(a.site_path("attention")).config
    saved = config._attn_implementation
    config._attn_implementation_internal = "test_pai_ref"
    try:
        exp = []
        with torch.inference_mode():
            for i in range(3):
                row = _row(a, b, i)
                spans[0] = a.image_spans(row["input_ids"])[0]
                state["on"] = not skip_prefill  # the reference's use_cfg flag is still set at the prefill
                lp = torch.log_softmax(a.model(**row).logits[0, -1].float(), -1)
                state["on"] = False
                lu = torch.log_softmax(a.spec.language_model(a)(**_text_only(a, row)).logits[0, -1].float(), -1)
                cutoff = torch.log(torch.tensor(0.1)) + lp.max()
                exp.append((gamma * (lp - lu) + lu).masked_fill(lp < cutoff, -math.inf))
    finally:
        config._attn_implementation_internal = saved
    exp = torch.stack(exp)
    got = rec.scores[0]
    assert torch.equal(torch.isfinite(got), torch.isfinite(exp))
    fin = torch.isfinite(exp)
    assert torch.allclose(got[fin], exp[fin], atol=1e-4, rtol=1e-4)
    assert torch.equal(tok, exp.argmax(-1))


def _vcd_formula(lo, lc, alpha, beta):
    """(1 + a) lo - a lc, -inf where softmax(lo) < beta * max softmax(lo)."""
    p = torch.softmax(lo, -1)
    return ((1 + alpha) * lo - alpha * lc).masked_fill(p < beta * p.max(-1, keepdim=True).values, -math.inf)


def _assert_scores(got, exp, tok):
    assert torch.equal(torch.isfinite(got), torch.isfinite(exp))
    fin = torch.isfinite(exp)
    assert torch.allclose(got[fin], exp[fin], atol=1e-4, rtol=1e-4)
    assert torch.equal(tok, exp.argmax(-1))


def test_icd_system_first_step_equals_reference_formula(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    iv = _make("icd", a, alpha=1.0, beta=0.1)
    assert iv.params()["placement"] == "system"
    rec = _Recorder()
    tok = _generate(iv, a, b, ONE, [rec])[:, 0]
    text = iv.cfg["prompts"][iv.cfg["prompt_index"]]
    exp = []
    with torch.inference_mode():
        for i, q in enumerate(QUESTIONS[:3]):
            row = _row(a, b, i)
            lo = a.model(**row).logits[0, -1].float()
            msgs = [{"role": "system", "content": [{"type": "text", "text": text}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            prompt = a.processor.apply_chat_template(msgs, add_generation_prompt=True)
            assert prompt.startswith(text) and q in prompt
            dis = a.to_model(a.processor(images=[coco_images[i]], text=[prompt], return_tensors="pt"))
            lc = a.model(**dis).logits[0, -1].float()
            exp.append(_vcd_formula(lo, lc, 1.0, 0.1))
    _assert_scores(rec.scores[0], torch.stack(exp), tok)


def _lavis_pre_caption(text):
    """LAVIS BlipCaptionProcessor.pre_caption as the ICD scripts' txt_processors["eval"] runs it (max 50 words)."""
    import re

    text = re.sub(r"\s{2,}", " ", re.sub(r"([.!\"()*#:;~])", " ", text.lower())).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:50])


@pytest.mark.parametrize("with_question,qformer_text", [(False, "blip_caption"), (True, "blip_caption"),
                                                        (False, "raw"), (True, "raw")])
def test_icd_qformer_first_step_equals_reference_formula(tiny_adapters, coco_images, with_question, qformer_text):
    a = tiny_adapters["tiny_instructblip"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    iv = _make("icd", a, alpha=1.0, beta=0.1, qformer_with_question=with_question, qformer_text=qformer_text)
    assert iv.params()["placement"] == "qformer"
    rec = _Recorder()
    tok = _generate(iv, a, b, ONE, [rec])[:, 0]
    text = iv.cfg["prompts"][iv.cfg["prompt_index"]]
    qtok = a.processor.qformer_tokenizer
    exp = []
    with torch.inference_mode():
        for i, q in enumerate(QUESTIONS[:2]):
            row = _row(a, b, i)
            lo = a.model(**row).logits[0, -1].float()
            qtext = text + q if with_question else text
            if qformer_text == "blip_caption":
                qtext = _lavis_pre_caption(qtext)
                assert qtext != (text + q if with_question else text) and qtext == qtext.lower()
            enc = qtok([qtext], return_tensors="pt")
            dis = {**row, "qformer_input_ids": enc["input_ids"], "qformer_attention_mask": enc["attention_mask"]}
            lc = a.model(**dis).logits[0, -1].float()
            exp.append(_vcd_formula(lo, lc, 1.0, 0.1))
    _assert_scores(rec.scores[0], torch.stack(exp), tok)


def test_icd_refuses_qformer_and_system_where_they_do_not_apply(tiny_adapters):
    with pytest.raises(ValueError, match="icd placement=qformer cannot run on model family 'llava'"):
        _make("icd", tiny_adapters["tiny_llava"], placement="qformer")
    blip2 = tiny_adapters["tiny_blip2"]
    assert _make("icd", blip2).params()["placement"] == "question"
    iv = _make("icd", blip2, placement="system")
    with pytest.raises(ValueError, match="model family 'blip2' uses the prompt template .* no 'USER:'"):
        disturbed_prompts(blip2, ["Is there a dog?"], iv.disturbance(), "system")


def _m3id_reference(lo, lu_logits, w, beta, gate):
    """M3ID written out: the paper's s = l_c + w (l_c - l_u) (log-probs), the paper's gate (correct only when
    max p_c < gate), AvisC's plausibility cut on the raw logits."""
    lc, lu = torch.log_softmax(lo, -1), torch.log_softmax(lu_logits, -1)
    s = lc + w * (lc - lu) if gate is None or lc.max().exp() < gate else lc.clone()
    if beta is not None:
        s[lo < math.log(beta) + lo.max()] = -float("inf")
    return s


@pytest.mark.parametrize("name,opts", [
    ("tiny_llava", {"t_start": 1, "beta": None, "confidence_gate": None}),  # the paper's equation alone
    ("tiny_instructblip", {"t_start": 1, "beta": None, "confidence_gate": None}),
    ("tiny_llava", {"t_start": 0, "beta": 0.1, "confidence_gate": None}),  # AvisC's defaults
    ("tiny_llava", {"t_start": 1, "beta": 0.2, "confidence_gate": "split"}),  # the paper's gate
])
def test_m3id_first_steps_equal_paper_formula(tiny_adapters, coco_images, name, opts):
    a = tiny_adapters[name]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    lam = 0.7
    if opts["confidence_gate"] == "split":  # a gate between the rows' first-step max probabilities
        with torch.inference_mode():
            top = sorted(float(torch.softmax(a.model(**_row(a, b, i)).logits[0, -1].float(), -1).max())
                         for i in range(3))
        opts = {**opts, "confidence_gate": (top[0] + top[-1]) / 2}
    rec = _Recorder()
    ids = _generate(_make("m3id", a, lam=lam, **opts), a, b, {"strategy": "greedy", "max_new_tokens": 2}, [rec])
    gated = []
    for step in range(2):
        t = opts["t_start"] + step
        w = (1 - math.exp(-lam * t)) / math.exp(-lam * t)
        assert math.isclose(m3id_weight(lam, t), w, rel_tol=1e-12)
        exp = []
        with torch.inference_mode():
            for i in range(3):
                row = _row(a, b, i)
                text = _text_only(a, row)
                if step:
                    tok = ids[i:i + 1, :1]
                    row = {**row, "input_ids": torch.cat([row["input_ids"], tok], 1),
                           "attention_mask": torch.cat([row["attention_mask"], torch.ones_like(tok)], 1)}
                    text = {"input_ids": torch.cat([text["input_ids"], tok], 1),
                            "attention_mask": torch.cat([text["attention_mask"], torch.ones_like(tok)], 1)}
                lo = a.model(**row).logits[0, -1].float()
                lu = a.spec.language_model(a)(**text).logits[0, -1].float()
                exp.append(_m3id_reference(lo, lu, w, opts["beta"], opts["confidence_gate"]))
                if opts["confidence_gate"] is not None:
                    gated.append(bool(torch.softmax(lo, -1).max() >= opts["confidence_gate"]))
        exp = torch.stack(exp)
        finite = torch.isfinite(exp)
        assert torch.equal(torch.isfinite(rec.scores[step]), finite)
        assert torch.allclose(rec.scores[step][finite], exp[finite], atol=1e-4, rtol=1e-4)
        assert torch.equal(ids[:, step], exp.argmax(-1))
    if opts["confidence_gate"] is not None:
        assert any(gated) and not all(gated)  # the gate both keeps and skips the correction here


def _dola_reference(final, prem, relative_top):
    """DoLa from its definition: JS divergence with sums (argmax-equivalent to transformers' means), the
    relative-top filter on probabilities, log p_final - log p_premature."""
    p = torch.softmax(final, -1)
    js = []
    for q in prem:
        q = torch.softmax(q, -1)
        m = 0.5 * (p + q)
        js.append(0.5 * ((m * (m.log() - p.log())).sum() + (m * (m.log() - q.log())).sum()))
    base = prem[int(torch.stack(js).argmax())]
    lp, lb = torch.log_softmax(final, -1), torch.log_softmax(base, -1)
    low = p < relative_top * p.max()
    return (lp - lb.masked_fill(low, -1e-3)).masked_fill(low, -math.inf)


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_blip2"])
@pytest.mark.parametrize("final_norm", [True, False])
def test_dola_first_step_equals_reference_formula(tiny_adapters, coco_images, name, final_norm):
    a = tiny_adapters[name]
    b = a.prepare(coco_images[:3], QUESTIONS[:3])
    layers = [0, 1, 2]
    iv = _make("dola", a, layers=layers, repetition_penalty=1.2, final_norm=final_norm)
    rec = _Recorder()
    tok = _generate(iv, a, b, ONE, [rec])[:, 0]
    norm, head = a.site("final_norm"), a.site("lm_head")
    exp = []
    with torch.inference_mode():
        for i in range(3):
            row = _row(a, b, i)
            out = a.model(**row, output_hidden_states=True)
            lm_out = out.language_model_outputs if hasattr(out, "language_model_outputs") else out  # BLIP-2: nested
            hs = lm_out.hidden_states
            prem = [head(norm(hs[j][0, -1]) if final_norm else hs[j][0, -1]).float() for j in layers]
            s = _dola_reference(out.logits[0, -1].float(), prem, 0.1)
            # the repetition penalty on the prompt's tokens as `generate` passes them (left padding included)
            seen = torch.unique(b.inputs["input_ids"][i])
            g = s[seen]
            s[seen] = torch.where(g < 0, g * 1.2, g / 1.2)
            exp.append(s)
    _assert_scores(rec.scores[0], torch.stack(exp), tok)


def test_dola_candidate_layers_follow_transformers():
    assert candidate_layers("high", 32, False) == list(range(16, 32, 2))
    assert candidate_layers("low", 32, False) == list(range(0, 16, 2))
    assert candidate_layers("low", 32, True) == list(range(2, 16, 2))
    assert candidate_layers("high", 48, False) == list(range(28, 48, 2))
    assert candidate_layers("low", 48, True) == list(range(2, 20, 2))
    assert candidate_layers("low", 4, True) == [2]
    assert candidate_layers([0, 3, 40], 32, False) == [0, 3]
    with pytest.raises(ValueError, match="dola.layers='middle'"):
        candidate_layers("middle", 32, False)


def test_dola_batch_mean_picks_one_layer_per_batch():
    torch.manual_seed(0)
    final, prem = torch.randn(5, 40), torch.randn(3, 5, 40) * 3
    _, per_row = dola_scores(final, prem, 0.1)
    _, shared = dola_scores(final, prem, 0.1, batch_mean=True)
    assert len(set(shared.tolist())) == 1 and len(set(per_row.tolist())) > 1


# ---- batch 4 = batch 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,name", [("pai", "tiny_llava_next"), ("pai", "tiny_blip2"),
                                         ("icd", "tiny_llava_onevision"), ("icd", "tiny_instructblip"),
                                         ("m3id", "tiny_llava_next"), ("m3id", "tiny_blip2"),
                                         ("dola", "tiny_llava_onevision"), ("dola", "tiny_instructblip")])
def test_batch4_equals_batch1(tiny_adapters, coco_images, method, name):
    a = tiny_adapters[name]
    iv = _make(method, a, **ON[method])
    pad = a.tokenizer.pad_token_id

    def rows(ids):
        out = []
        for r in ids.tolist():
            while r and r[-1] == pad:
                r.pop()
            out.append(r)
        return out

    full = rows(_generate(iv, a, a.prepare(coco_images[:4], QUESTIONS), GREEDY))
    alone = [rows(_generate(iv, a, a.prepare([coco_images[i]], [QUESTIONS[i]]), GREEDY))[0] for i in range(4)]
    assert full == alone


# ---- composition ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dola", "icd", "pai"])
def test_composes_with_head_guide(tiny_adapters, coco_images, method):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    alone = _generate(_make(method, a, **ON[method]), a, b, GREEDY)

    def compose(alpha):
        iv = build_intervention({"name": "compose", "members": [{"name": "head_guide", "alpha": alpha},
                                                                 {"name": method, **ON[method]}]})
        iv.setup(a)
        return _generate(iv, a, b, GREEDY)

    assert torch.equal(compose(0.0), alone)
    assert not torch.equal(compose(20.0), alone)


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_bad_layers_and_beam_search_are_clear_errors(tiny_adapters, coco_images):
    a = tiny_adapters["tiny_llava"]
    with pytest.raises(ValueError, match=r"pai.start_layer=2, end_layer=9: need 0 <= start_layer < end_layer <= 4"):
        _make("pai", a, end_layer=9)
    with pytest.raises(ValueError, match=r"dola.layers=\[-1\]"):
        _make("dola", a, layers=[-1])
    b = a.prepare(coco_images[:1], QUESTIONS[:1])
    beam = {"strategy": "beam", "num_beams": 2, "max_new_tokens": 4}
    for method in ("pai", "icd", "m3id", "dola"):
        with pytest.raises(NotImplementedError, match="not beam search"):
            _generate(_make(method, a, **ON[method]), a, b, beam)
    # PAI without the guidance is plain generate with the attention edit: beam search works
    assert _generate(_make("pai", a, alpha=0.5, gamma=1.0), a, b, beam).shape[0] == 1


# ---- 16 greedy tokens against a cache-free reference loop --------------------------------------------------------
def _extend(inputs, tokens):
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens], dtype=inputs["input_ids"].dtype)], 1)
    return {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _reference_greedy(a, step_scores, n):
    """Greedy tokens of a reference formula recomputed from full forwards (no cache) at every step."""
    eos = a.spec.language_model(a).generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for step in range(n):
        tok = int(step_scores(out, step).argmax())
        out.append(tok)
        if tok in eos:
            break
    return out


@pytest.mark.parametrize("method", ["icd", "m3id", "dola"])
def test_16_greedy_tokens_equal_reference_loop(tiny_adapters, coco_images, method):
    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    cfg = {"icd": {"alpha": 1.0}, "m3id": {"lam": 0.3}, "dola": {"layers": [0, 2], "repetition_penalty": 1.2}}[method]
    # m3id: the config's defaults otherwise (AvisC's: t from 0, plausibility cut beta = 0.1, no gate)
    iv = _make(method, a, **cfg)
    got = _generate(iv, a, b, {"strategy": "greedy", "max_new_tokens": 16})
    lm = a.spec.language_model(a)
    for i in range(2):
        row = _row(a, b, i)
        text = iv.cfg["prompts"][iv.cfg["prompt_index"]] if method == "icd" else None
        if method == "icd":
            msgs = [{"role": "system", "content": [{"type": "text", "text": text}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i]}]}]
            prompt = a.processor.apply_chat_template(msgs, add_generation_prompt=True)
            other = a.to_model(a.processor(images=[coco_images[i]], text=[prompt], return_tensors="pt"))
        else:
            other = _text_only(a, row)

        def scores(toks, step):
            with torch.inference_mode():
                out = a.model(**_extend(row, toks), output_hidden_states=True)
                lo = out.logits[0, -1].float()
                if method == "icd":
                    return _vcd_formula(lo, a.model(**_extend(other, toks)).logits[0, -1].float(), 1.0, 0.1)
                if method == "m3id":
                    lu = lm(**_extend(other, toks)).logits[0, -1].float()
                    return _m3id_reference(lo, lu, math.exp(0.3 * step) - 1, 0.1, None)
                norm, head = a.site("final_norm"), a.site("lm_head")
                prem = [head(norm(out.hidden_states[j][0, -1])).float() for j in (0, 2)]
                s = _dola_reference(lo, prem, 0.1)
                seen = torch.unique(torch.cat([b.inputs["input_ids"][i], torch.tensor(toks, dtype=torch.long)]))
                g = s[seen]
                s[seen] = torch.where(g < 0, g * 1.2, g / 1.2)
                return s

        ref = _reference_greedy(a, scores, 16)
        assert got[i, :len(ref)].tolist() == ref


def test_pai_16_greedy_tokens_equal_reference_loop(tiny_adapters, coco_images):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    a = tiny_adapters["tiny_llava"]
    b = a.prepare(coco_images[:2], QUESTIONS[:2])
    alpha, gamma = 3.0, 1.5
    got = _generate(_make("pai", a, alpha=alpha, gamma=gamma, start_layer=1), a, b,
                    {"strategy": "greedy", "max_new_tokens": 16})
    spans, state = [None], {"on": True}
    AttentionInterface.register("test_pai_ref", _pai_reference_attention(alpha, set(range(1, a.num_layers)), spans,
                                                                         state))
    AttentionMaskInterface.register("test_pai_ref", eager_mask)
    config = a.decoder_layers()[0].get_submodule(a.site_path("attention")).config
    saved = config._attn_implementation
    config._attn_implementation_internal = "test_pai_ref"
    try:
        for i in range(2):
            row = _row(a, b, i)
            spans[0] = a.image_spans(row["input_ids"])[0]
            text = _text_only(a, row)

            caches = {}

            def forward(key, inputs, toks):
                # as the reference's generate + CFGLogits: each prompt keeps its own KV cache, so every generated
                # token's keys/values were computed when it was the (amplified) last row
                if not toks:
                    out = (a.model if key == "cond" else a.spec.language_model(a))(**inputs, use_cache=True)
                else:
                    n = inputs["input_ids"].shape[1] + len(toks)
                    out = a.spec.language_model(a)(input_ids=torch.tensor([[toks[-1]]]), cache=caches[key],
                                                   attention_mask=torch.ones(1, n, dtype=torch.long),
                                                   use_cache=True)
                caches[key] = out.cache
                return torch.log_softmax(out.logits[0, -1].float(), -1)

            def scores(toks, step):
                with torch.inference_mode():
                    state["on"] = True
                    lp = forward("cond", row, toks)
                    state["on"] = False
                    lu = forward("uncond", text, toks)
                cutoff = torch.log(torch.tensor(0.1)) + lp.max()
                return (gamma * (lp - lu) + lu).masked_fill(lp < cutoff, -math.inf)

            ref = _reference_greedy(a, scores, 16)
            assert got[i, :len(ref)].tolist() == ref
    finally:
        config._attn_implementation_internal = saved


# ---- the run entry point -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pai", "icd", "m3id", "dola"])
def test_smoke_run_in_process(tmp_path, method):
    """`python run.py intervention=<method> benchmark=smoke` (two items, in-process), its parameters recorded."""
    import json

    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from harness.pipeline import run_job

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"intervention={method}", "benchmark=smoke", "run.limit=2",
                                                       f"results_store={tmp_path / 'results.jsonl'}"])
    scores = run_job(cfg, tmp_path)
    recs = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert scores["n"] == len(recs) > 0 and all(isinstance(r["answer"], str) for r in recs)
    params = recs[0]["fingerprint"]["intervention"]["params"]
    assert recs[0]["fingerprint"]["intervention"]["name"] == method
    # per-model defaults are resolved: a parameter is None only where the config sets null on purpose
    assert all(cfg.intervention[k] is None for k, v in params.items() if v is None)
