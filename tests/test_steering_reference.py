"""VTI's released form as options: `combine: reference` directions and `site: mlp, mode: renorm` application.

The expected values are computed here from VTI's algorithm (github.com/shengliu66/VTI, vti_utils/):
`output_hidden_states` stacks, numpy float64 PCA with sklearn's `svd_flip` sign, its `reshape(n_tokens,
-1)` grouping, and `VTILayer`'s renormalisation; not from our builder's helpers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.hooks import forward_hooks
from interventions.base import build_intervention
from interventions.steering import build_from_config
from interventions.steering.apply import mlp_path
from interventions.steering.io import load_steering, save_steering
from interventions.steering.pairs import load_pairs
from interventions.steering.reference import pca_svd_flip
from interventions.steering.vti import build_vti

N_PAIRS = 3


def _model_cfg(name, adapter):
    return {"name": name, "tiny": name, "family": adapter.family, "tiny_seed": 0, "dtype": "float32"}


def _reference_cfg(out, **vti):
    # mask_ratio 1: every mask hides every patch, so the masked image is each image's channel mean
    return {"method": "vti", "out": str(out), "num_pairs": N_PAIRS, "combine": "reference",
            "vti": {"num_masks": 2, "mask_ratio": 1.0, "answer_separator": "", **vti}}


@pytest.fixture(scope="module")
def reference_vectors(tiny_adapters, tmp_path_factory):
    """combine=reference directions per tiny family: name -> (tensors, sidecar)."""
    root = tmp_path_factory.mktemp("vti_reference")
    out = {}
    for name, adapter in tiny_adapters.items():
        vision = not adapter.spec.steering_vision_unsupported  # dynamic-resolution families: text directions only
        build_from_config(_model_cfg(name, adapter), _reference_cfg(root / name, vision=vision), adapter=adapter)
        out[name] = load_steering(root / name)
    return out


# ---- VTI's algorithm, written independently ------------------------------------------------------
def _vti_pca(x: np.ndarray) -> np.ndarray:
    """VTI's PCA(n_components=1) on rows x [N, F] (float64): svd_flip-signed first component + mean."""
    mean = x.mean(0)
    u, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    sign = np.sign(u[np.argmax(np.abs(u[:, 0])), 0])
    return vt[0] * sign + mean


def _hidden_states(out):
    return out.hidden_states if getattr(out, "hidden_states", None) is not None else \
        out.language_model_outputs.hidden_states


@torch.no_grad()
def _vti_text(adapter, pairs, sep=""):
    rows = []
    for p in pairs:
        image = p.load_image()
        stacks = []
        for caption in (p.faithful, p.hallucinated):
            enc = adapter.processor(images=[image], text=[adapter.format_prompt(p.question) + sep + caption],
                                    return_tensors="pt", **adapter.spec.text_kwargs)  # Gemma 3: no second BOS
            hs = _hidden_states(adapter.model(**adapter.to_model(enc), output_hidden_states=True, use_cache=False))
            stacks.append(torch.stack([h[0, -1] for h in hs]).double().numpy())  # [L+1, D], [-1] after the norm
        rows.append((stacks[0] - stacks[1]).reshape(-1))  # obtain_textual_vti: pos.view(-1) - neg.view(-1)
    entries, width = stacks[0].shape
    return _vti_pca(np.stack(rows)).reshape(entries, width)[1:]


@torch.no_grad()
def _vti_vision(adapter, pairs):
    tower = adapter.site("vision_tower")
    rows = []
    for p in pairs:
        pv = adapter.processor(images=[p.load_image()], text=[adapter.format_prompt(p.question)],
                               return_tensors="pt")["pixel_values"].float()
        pv = pv.flatten(0, 1) if pv.dim() == 5 else pv  # LLaVA-NeXT: AnyRes tiles
        masked = pv.mean(dim=(2, 3), keepdim=True).expand_as(pv)  # every patch mean-filled
        clean = torch.stack(tower(pixel_values=pv, output_hidden_states=True).hidden_states)  # [L+1, tiles, T, D]
        hidden = torch.stack(tower(pixel_values=masked, output_hidden_states=True).hidden_states)
        diff = (hidden - clean).mean(1).double().numpy()  # [L+1, T, D], tiles averaged
        rows.append(diff.reshape(diff.shape[1], -1))  # VTI: h.reshape(n_tokens, -1), memory order
    fit = np.stack(rows, axis=1)  # [T, N, (L+1) * D]
    entries, tokens, width = diff.shape
    return np.stack([_vti_pca(group) for group in fit]).reshape(entries, tokens, width)[1:]


def _close(ours: torch.Tensor, theirs: np.ndarray) -> bool:
    return np.allclose(ours.double().numpy(), theirs, rtol=1e-4, atol=1e-5)


# ---- directions ----------------------------------------------------------------------------------
def test_pca_svd_flip_matches_numpy_and_sklearn_sign():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 7, generator=g)
    pc, mean = pca_svd_flip(x)
    for i in range(5):
        want = _vti_pca(x[i].double().numpy())
        assert np.allclose((pc[i] + mean[i]).double().numpy(), want, atol=1e-5)
        scores = (x[i] - mean[i]) @ pc[i]  # U's first column, up to its positive singular value
        assert scores[scores.abs().argmax()] > 0


def test_reference_directions_equal_vtis_algorithm(tiny_adapters, reference_vectors):
    pairs = load_pairs(limit=N_PAIRS)
    for name, adapter in tiny_adapters.items():
        tensors, side = reference_vectors[name]
        assert side["combine"] == "reference" and side["text_last"] == "final_norm"
        assert side["params"]["answer_separator"] == "" and side["scale"] is None
        text = torch.stack([tensors[f"text.{l}"] for l in range(adapter.num_layers)])
        assert _close(text, _vti_text(adapter, pairs)), name
        if adapter.spec.steering_vision_unsupported:
            assert not any(k.startswith("vision.") for k in tensors), name
            continue
        n_vis = len(adapter.site("vision_layers"))
        vision = torch.stack([tensors[f"vision.{l}"] for l in range(n_vis)])
        assert _close(vision, _vti_vision(adapter, pairs)), name


def test_reference_is_not_the_per_layer_pca(tiny_adapters, reference_vectors, tmp_path):
    adapter = tiny_adapters["tiny_llava"]
    cfg = _reference_cfg(tmp_path / "pca")
    cfg["combine"] = "pca"
    build_from_config(_model_cfg("tiny_llava", adapter), cfg, adapter=adapter)
    pca, side = load_steering(tmp_path / "pca")
    assert side["text_last"] == "block"  # the final-norm read is the reference's default only
    ref = reference_vectors["tiny_llava"][0]
    assert not torch.allclose(pca["text.0"], ref["text.0"], atol=1e-3)


def test_text_with_vision_lam_reads_text_under_vtis_visual_steering(tiny_adapters, reference_vectors, tmp_path):
    """VTI's run script adds its visual VTI layers before computing the text directions."""
    name = "tiny_llava"
    adapter = tiny_adapters[name]
    build_from_config(_model_cfg(name, adapter), _reference_cfg(tmp_path / "under", text_with_vision_lam=0.9),
                      adapter=adapter)
    under, side = load_steering(tmp_path / "under")
    assert side["text_with_vision_lam"] == 0.9
    plain = reference_vectors[name][0]
    assert all(torch.equal(under[f"vision.{l}"], plain[f"vision.{l}"]) for l in range(len(adapter.site("vision_layers"))))
    steer = build_intervention({"name": "steer", "vectors": str(tmp_path / "under"), "lam_text": 0.0,
                                "lam_vision": 0.9, "site": "mlp", "mode": "renorm"})
    steer.setup(adapter)
    with steer.session(adapter, None):
        want = _vti_text(adapter, load_pairs(limit=N_PAIRS))
    text = torch.stack([under[f"text.{l}"] for l in range(adapter.num_layers)])
    assert _close(text, want)
    assert not torch.allclose(text, torch.stack([plain[f"text.{l}"] for l in range(adapter.num_layers)]))


def test_reference_options_are_checked(tiny_adapters, tmp_path):
    adapter = tiny_adapters["tiny_llava"]
    pairs = load_pairs(limit=2)
    with pytest.raises(ValueError, match="steering.vti.text_last='last'"):
        build_vti(adapter, pairs, num_masks=1, text_last="last")
    with pytest.raises(ValueError, match="text_with_vision_lam needs both"):
        build_vti(adapter, pairs, num_masks=1, vision=False, text_with_vision_lam=0.9)
    with pytest.raises(ValueError, match="steering.combine='reference' for valse"):
        build_from_config(_model_cfg("tiny_llava", adapter), {"method": "valse", "out": str(tmp_path / "v"),
                                                              "combine": "reference"}, adapter=adapter)
    with pytest.raises(ValueError, match="at least 2 difference rows"):
        build_vti(adapter, pairs[:1], num_masks=1, combine="reference")


# ---- application ---------------------------------------------------------------------------------
def _vision_positions(adapter, images) -> int:
    """How many positions the first vision block outputs per image (crop) for this model's image size."""
    from interventions.steering import block_output

    got = {}

    def grab(module, args, out):
        got["n"] = block_output(out).shape[-2]

    batch = adapter.prepare(images[:1], ["Is there a dog?"])
    with forward_hooks(adapter.model, {f"{adapter.site_path('vision_layers')}.0": grab}), torch.inference_mode():
        adapter.model(**batch.inputs)
    return got["n"]


def _random_vectors(adapter, name, path, images):
    g = torch.Generator().manual_seed(1)
    width = adapter.model.config.vision_config.hidden_size
    n = _vision_positions(adapter, images)
    tensors = {f"text.{l}": torch.randn(64, generator=g) for l in range(adapter.num_layers)}
    tensors.update({f"vision.{l}": torch.randn(n, width, generator=g) for l in range(len(adapter.site("vision_layers")))})
    save_steering(path, tensors, {"method": "vti", "model": {"name": name, "family": adapter.family}})
    return tensors


def _mlp_out(adapter, batch, site, layer, steer=None):
    got = {}

    def grab(module, args, out):
        got["h"] = out.detach().clone()

    def run():
        with forward_hooks(adapter.model, {mlp_path(adapter, site, layer): grab}), torch.inference_mode():
            adapter.model(**batch.inputs)

    if steer is None:
        run()
    else:
        with steer.session(adapter, batch):
            run()
    return got["h"]


def _vti_layer(x, direction, lam):
    """VTILayer.forward with one direction, in float32 (VTI casts the result to fp16; our models are float32)."""
    norm = torch.norm(x.float(), dim=-1).unsqueeze(-1)
    y = lam * 1.0 * F.normalize(direction, dim=-1)
    return F.normalize(F.normalize(x.float(), dim=-1) + 0.1 * y, dim=-1) * norm


def test_renorm_at_the_mlp_equals_vtis_formula(tiny_adapters, coco_images, tmp_path):
    for name, adapter in tiny_adapters.items():
        tensors = _random_vectors(adapter, name, tmp_path / name, coco_images)
        batch = adapter.prepare(coco_images[:2], ["Please describe this image in detail.", "Is there a dog?"])
        vision_ok = not adapter.spec.steering_vision_unsupported  # no per-position vision directions there
        for kind, site, layer, kw in [("text", "decoder_layers", 1, {"lam_text": 0.8, "lam_vision": 0.0, "layers": [1]}),
                                      ("vision", "vision_layers", 0, {"lam_text": 0.0, "lam_vision": 0.9,
                                                                      "vision_layers": [0]})]:
            if kind == "vision" and not vision_ok:
                continue
            steer = build_intervention({"name": "steer", "vectors": str(tmp_path / name), "site": "mlp",
                                        "mode": "renorm", **kw})
            steer.setup(adapter)
            base = _mlp_out(adapter, batch, site, layer)
            steered = _mlp_out(adapter, batch, site, layer, steer)
            lam = kw["lam_text"] or kw["lam_vision"]
            want = _vti_layer(base, tensors[f"{kind}.{layer}"], lam)
            assert torch.equal(steered, want), (name, kind)
            assert not torch.allclose(steered, base), (name, kind)
            assert torch.allclose(steered.norm(dim=-1), base.norm(dim=-1), rtol=1e-5), (name, kind)


def test_renorm_strength_zero_is_the_baseline(tiny_adapters, coco_images, tmp_path):
    decoding = {"strategy": "greedy", "max_new_tokens": 6}
    for name, adapter in tiny_adapters.items():
        _random_vectors(adapter, name, tmp_path / name, coco_images)
        batch = adapter.prepare(coco_images[:2], ["Please describe this image in detail.", "Is there a dog?"])
        base = adapter.generate_ids(batch, decoding)
        steer = build_intervention({"name": "steer", "vectors": str(tmp_path / name), "lam": 0.0, "site": "mlp",
                                    "mode": "renorm"})
        steer.setup(adapter)
        with steer.session(adapter, batch):
            assert torch.equal(adapter.generate_ids(batch, decoding), base), name


def test_site_and_mode_are_checked(tiny_adapters, tmp_path):
    with pytest.raises(ValueError, match="intervention.site: expected one of block, mlp, got 'attn'"):
        build_intervention({"name": "steer", "vectors": "x", "site": "attn"})
    with pytest.raises(ValueError, match="intervention.mode: expected one of add, renorm, got 'mul'"):
        build_intervention({"name": "steer", "vectors": "x", "mode": "mul"})
    adapter = tiny_adapters["tiny_blip2"]
    assert mlp_path(adapter, "decoder_layers", 0).endswith("layers.0.fc2")  # OPT: the MLP ends in fc2
    assert mlp_path(adapter, "vision_layers", 0).endswith("layers.0.mlp")
