"""Run the OPERA reference (shikiw/OPERA's patched transformers 4.29.2) on the tiny LLaVA's exported language
model and prompts, and write the fixture tests/data/opera_reference.json (+ the prompts' inputs).

Runs in a SEPARATE venv with OPERA's own transformers copy (not this project's venv):

    python3 -m venv /tmp/opera-venv
    /tmp/opera-venv/bin/pip install torch==2.13.0 "tokenizers<0.14" "huggingface_hub<0.15" regex "numpy<2" \
        safetensors packaging pyyaml filelock requests tqdm
    git --git-dir=<mirror of github.com/shikiw/OPERA> archive HEAD transformers-4.29.2 | tar -x -C /tmp/opera-ref
    /tmp/opera-venv/bin/pip install --no-deps -e /tmp/opera-ref/transformers-4.29.2
    .venv/bin/python scripts/opera_reference_export.py --out /tmp/opera-export          # our venv
    /tmp/opera-venv/bin/python scripts/opera_reference_run.py --export /tmp/opera-export  # this script

What runs is the reference's own `generate(..., opera_decoding=True, key_position=..., output_attentions=True)`
-> `opera_beam_search`, on a 4.29 `LlamaForCausalLM` subclass that behaves as OPERA's LLaVA wrapper
(`minigpt4/models/llava_llama.py` + `llava_arch.py`): `generate` receives the prompt ids with the image as ONE
placeholder token (-200) and `images=` (here: the exported projected image features, 16 rows), the forward
splices them in on a prompt pass (first step and the rollback recomputation) and widens the attention mask, and
`prepare_inputs_for_generation` is LLaVA's. So the beam scorer sees the lengths the reference sees (prompt with
one placeholder + generated tokens), and the rollback takes the reference's `"images" in model_kwargs_ori` path.

Instrumentation: a COPY of `opera_beam_search`'s source (inspect.getsource, a few `str.replace` insertions,
exec'd in the module's namespace and bound to the subclass only; no file is changed) records each rollback
(decision step, position, restored step, rejected and chosen (beam, token) pairs) and each step's candidates,
penalized candidate scores and beam choice. The wrapper counts the prompt re-runs (one per rollback) as a check.
The final scores are read from `finalize`'s output: the reference cannot run with `return_dict_in_generate` and
`output_scores` (its state snapshot calls `.copy()` on the `beam_indices` tuple).

Found while making it: on this LLaVA path a rollback that restores response step 0 (rollback position 0, only
reachable when the hard-coded minimum location 10 is lowered) crashes the reference: the restored prompt has
one id fewer than the attention mask (`torch.ones` with a negative size), the bare `except` swallows it after the
state was already restored, and the next step fails on the attention history's width. None of these settings
gets there (the location is >= 10). `--try` runs other settings and only prints (and writes --debug).
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import textwrap
from pathlib import Path

import torch

torch.set_num_threads(1)

import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.generation import utils as gen_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TOKEN_INDEX = -200
REFERENCE_COMMIT = "61426efe4e2e53207f32d9112a86ba5f8364d1d9"  # github.com/shikiw/OPERA HEAD (2024-07-26)

#: the runs: name -> (generate kwargs, max_new_tokens). The README/chair_eval.py LLaVA-1.5 setting is
#: num_beams 5, scale_factor 50, threshold 15, num_attn_candidates 5, penalty_weights 1 (window_size 512: the
#: opera_beam_search default, generate() cannot pass another).
PAPER = {"num_beams": 5, "scale_factor": 50.0, "threshold": 15, "num_attn_candidates": 5, "penalty_weights": 1.0}
SETTINGS = {
    "paper": ({**PAPER}, 40),
    "penalty0": ({**PAPER, "penalty_weights": 0.0}, 40),
    # the tiny model's attention is near uniform: at the paper's scale every location is response column 0,
    # which the reference never rolls back to (`rollback_loc < 10`). At scale ~30 the float16 column scores
    # underflow to a few ulps for all but the last columns, so the location moves to late columns (>= 10), and
    # threshold 0 rolls back as soon as every beam's history holds it once.
    "rollback": ({**PAPER, "scale_factor": 32.0, "threshold": 0}, 16),
    "rollback_penalty0": ({**PAPER, "scale_factor": 30.0, "threshold": 0, "penalty_weights": 0.0}, 16),
    "rollback_late": ({**PAPER, "scale_factor": 35.0, "threshold": 0}, 24),
}

TRACE: dict = {}
_NS: dict = {}  # the globals of the instrumented copy


class TinyLlavaLM(LlamaForCausalLM):
    """A 4.29 Llama behaving as OPERA's LlavaLlamaForCausalLM with precomputed projected image features."""

    prompt_runs = 0

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, **kwargs):
        # minigpt4/models/llava_llama.py LlavaLlamaForCausalLM.prepare_inputs_for_generation
        if past_key_values:
            input_ids = input_ids[:, -1:]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update({"past_key_values": past_key_values, "use_cache": kwargs.get("use_cache"),
                             "attention_mask": attention_mask, "images": kwargs.get("images", None)})
        return model_inputs

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, images=None, return_dict=None):
        # minigpt4/models/llava_arch.py prepare_inputs_labels_for_multimodal (one image per row, no labels)
        if images is not None and input_ids is not None and input_ids.shape[1] != 1:
            TinyLlavaLM.prompt_runs += 1
            embed = self.model.embed_tokens
            rows = []
            for b, ids in enumerate(input_ids):
                at = int((ids == IMAGE_TOKEN_INDEX).nonzero().flatten()[0])
                rows.append(torch.cat([embed(ids[:at]), images[b], embed(ids[at + 1:])], dim=0))
            inputs_embeds = torch.stack(rows)
            if attention_mask is not None:
                extra = inputs_embeds.shape[1] - input_ids.shape[1]
                attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], extra), attention_mask],
                                           dim=1)
            input_ids = None
        elif past_key_values is not None and images is not None and input_ids.shape[1] == 1:
            attention_mask = torch.ones((attention_mask.shape[0], past_key_values[-1][-1].shape[-2] + 1),
                                        dtype=attention_mask.dtype, device=attention_mask.device)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=return_dict)


def _record_rollback(step, pos, cur_len, reject, vocab):
    TRACE["rollbacks"].append({"step": int(step), "position": int(pos), "restored": int(cur_len) - TRACE["p_ids"],
                               "rejected": [[int(x) // vocab, int(x) % vocab] for x in reject.flatten().tolist()]})


def _record_step(rolled, t, cand, beam_idx, tokens, n):
    cand_tokens, cand_scores, locs = cand
    base = torch.arange(0, beam_idx.shape[0], n).repeat_interleave(n)
    chosen = [[int(b), int(k)] for b, k in zip((beam_idx - base).tolist(), tokens.tolist())]
    TRACE["steps"].append({"t": int(t), "rolled": bool(rolled), "chosen": chosen,
                           "candidates": cand_tokens.tolist(), "scores": cand_scores.float().tolist(),
                           "locations": locs.tolist()})
    if rolled:
        TRACE["rollbacks"][-1]["chosen"] = chosen


def _record_final(sequence_outputs):
    TRACE["sequence_scores"] = sequence_outputs["sequence_scores"].tolist()


def instrumented_opera_beam_search():
    """A copy of the reference's opera_beam_search with recording calls inserted (the original is untouched)."""
    src = textwrap.dedent(inspect.getsource(gen_utils.GenerationMixin.opera_beam_search))
    edits = [
        ("current_state = {}\n", "current_state = {}; _rolled = False; _t_now = None\n"),
        ('current_state["candidate_token_scores"] = candidate_token_scores.clone()\n',
         'current_state["candidate_token_scores"] = candidate_token_scores.clone(); '
         '_t_now = cur_response_lens - 1; _cand = (candidate_tokens.clone(), candidate_token_scores.clone(), '
         'rollback_locs.mode().values.clone())\n'),
        ("reject_token_pos_gather[rollback_pos] = reject_token_pos\n",
         "reject_token_pos_gather[rollback_pos] = reject_token_pos; "
         "_record_rollback(_t_now, rollback_pos, cur_len, reject_token_pos, vocab_size); _rolled = True\n"),
        ('beam_idx = beam_outputs["next_beam_indices"]\n',
         'beam_idx = beam_outputs["next_beam_indices"]; '
         '_record_step(_rolled, _t_now, _cand, beam_idx, beam_next_tokens, num_beams)\n'),
        # the final scores: `return_dict_in_generate` with `output_scores` cannot run (`beam_indices.copy()` on a
        # tuple in the state snapshot), and without output_scores the scores are dropped, so read them here
        ("    if return_dict_in_generate:\n        if not output_scores:\n",
         "    _record_final(sequence_outputs)\n    if return_dict_in_generate:\n        if not output_scores:\n"),
    ]
    for old, new in edits:
        assert src.count(old) == 1, f"reference source changed: {old!r} occurs {src.count(old)} times"
        src = src.replace(old, new)
    src = src.replace("@torch.no_grad()\n", "")
    ns = _NS
    ns.update(vars(gen_utils))
    ns.update(_record_rollback=_record_rollback, _record_step=_record_step, _record_final=_record_final)
    exec(compile(src, "<instrumented opera_beam_search>", "exec"), ns)
    return ns["opera_beam_search"]


def load_lm(export: Path) -> TinyLlavaLM:
    cfg = LlamaConfig(**json.loads((export / "lm_config.json").read_text()))
    model = TinyLlavaLM(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(export / "lm.safetensors")), strict=False)
    assert not unexpected and all(k.endswith("rotary_emb.inv_freq") for k in missing), (missing, unexpected)
    return model.float().eval()


def run_one(model, ids, feats, key_position, meta, kw, max_new):
    TRACE.clear()
    TRACE.update(rollbacks=[], steps=[], p_ids=int(ids.shape[1]))
    TinyLlavaLM.prompt_runs = 0
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, use_cache=True, do_sample=False, num_beams=kw["num_beams"], max_new_tokens=max_new,
            pad_token_id=meta["pad_token_id"], bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
            images=feats, output_attentions=True,
            opera_decoding=True, key_position=key_position, scale_factor=kw["scale_factor"],
            threshold=kw["threshold"], num_attn_candidates=kw["num_attn_candidates"],
            penalty_weights=kw["penalty_weights"])
    assert TinyLlavaLM.prompt_runs == 1 + len(TRACE["rollbacks"]), (TinyLlavaLM.prompt_runs, TRACE["rollbacks"])
    new = out[0, ids.shape[1]:].tolist()
    while new and new[-1] == meta["pad_token_id"]:
        new.pop()
    return {"tokens": new, "sequence_score": float(TRACE["sequence_scores"][0]),
            "rollbacks": [dict(r) for r in TRACE["rollbacks"]], "steps": [dict(s) for s in TRACE["steps"]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", default="/tmp/opera-export")
    ap.add_argument("--fixture", default=str(ROOT / "tests" / "data" / "opera_reference.json"))
    ap.add_argument("--debug", default="/tmp/opera-export/reference_steps.json",
                    help="per-step candidates / scores / choices of every run (not part of the fixture)")
    ap.add_argument("--reference-commit", default=REFERENCE_COMMIT)
    ap.add_argument("--try", dest="trial", default=None,
                    help='JSON {name: [generate kwargs, max_new_tokens]} to run instead; prints, writes nothing')
    args = ap.parse_args(argv)
    settings = SETTINGS if args.trial is None else {k: tuple(v) for k, v in json.loads(args.trial).items()}
    assert transformers.__version__ == "4.29.2", transformers.__version__
    export = Path(args.export)
    meta = json.loads((export / "meta.json").read_text())
    inputs = load_file(str(export / "inputs.safetensors"))
    model = load_lm(export)
    TinyLlavaLM.opera_beam_search = instrumented_opera_beam_search()
    utils_file = Path(gen_utils.__file__)
    results, debug = {}, {}
    for name, (kw, max_new) in settings.items():
        results[name], debug[name] = [], []
        for i, kp in enumerate(meta["key_positions"]):
            ids, feats = inputs[f"reference_ids_{i}"], inputs[f"image_features_{i}"]
            # the wrapper's splice reproduces the exported merged prompt exactly
            with torch.no_grad():
                emb = model.model.embed_tokens(inputs[f"input_ids_{i}"])
                emb[:, kp["image_start"]:kp["image_end"] + 1] = feats
            assert torch.equal(emb, inputs[f"inputs_embeds_{i}"])
            r = run_one(model, ids, feats, kp, meta, kw, max_new)
            debug[name].append(r.pop("steps"))
            results[name].append(r)
            print(name, i, r["tokens"], round(r["sequence_score"], 6), [(x["step"], x["position"], x["restored"])
                                                                        for x in r["rollbacks"]], flush=True)
    if args.trial is not None:
        Path(args.debug).write_text(json.dumps(debug))
        return 0
    fixture = {
        "source": {"repository": "github.com/shikiw/OPERA", "commit": args.reference_commit,
                   "file": "transformers-4.29.2/src/transformers/generation/utils.py (opera_beam_search)",
                   "utils_sha256": hashlib.sha256(utils_file.read_bytes()).hexdigest(),
                   "transformers": transformers.__version__, "torch": torch.__version__,
                   "made_by": "scripts/opera_reference_export.py (our venv) then scripts/opera_reference_run.py "
                              "(transformers 4.29.2 venv); see their docstrings"},
        "model": "tiny_llava", "lm_fingerprint": meta["lm_fingerprint"], "question": meta["question"],
        "images": meta["images"], "key_positions": meta["key_positions"],
        "settings": {name: {**kw, "max_new_tokens": max_new, "window_size": 512, "rollback_min_location": 10,
                            "length_penalty": 1.0, "early_stopping": False}
                     for name, (kw, max_new) in SETTINGS.items()},
        "results": results,
    }
    Path(args.fixture).write_text(json.dumps(fixture, indent=1) + "\n")
    inputs_out = Path(args.fixture).with_name("opera_reference_inputs.safetensors")
    save_file({k: v for k, v in inputs.items() if k.startswith(("input_ids_", "inputs_embeds_"))}, str(inputs_out))
    Path(args.debug).write_text(json.dumps(debug))
    print("wrote", args.fixture, inputs_out, args.debug)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
