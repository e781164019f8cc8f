"""Relevancy maps (Chefer et al., "Generic Attention-model Explainability", ICCV 2021, as used by LVLM-Stethoscope).

- **decoder relevancy**: the gradient of answer token t's logit with respect to every attention matrix
  gives ``Ā = mean_heads((∇A ⊙ A)⁺)`` per layer; the decoder rollout ``R = Π_l (I + Ā_l)`` (R += Ā R,
  layer by layer) read at the predicting row gives the relevancy of every input position, kept on the
  image span. It is non-negative.
- **relevancy through the vision side**: LLaVA families roll the vision encoder out the same way
  (``R_ii``, per crop) and push the image-token relevancy back to the encoder's patches
  (``r_img · R_ii[patch rows, patches]``). BLIP families roll out the Q-Former (self-attention rule
  on queries, and the bi-modal rule ``R_qi += R̄_qqᵀ Ā_cross R̄_ii`` for its cross-attention, with the
  residual normalisation R̄ of Chefer et al.) and push the query-token relevancy to patches
  (``r_q · R_qi[:, patches]``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from harness.diagnosis.attention_capture import Captured
from harness.models.adapter import VLMAdapter


def gradcam(attn: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Ā = mean over heads of (∇A ⊙ A)⁺ : [batch, heads, q, k] -> [batch, q, k] (zeros without a gradient)."""
    a = attn.detach().float()
    if grad is None:
        return torch.zeros(a.shape[0], *a.shape[2:], device=a.device)
    return (grad.float() * a).clamp(min=0).mean(dim=1)


def rollout(cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """Self-attention rule R = Π (I + Ā_l) applied layer by layer (R += Ā R); cams are [batch, n, n]."""
    b, n = cams[0].shape[0], cams[0].shape[-1]
    R = torch.eye(n, device=cams[0].device).expand(b, n, n).clone()
    for cam in cams:
        R = R + cam @ R
    return R


def rollout_row(cams: Sequence[torch.Tensor], row: int) -> torch.Tensor:
    """Row ``row`` of the rollout of [n, n] cams without forming R: v ← v (I + Ā), last layer first."""
    n = cams[0].shape[-1]
    v = torch.zeros(n, device=cams[0].device)
    v[row] = 1.0
    for cam in reversed(list(cams)):
        v = v + v @ cam
    return v


def _normalize_residual(R: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s R̄: the non-identity part of R with unit row sums, plus the identity."""
    eye = torch.eye(R.shape[-1], device=R.device)
    S = (R - eye).clamp(min=0)
    S = S / S.sum(-1, keepdim=True).clamp(min=1e-12)
    return S + eye


def qformer_relevancy(self_cams: Sequence[torch.Tensor], cross_cams: Sequence[torch.Tensor],
                      has_cross: Sequence[bool], R_ii: torch.Tensor, num_queries: int) -> torch.Tensor:
    """[queries, 1 + patches] relevancy of the vision tokens for each Q-Former query (cams without batch dim)."""
    n = self_cams[0].shape[-1]
    R_qq = torch.eye(n, device=R_ii.device)
    R_qi = torch.zeros(n, R_ii.shape[-1], device=R_ii.device)
    crosses = iter(cross_cams)
    for cam, cross in zip(self_cams, has_cross):
        R_qq, R_qi = R_qq + cam @ R_qq, R_qi + cam @ R_qi
        if cross:
            c = next(crosses)  # [queries, 1 + patches]
            nq = c.shape[0]
            R_qi[:nq] = R_qi[:nq] + _normalize_residual(R_qq[:nq, :nq]).T @ c @ _normalize_residual(R_ii)
    return R_qi[:num_queries]


def answer_relevancy(adapter: VLMAdapter, cap: Captured, logits: torch.Tensor, answer_ids: list[int],
               positions: list[int], image_pos: torch.Tensor, geometry: dict):
    """Decoder relevancy [T, span] of the image tokens at `image_pos` (in order), its image share per token,
    and vision-side relevancy per view."""
    tensors = cap.decoder + cap.vision + cap.qformer_self + cap.qformer_cross
    nd, nv, nqs = len(cap.decoder), len(cap.vision), len(cap.qformer_self)
    has_cross = [getattr(layer, "has_cross_attention", False) for layer in adapter.site("qformer").encoder.layer] \
        if nqs else []
    rels, shares, patch_rows = [], [], []
    for t, (q, tok) in enumerate(zip(positions, answer_ids)):
        grads = torch.autograd.grad(logits[q, tok], tensors, retain_graph=True, allow_unused=True)
        dec_cams = [gradcam(a, g)[0] for a, g in zip(cap.decoder, grads[:nd])]
        v = rollout_row(dec_cams, q)
        r_img = v[image_pos.to(v.device)]
        others = v.sum() - v[q]
        shares.append(float(r_img.sum() / others) if others > 0 else 0.0)
        rels.append(r_img.cpu())
        if not nv:
            continue
        vit_cams = [gradcam(a, g) for a, g in zip(cap.vision, grads[nd:nd + nv])]  # [crops, N, N]
        R_ii = rollout(vit_cams)
        if geometry["kind"] == "queries" and nqs:
            self_cams = [gradcam(a, g)[0] for a, g in zip(cap.qformer_self, grads[nd + nv:nd + nv + nqs])]
            cross_cams = [gradcam(a, g)[0] for a, g in zip(cap.qformer_cross, grads[nd + nv + nqs:])]
            R_qi = qformer_relevancy(self_cams, cross_cams, has_cross, R_ii[0], geometry["n"])
            s = geometry["side"]
            patch_rows.append({"patches": (r_img @ R_qi[:, 1:]).reshape(s, s).cpu()})
        elif geometry["kind"] == "grid":
            off, s = geometry["vit_offset"], geometry["side"]
            r = r_img[geometry["skip"]:]
            if geometry.get("pool"):  # a token per k x k patches (Gemma 3's pool, InternVL's shuffle)
                patch_rows.append({"patches": pooled_vision_relevancy(r, R_ii[0], s, int(geometry["pool"]),
                                                                      off).cpu()})
            else:
                patch_rows.append({"patches": (r @ R_ii[0][off:off + r.numel(), 1:]).reshape(s, s).cpu()})
        elif geometry["kind"] == "anyres":
            patch_rows.append(_anyres_vision_relevancy(geometry, r_img, R_ii))
        elif geometry["kind"] == "tiles":
            patch_rows.append(_tiles_vision_relevancy(geometry, r_img, R_ii))
    patch_rel = {k: torch.stack([p[k] for p in patch_rows]) for k in (patch_rows[0] if patch_rows else {})}
    return torch.stack(rels), shares, patch_rel


def pooled_vision_relevancy(r: torch.Tensor, R: torch.Tensor, side: int, k: int, off: int) -> torch.Tensor:
    """[side, side] relevancy of a token grid average-pooled from (side*k)^2 patches: each token's relevancy
    spread over its k x k patches (the adjoint of the average pool, 1/k^2 each), pushed through the encoder
    rollout `R` (``off``: 1 skips a CLS row and column, 0 for encoders without one), summed back per token."""
    rp = r.view(side, 1, side, 1).expand(side, k, side, k).reshape(-1) / (k * k)
    return (rp @ R[off:, off:]).view(side, k, side, k).sum(dim=(1, 3))


def _anyres_vision_relevancy(g: dict, r_img: torch.Tensor, R_ii: torch.Tensor) -> dict:
    """AnyRes (LLaVA-NeXT, LLaVA-OneVision): push base-crop and tile-token relevancy through each crop's encoder
    rollout. ``vit_offset`` skips the encoder's CLS row and column (1; 0 for encoders without one); a tile grid
    shrunk by the model (OneVision's anyres_max) first spreads each token's relevancy over the unpadded cells
    it was interpolated from (the adjoint of the bilinear resize), and the patch relevancy is shown at the
    token grid again (the same resize)."""
    h, w, nph, npw, rows, cols = g["h"], g["w"], g["nph"], g["npw"], g["rows"], g["cols"]
    off = int(g.get("vit_offset", 1))
    base = (r_img[:h * w] @ R_ii[0][off:, off:]).reshape(h, w)
    tiles = r_img[h * w:].reshape(rows, cols + 1)[:, :cols]
    un = g["unpad"].to(r_img.device)
    shrunk = tuple(un.shape) != (rows, cols)
    if shrunk:
        tiles = _bilinear_adjoint(tiles, tuple(un.shape))
    padded = torch.zeros(nph * h * npw * w, device=r_img.device)
    padded[un.flatten()] = tiles.flatten()
    padded = padded.view(nph, h, npw, w)
    out = torch.zeros_like(padded)
    for i in range(nph):
        for j in range(npw):
            crop = 1 + i * npw + j
            if crop >= R_ii.shape[0]:
                continue
            out[i, :, j, :] = (padded[i, :, j, :].reshape(-1) @ R_ii[crop][off:, off:]).view(h, w)
    tiles_out = out.reshape(-1)[un.flatten()].view(un.shape)
    if shrunk:
        tiles_out = torch.nn.functional.interpolate(tiles_out[None, None], [rows, cols], mode="bilinear")[0, 0]
    return {"base": base.cpu(), "tiles": tiles_out.cpu()}


def _bilinear_adjoint(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Wᵀ v for the bilinear resize W of a ``size`` grid to ``values``' grid: each resized cell's value spread
    over the cells it was interpolated from, with their weights (totals are kept)."""
    x = torch.zeros(1, 1, *size, device=values.device, requires_grad=True)
    with torch.enable_grad():
        y = torch.nn.functional.interpolate(x, list(values.shape), mode="bilinear")
        (grad,) = torch.autograd.grad(y, x, grad_outputs=values.detach().float()[None, None])
    return grad[0, 0]


def _tiles_vision_relevancy(g: dict, r_img: torch.Tensor, R_ii: torch.Tensor) -> dict:
    """Idefics3 / SmolVLM: each tile (then the global image) is its own encoder pass (no CLS); a token is the
    pixel shuffle of a ``scale x scale`` patch block, whose patches share its relevancy equally. Each tile's patch
    relevancy (through its encoder rollout) is summed back over the blocks, shown at the token grids of the
    ``tiles`` and ``global`` views."""
    s, rows, cols, k = g["side"], g["rows"], g["cols"], g["scale"]
    tok = r_img.reshape(rows * cols + 1, s, s)
    out = []
    for t in range(tok.shape[0]):
        patches = tok[t].repeat_interleave(k, 0).repeat_interleave(k, 1).reshape(-1) / (k * k)
        pushed = (patches @ R_ii[t]).view(s, k, s, k).sum((1, 3)) if t < R_ii.shape[0] else torch.zeros(s, s)
        out.append(pushed.to(r_img.device))
    res = {}
    if rows * cols:
        res["tiles"] = torch.stack(out[:-1]).view(rows, cols, s, s).transpose(1, 2).reshape(rows * s, cols * s).cpu()
    res["global"] = out[-1].cpu()
    return res
