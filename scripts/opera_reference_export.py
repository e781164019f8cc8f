"""Export the tiny LLaVA's language model and two prompts for the OPERA reference run (our venv).

The reference (github.com/shikiw/OPERA, `transformers-4.29.2/src/transformers/generation/utils.py`
`opera_beam_search`) needs transformers 4.29.2, so it runs in a second venv on what this script writes:

* `lm_config.json`, `lm.safetensors`: the Llama text model of `tiny_llava` under transformers 4.29 names
  (`model.embed_tokens.weight`, `model.layers.N...`, `model.norm.weight`, `lm_head.weight`), float32 tensors only;
* `inputs.safetensors`: per item i `input_ids_i` (our prompt ids, the 16 `<image>` tokens expanded),
  `inputs_embeds_i` (the merged prompt embeddings the language model receives: CLIP + projector features at the
  image positions), `image_features_i` (those 16 rows) and `reference_ids_i` (the prompt as OPERA's
  `minigpt4/models/llava.py` hands it to `generate`: the image run collapsed to ONE placeholder -200);
* `meta.json`: the images, the question, the weights fingerprint (`lm_fingerprint`) and per item the reference's
  `key_position` as `llava.py` defines it: image_start = index of the first image token (bos + the text
  before the image), image_end = image_start + 15 (inclusive), response_start = the expanded prompt length.

Usage: .venv/bin/python scripts/opera_reference_export.py [--out /tmp/opera-export]
Then /tmp/opera-venv/bin/python scripts/opera_reference_run.py --export /tmp/opera-export (see that script).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Please describe this image in detail."  # chair_eval.py's question
N_ITEMS = 2
REFERENCE_IMAGE_TOKEN = -200  # minigpt4/models/llava.py IMAGE_TOKEN_INDEX


def shipped_images() -> list[tuple[str, object]]:
    """(file name, RGB image) of the first N_ITEMS shipped COCO images, in file-name order."""
    from PIL import Image

    from benchmarks.base import DATA_DIR

    paths = sorted((DATA_DIR / "images").glob("*.jpg"))[:N_ITEMS]
    return [(p.name, Image.open(p).convert("RGB")) for p in paths]


def lm_state_dict(adapter) -> dict[str, torch.Tensor]:
    """The Llama text model + lm_head of a LLaVA adapter under transformers 4.29 LlamaForCausalLM names."""
    out = {}
    for name, t in adapter.model.state_dict().items():
        if name.startswith("model.language_model."):
            out["model." + name[len("model.language_model."):]] = t
        elif name == "lm_head.weight":
            out[name] = t
    return {k: v.detach().float().contiguous().clone() for k, v in sorted(out.items())}


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, shapes and float32 bytes of a state dict (exact: weights come from a seed)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().float().contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def lm_config(adapter) -> dict:
    """transformers 4.29 LlamaConfig kwargs of the text model (MHA, rope theta 10000, no attention bias)."""
    c = adapter.model.config.text_config
    rope = getattr(c, "rope_parameters", None) or {}
    assert rope.get("rope_type", "default") == "default" and float(rope.get("rope_theta", 10000.0)) == 10000.0, rope
    assert c.num_key_value_heads == c.num_attention_heads and not c.attention_bias and not c.mlp_bias
    assert c.head_dim * c.num_attention_heads == c.hidden_size
    return {k: getattr(c, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "hidden_act", "max_position_embeddings",
                                        "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
                                        "tie_word_embeddings")}


def prompt_inputs(adapter, images) -> list[dict]:
    """Per item (batch 1, as the reference runs): prompt ids, merged inputs_embeds, image span, reference ids."""
    lm = adapter.model.model.language_model
    image_id = adapter.model.config.image_token_id
    items = []
    for _, img in images:
        b = adapter.prepare([img], [QUESTION])
        seen = {}

        def grab(module, args, kwargs):
            seen["embeds"] = kwargs["inputs_embeds"].detach().float().clone()

        handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.inference_mode():
                adapter.model(**b.inputs, return_dict=True)
        finally:
            handle.remove()
        ids = b.inputs["input_ids"]
        assert ids.shape[0] == 1 and bool(b.inputs["attention_mask"].all()), "one unpadded prompt expected"
        span = (ids[0] == image_id).nonzero().flatten()
        start, end = int(span[0]), int(span[-1])
        assert end - start + 1 == span.numel(), "one contiguous image run expected"
        ref_ids = torch.cat([ids[0, :start], ids.new_tensor([REFERENCE_IMAGE_TOKEN]), ids[0, end + 1:]])[None]
        items.append({
            "input_ids": ids.clone(), "inputs_embeds": seen["embeds"],
            "image_features": seen["embeds"][:, start:end + 1].clone(), "reference_ids": ref_ids,
            # minigpt4/models/llava.py: image_start = len(tokens_before) + 1 (bos), image_end = that + N - 1,
            # response_start = len(input_ids with one placeholder) + N - 1 = the expanded prompt length
            "key_position": {"image_start": start, "image_end": end, "response_start": int(ids.shape[1])},
        })
    return items


def load_tiny_llava():
    """The tiny LLaVA adapter as the tests load it (eager attention)."""
    from harness.models.families import family_for_tiny
    from harness.models.loader import load_adapter

    return load_adapter({"name": "tiny_llava", "tiny": "tiny_llava", "family": family_for_tiny("tiny_llava").name,
                         "attn_implementation": "eager"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/opera-export")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = load_tiny_llava()
    state = lm_state_dict(adapter)
    save_file(state, str(out / "lm.safetensors"))
    (out / "lm_config.json").write_text(json.dumps(lm_config(adapter), indent=1))
    images = shipped_images()
    items = prompt_inputs(adapter, images)
    tensors = {}
    for i, it in enumerate(items):
        for k in ("input_ids", "inputs_embeds", "image_features", "reference_ids"):
            tensors[f"{k}_{i}"] = it[k].contiguous()
    save_file(tensors, str(out / "inputs.safetensors"))
    meta = {"question": QUESTION, "images": [n for n, _ in images], "lm_fingerprint": fingerprint(state),
            "eos_token_id": adapter.tokenizer.eos_token_id, "pad_token_id": adapter.tokenizer.pad_token_id,
            "bos_token_id": adapter.tokenizer.bos_token_id,
            "key_positions": [it["key_position"] for it in items]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
