"""VaLSe: Vision-aware Latent Steering (our reimplementation from the paper).

Paper: Boxu Chen, Ziwei Zheng, Le Yang, Zeyu Geng, Zhengyu Zhao, Chenhao Lin, Chao Shen, "Seeing It
or Not? Interpretable Vision-aware Latent Steering to Mitigate Object Hallucinations" (2025,
arXiv:2505.17812). The paper's abstract links github.com/Ziwei-Zheng/VaLSe, but no code from it was
available to us: this module follows the paper's description only, simplified where noted, and is
not a port of the authors' code. Treat its numbers as "VaLSe-style", not as the paper's method.

Pipeline per pair (image I, question T, answer y = the pair's faithful caption, teacher-forced):

1. Visually sensitive tokens: LLR(y_t) = log p(y_t | y_<t, I, T) - log p(y_t | y_<t, I~, T) with
   I~ a noise image (standard Gaussian pixel values); keep the `num_tokens` answer tokens with the
   largest LLR (optionally only those above `min_llr`).
2. Visual contribution map of each kept token: gradient x attention relevancy over the image tokens,
   R[p] = sum over vision blocks of mean over heads and query rows of relu(dlog p(y_t)/dA * A)[:, p],
   where A are the vision encoder's self-attention maps and p its patch tokens (CLS dropped where there is
   one: CLIP, BLIP; SigLIP has none). We take the *vision encoder's* patch tokens because in the
   Q-Former families (BLIP-2, InstructBLIP) the language model's image tokens are learned queries without
   a spatial layout; the gradient is that of the language model's token log-probability, so the map still
   reflects what the answer uses. (LLaVA-NeXT, LLaVA-OneVision: one map per AnyRes crop.)
3. Vision-guided masking: positive image = the `mask_ratio` fraction of *lowest*-contribution
   patches masked (keeps the top), negative image = the same fraction of *highest*-contribution
   patches masked (drops the top); masked patches are filled with the image's channel mean.
4. Hidden states: each decoder block's output at the position that predicts y_t, with the positive
   and with the negative image; difference row = positive - negative.

Per decoder layer, the direction is the top singular vector of the difference matrix E = X+ - X-
(`combine: svd`, uncentred, as the paper's E_l = U S V^T), sign-aligned with the mean difference and
scaled by the mean's projection on it; applied as x_l <- x_l + lam * v_l (interventions/steer.py).

Omitted from the paper: its artifact decontamination of spurious high-norm activations, and any
generation of the answer by the model itself (we teacher-force the pair's faithful caption, which on
the tiny random test models is the only meaningful answer).
"""
from __future__ import annotations

from typing import Any

import torch

from interventions.steering import (COMBINES, answer_text, capture_blocks, encode, mask_patches, patch_grid,
                                    patch_size, principal_direction)


def _attention_module(block: torch.nn.Module) -> torch.nn.Module:
    for name in ("self_attn", "attention", "attn"):
        mod = getattr(block, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise KeyError(f"no self-attention module found in vision block {type(block).__name__}")


def answer_start(adapter: Any, image: Any, question: str, answer_inputs: dict) -> int:
    """Index of the first answer token: the common prefix of prompt-only and prompt+answer ids."""
    prompt_ids = encode(adapter, image, adapter.format_prompt(question))["input_ids"][0]
    full = answer_inputs["input_ids"][0]
    n = min(len(prompt_ids), len(full))
    same = (prompt_ids[:n] == full[:n]).long()
    start = int(same.cumprod(0).sum())
    if start >= len(full):
        raise ValueError("the answer adds no tokens after the prompt")
    return max(start, 1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
    """log p(ids[t] | ids[<t]) for t in [start, len) from logits [1, S, V]."""
    logp = torch.log_softmax(logits[0, start - 1:-1].float(), dim=-1)
    return logp.gather(-1, ids[0, start:].unsqueeze(-1)).squeeze(-1)


def select_tokens(llr: torch.Tensor, ids: torch.Tensor, special: set, num_tokens: int,
                  min_llr: float | None) -> list[int]:
    """Offsets (into the answer) of the `num_tokens` non-special tokens with the largest LLR."""
    order = torch.argsort(llr, descending=True).tolist()
    keep = [i for i in order if int(ids[i]) not in special and (min_llr is None or float(llr[i]) > min_llr)]
    return keep[:num_tokens]


def contribution_maps(adapter: Any, inputs: dict, positions: list[int], grid: tuple[int, int]) -> torch.Tensor:
    """Gradient x attention relevancy [tokens, views, rows, cols] of the vision patches for each answer position.

    `positions` are sequence indices t of answer tokens; the gradient is of log p(ids[t] | ids[<t]).
    """
    blocks = adapter.site("vision_layers")
    attn: list[torch.Tensor] = []

    def hook(module, args, out):
        weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        if weights is None:
            raise RuntimeError("VaLSe needs the vision encoder's attention weights: load the model with "
                               "model.attn_implementation=eager")
        attn.append(weights)

    handles = [_attention_module(b).register_forward_hook(hook) for b in blocks]
    try:
        with torch.enable_grad():
            logits = adapter.model(**inputs, use_cache=False).logits
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            maps = []
            for t in positions:
                target = logp[t - 1, inputs["input_ids"][0, t]]
                grads = torch.autograd.grad(target, attn, retain_graph=True, allow_unused=True)
                rel = None
                for a, g in zip(attn, grads):
                    if g is None:
                        continue  # a block the answer does not depend on (LLaVA's last vision block)
                    r = torch.relu(g.float() * a.float()).mean(dim=(1, 2))  # [views, tokens]: heads, queries
                    rel = r if rel is None else rel + r
                if rel is None:
                    rel = torch.zeros(attn[0].shape[0], attn[0].shape[-1])
                lead = rel.shape[-1] - grid[0] * grid[1]  # a CLS token before the patches (CLIP, BLIP); none (SigLIP)
                if lead not in (0, 1):
                    raise ValueError(f"vision encoder has {rel.shape[-1]} tokens, expected a "
                                     f"{grid[0]}x{grid[1]} patch grid (plus CLS where it has one)")
                rel = rel[:, lead:]
                maps.append(rel.detach().cpu().reshape(-1, *grid))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps)


def guided_masks(relevance: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) bool masks [views, rows, cols]: mask the lowest / the highest `ratio` of patches."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"steering.valse.mask_ratio={ratio} must be in (0, 1)")
    views, rows, cols = relevance.shape
    flat = relevance.reshape(views, -1)
    k = max(1, int(round(ratio * flat.shape[1])))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    pos = torch.zeros_like(flat, dtype=torch.bool)
    neg = torch.zeros_like(flat, dtype=torch.bool)
    pos.scatter_(1, order[:, -k:], True)  # the least contributing patches
    neg.scatter_(1, order[:, :k], True)  # the most contributing patches
    return pos.reshape(views, rows, cols), neg.reshape(views, rows, cols)


@torch.no_grad()
def _states_at(adapter: Any, inputs: dict, positions: list[int], layers: list[int]) -> torch.Tensor:
    with capture_blocks(adapter, "decoder_layers", layers) as got:
        adapter.model(**inputs, use_cache=False)
    return torch.stack([got[l][0, positions].float() for l in layers], dim=1)  # [positions, L, D]


def build_valse(adapter: Any, pairs: list, num_tokens: int = 3, mask_ratio: float = 0.5,
                min_llr: float | None = None, seed: int = 0, combine: str = "svd",
                scale: str = "projection") -> tuple[dict, dict]:
    """VaLSe-style text directions ({'text.<l>': [D]}, info for the sidecar)."""
    if adapter.spec.steering_vision_unsupported:
        raise ValueError(f"steering.method=valse cannot run on model family {adapter.family!r}: "
                         f"{adapter.spec.steering_vision_unsupported}")
    if int(num_tokens) < 1:
        raise ValueError(f"steering.valse.num_tokens={num_tokens} must be >= 1")
    if combine not in COMBINES:
        raise ValueError(f"steering.combine={combine!r} for valse; valid choices: {', '.join(COMBINES)} "
                         "(`reference` is VTI's released computation, steering.method=vti)")
    generator = torch.Generator().manual_seed(int(seed))
    patch = patch_size(adapter)
    layers = list(range(adapter.num_layers))
    special = set(adapter.tokenizer.all_special_ids) | {adapter.image_token_id}
    rows, chosen, flat_maps = [], [], 0
    for pair in pairs:
        image = pair.load_image()
        inputs = encode(adapter, image, answer_text(adapter, pair.question, pair.faithful))
        ids = inputs["input_ids"]
        start = answer_start(adapter, image, pair.question, inputs)
        pv = inputs["pixel_values"]
        grid = patch_grid(pv, patch)
        with torch.no_grad():
            real = token_logprobs(adapter.model(**inputs, use_cache=False).logits, ids, start)
            noise = torch.randn(pv.shape, generator=generator).to(pv.device, pv.dtype)
            noisy = token_logprobs(adapter.model(**{**inputs, "pixel_values": noise}, use_cache=False).logits, ids, start)
        llr = (real - noisy).cpu()
        offsets = select_tokens(llr, ids[0, start:].cpu(), special, int(num_tokens), min_llr)
        if not offsets:
            continue
        positions = [start + o for o in offsets]
        maps = contribution_maps(adapter, inputs, positions, grid)  # [k, views, rows, cols]
        for t, o, rel in zip(positions, offsets, maps):
            flat_maps += int(float(rel.abs().sum()) == 0.0)
            pos_mask, neg_mask = guided_masks(rel, float(mask_ratio))
            lead = pv.shape[:-3]
            pos_pv = mask_patches(pv, pos_mask.reshape(*lead, *grid), patch)
            neg_pv = mask_patches(pv, neg_mask.reshape(*lead, *grid), patch)
            h_pos = _states_at(adapter, {**inputs, "pixel_values": pos_pv}, [t - 1], layers)[0]
            h_neg = _states_at(adapter, {**inputs, "pixel_values": neg_pv}, [t - 1], layers)[0]
            rows.append((h_pos - h_neg).cpu())
            chosen.append({"pair": pair.id, "token": adapter.tokenizer.decode([int(ids[0, t])]).strip(),
                           "position": t, "llr": round(float(llr[o]), 6)})
    if len(rows) < 2:
        raise ValueError(f"VaLSe selected {len(rows)} token(s) in {len(pairs)} pairs; need at least 2 "
                         "(use more pairs, a larger num_tokens, or a lower min_llr)")
    direction = principal_direction(torch.stack(rows), combine, scale)  # [L, D]
    tensors = {f"text.{l}": direction[l] for l in layers}
    info = {"combine": combine, "scale": scale,
            "counts": {"pairs": len(pairs), "text_rows": len(rows), "tokens": len(chosen),
                       "positive_llr": sum(c["llr"] > 0 for c in chosen), "flat_maps": flat_maps},
            "tokens": chosen,
            "directions": {"text": "keep-top-contribution image - drop-top-contribution image, at the "
                                   "position predicting each selected token"},
            "reference": "Chen et al. 2025, arXiv:2505.17812 (our reimplementation; no author code used)"}
    return tensors, info
