"""Latent steering: building VTI / VaLSe directions on every tiny family, the sidecar, and `intervention=steer`."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, TINY_MODELS, run_cli
from harness.models.families import family_for_tiny
from harness.hooks import forward_hooks
from interventions.base import build_intervention
from interventions.steering import (block_output, block_path, build_from_config, mask_patches,
                                    principal_direction, random_patch_mask)
from interventions.steering.io import load_steering, save_steering, steering_paths
from interventions.steering.pairs import DEFAULT_PAIRS, load_pairs, template_pairs

FAMILIES = {n: family_for_tiny(n).name for n in TINY_MODELS}
SMALL = {"num_pairs": 3, "vti": {"num_masks": 2, "mask_ratio": 0.5}, "valse": {"num_tokens": 2}}


def _model_cfg(name):
    return {"name": name, "tiny": name, "family": FAMILIES[name], "tiny_seed": 0, "dtype": "float32"}


@pytest.fixture(scope="module")
def vti_vectors(tiny_adapters, tmp_path_factory):
    """VTI directions (3 pairs, 2 masks) built once per tiny family: name -> (out stem, sidecar)."""
    root = tmp_path_factory.mktemp("steer")
    out = {}
    for name, adapter in tiny_adapters.items():
        # families without per-position visual directions (dynamic resolution) build text directions only
        vti = {**SMALL["vti"], "vision": not adapter.spec.steering_vision_unsupported}
        _, _, side = build_from_config(_model_cfg(name), {**SMALL, "vti": vti, "method": "vti",
                                                          "out": str(root / name)}, adapter=adapter)
        out[name] = (root / name, side)
    return out


@pytest.fixture(scope="module")
def random_vectors(vti_vectors, tmp_path_factory):
    """Unit-scale random directions with the built files' names, shapes and sidecars: name -> out stem.

    The exactness tests use these because built directions can be ~0 on tiny models (the tiny BLIP
    vision encoders barely depend on the pixels), which would make `steered - base == lam * d` vacuous.
    """
    root = tmp_path_factory.mktemp("steer_random")
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, (stem, _) in vti_vectors.items():
        tensors, side = load_steering(stem)
        rand = {k: torch.randn(v.shape, generator=g) for k, v in tensors.items()}
        save_steering(root / name, rand, {k: v for k, v in side.items() if k not in ("format", "layers", "shapes")})
        out[name] = root / name
    return out


# ---- data and helpers ----------------------------------------------------------------------
def test_shipped_pairs_are_templated_from_ground_truth():
    rows = [json.loads(l) for l in DEFAULT_PAIRS.read_text().splitlines()]
    assert rows == template_pairs()  # regenerable, documented in benchmarks/data/steering/README.md
    gt = json.loads((ROOT / "benchmarks/data/chair/imid_to_objects_lemma_pos.json").read_text())
    assert len(rows) == 6
    for r in rows:
        objects = gt[str(r["coco_id"])]
        assert all(o in r["faithful"] for o in objects)
        assert r["added_objects"] and not set(r["added_objects"]) & set(objects)
        assert all(o in r["hallucinated"] and o not in r["faithful"] for o in r["added_objects"])
    pairs = load_pairs(limit=3)
    assert len(pairs) == 3 and all(p.load_image().mode == "RGB" for p in pairs)


def test_pair_files_in_vti_format_load(tmp_path):
    row = {"id": "x", "image": "COCO_val2014_000000060623.jpg", "value": "a bowl", "h_value": "a bowl and a dog",
           "question": "Describe this image in detail.", "co_objects": ["dog"]}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    (pair,) = load_pairs(tmp_path / "p.jsonl")
    assert (pair.faithful, pair.hallucinated, pair.meta) == ("a bowl", "a bowl and a dog", {"co_objects": ["dog"]})
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "nope.jpg", "faithful": "a", "hallucinated": "b"}) + "\n")
    with pytest.raises(FileNotFoundError, match="steering.image_dir"):
        load_pairs(tmp_path / "bad.jsonl")


def test_principal_direction_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    coef = 2.0 + torch.rand(20, 1, generator=g)  # all positive: the mean points along d
    rows = coef * d + 0.01 * torch.randn(20, 16, generator=g)
    for combine in ("pca", "svd"):
        unit = principal_direction(rows, combine, "unit")
        assert torch.allclose(unit, d, atol=0.05), combine  # sign aligned with the mean difference
        scaled = principal_direction(rows, combine, "projection")
        assert torch.allclose(scaled, unit * (unit @ rows.mean(0)))
    assert torch.allclose(principal_direction(rows, "mean"), rows.mean(0))
    assert principal_direction(rows.reshape(20, 2, 8), "svd", "unit").shape == (2, 8)  # per slot
    with pytest.raises(ValueError, match="at least 2"):
        principal_direction(rows[:1], "pca")


def test_mask_patches_fills_chosen_patches_with_the_channel_mean():
    pv = torch.randn(2, 3, 28, 42)
    mask = random_patch_mask(2, (2, 3), 0.5, torch.Generator().manual_seed(0))
    assert mask.sum(dim=(1, 2)).tolist() == [3, 3]
    out = mask_patches(pv, mask, 14)
    for i in range(2):
        for r in range(2):
            for c in range(3):
                got = out[i, :, 14 * r:14 * r + 14, 14 * c:14 * c + 14]
                want = pv[i].mean(dim=(1, 2))[:, None, None].expand_as(got) if mask[i, r, c] else \
                    pv[i, :, 14 * r:14 * r + 14, 14 * c:14 * c + 14]
                assert torch.allclose(got, want)


# ---- building --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_vti_shapes_and_sidecar(name, tiny_adapters, vti_vectors, coco_images):
    adapter = tiny_adapters[name]
    stem, side = vti_vectors[name]
    tensors, sidecar = load_steering(stem)
    n_vis = len(adapter.site("vision_layers"))
    if adapter.spec.steering_vision_unsupported:  # text directions only, and vision ones refused with the reason
        assert set(tensors) == {f"text.{l}" for l in range(adapter.num_layers)} and sidecar["layers"]["vision"] == []
        assert float(tensors["text.3"].norm()) > 0 and sidecar["counts"]["text_rows"] == 3
        with pytest.raises(ValueError, match="steering.vti.vision: .*cannot be built .*patch grid"):
            build_from_config(_model_cfg(name), {**SMALL, "method": "vti", "out": str(stem) + "_v"}, adapter=adapter)
        return
    assert set(tensors) == {f"text.{l}" for l in range(adapter.num_layers)} | {f"vision.{l}" for l in range(n_vis)}
    assert all(tensors[f"text.{l}"].shape == (64,) for l in range(adapter.num_layers))
    shape = _vision_block_shape(adapter, coco_images)  # 4x4 patches, plus CLS where the encoder has one
    assert shape in ((17, 32), (16, 32)) and all(tensors[f"vision.{l}"].shape == shape for l in range(n_vis))
    assert sidecar == side
    assert sidecar["method"] == "vti" and sidecar["model"]["name"] == name
    assert sidecar["model"]["family"] == FAMILIES[name] and sidecar["model"]["tiny"] == name
    assert sidecar["layers"] == {"text": list(range(adapter.num_layers)), "vision": list(range(n_vis))}
    assert sidecar["hidden_size"] == {"text": 64, "vision": 32}
    assert sidecar["data"]["num_pairs"] == 3 and sidecar["data"]["file"] == str(DEFAULT_PAIRS.resolve())
    assert sidecar["counts"]["text_rows"] == 3 and sidecar["counts"]["vision_rows"] == 3
    assert sidecar["params"]["num_masks"] == 2 and sidecar["combine"] == "pca"
    assert sidecar["created"] and sidecar["harness_version"]
    assert torch.isfinite(torch.stack([t.norm() for t in tensors.values()])).all()
    assert float(tensors["text.3"].norm()) > 0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_valse_builds_text_directions(name, tiny_adapters, tmp_path):
    adapter = tiny_adapters[name]
    if adapter.spec.steering_vision_unsupported:  # VaLSe's text directions come from patch masks
        with pytest.raises(ValueError, match=f"steering.method=valse cannot run on model family {adapter.family!r}"):
            build_from_config(_model_cfg(name), {**SMALL, "method": "valse", "out": str(tmp_path / "v")},
                              adapter=adapter)
        return
    _, _, side = build_from_config(_model_cfg(name), {**SMALL, "method": "valse", "out": str(tmp_path / "v")},
                                   adapter=adapter)
    tensors, _ = load_steering(tmp_path / "v.safetensors")
    assert set(tensors) == {f"text.{l}" for l in range(adapter.num_layers)}
    assert all(t.shape == (64,) and torch.isfinite(t).all() for t in tensors.values())
    assert side["method"] == "valse" and side["combine"] == "svd" and side["layers"]["vision"] == []
    assert side["counts"]["tokens"] == side["counts"]["text_rows"] == 6  # 3 pairs x 2 tokens
    assert all({"pair", "token", "position", "llr"} <= set(t) for t in side["tokens"])


def test_build_rejects_unknown_method(tiny_adapters, tmp_path):
    with pytest.raises(ValueError, match="valid choices: vti, valse"):
        build_from_config(_model_cfg("tiny_llava"), {"method": "nope", "out": str(tmp_path / "x")},
                          adapter=tiny_adapters["tiny_llava"])


# ---- applying --------------------------------------------------------------------------------
def _steer(stem, **kw):
    return build_intervention({"name": "steer", "vectors": str(stem), **kw})


def _first_batch(adapter, coco_images):
    return adapter.prepare(coco_images[:2], ["Please describe this image in detail.", "Is there a dog?"])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lambda_zero_reproduces_the_baseline(name, tiny_adapters, vti_vectors, random_vectors, coco_images):
    adapter = tiny_adapters[name]
    batch = _first_batch(adapter, coco_images)
    decoding = {"strategy": "greedy", "max_new_tokens": 6}
    base = adapter.generate_ids(batch, decoding)
    steer = _steer(vti_vectors[name][0], lam=0.0)
    steer.setup(adapter)
    with steer.session(adapter, batch):
        same = adapter.generate_ids(batch, decoding)
    assert torch.equal(base, same)
    loud = _steer(random_vectors[name], lam=5.0)
    loud.setup(adapter)
    with loud.session(adapter, batch):
        with torch.inference_mode():
            steered = adapter.model(**batch.inputs).logits
    with torch.inference_mode():
        plain = adapter.model(**batch.inputs).logits
    assert not torch.allclose(steered, plain)  # the hooks were active inside the session
    assert torch.equal(adapter.model(**batch.inputs).logits.detach(), plain)  # and removed after it


def test_every_session_steers_the_same_whatever_the_hook_order(tiny_adapters, random_vectors, coco_images):
    """transformers 5 records `hidden_states` (LLaVA's projector input) with hooks it installs on the first
    forward that asks for them; steering must reach those recorders in the first session and in every later one."""
    from harness.models.loader import load_adapter

    for name, shared in tiny_adapters.items():  # every tiny family, new ones included
        adapter = load_adapter({"name": name, "tiny": name, "family": shared.family})  # no forward run yet
        batch = _first_batch(adapter, coco_images)
        steer = _steer(random_vectors[name], lam=1.0)
        steer.setup(adapter)
        runs = []
        for _ in range(2):  # the 1st registers before the recorders exist, the 2nd after
            with steer.session(adapter, batch), torch.inference_mode():
                runs.append(adapter.model(**batch.inputs).logits)
        with torch.inference_mode():
            plain = adapter.model(**batch.inputs).logits
        assert torch.equal(runs[0], runs[1]), f"{name}: {float((runs[0] - runs[1]).abs().max())}"
        assert not torch.allclose(runs[1], plain), name


def _block_out(adapter, batch, site, layer, intervention=None):
    got = {}

    def grab(module, args, out):
        got["h"] = block_output(out).detach().clone()

    def run():
        with forward_hooks(adapter.model, {block_path(adapter, site, layer): grab}), torch.inference_mode():
            adapter.model(**batch.inputs)

    if intervention is None:
        run()
    else:
        with intervention.session(adapter, batch):
            run()  # registered after the steering hook: sees the steered output
    return got["h"]


def _vision_block_shape(adapter, coco_images) -> tuple[int, int]:
    """(positions, hidden) of one crop's first vision-block output, measured on a forward pass."""
    return tuple(_block_out(adapter, adapter.prepare(coco_images[:1], ["x"]), "vision_layers", 0).shape[-2:])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_steered_block_output_is_baseline_plus_lam_direction(name, tiny_adapters, random_vectors, coco_images):
    adapter = tiny_adapters[name]
    stem = random_vectors[name]
    tensors, _ = load_steering(stem)
    batch = _first_batch(adapter, coco_images)

    text = _steer(stem, lam_text=0.7, lam_vision=0.0, layers=[1])
    text.setup(adapter)
    diff = _block_out(adapter, batch, "decoder_layers", 1, text) - _block_out(adapter, batch, "decoder_layers", 1)
    assert torch.allclose(diff, (0.7 * tensors["text.1"]).expand_as(diff), atol=1e-5)

    last = _steer(stem, lam_text=0.7, lam_vision=0.0, layers=[1], positions="last")
    last.setup(adapter)
    diff = _block_out(adapter, batch, "decoder_layers", 1, last) - _block_out(adapter, batch, "decoder_layers", 1)
    assert torch.allclose(diff[:, -1], (0.7 * tensors["text.1"]).expand_as(diff[:, -1]), atol=1e-5)
    assert torch.equal(diff[:, :-1], torch.zeros_like(diff[:, :-1]))

    vision = _steer(stem, lam=0.0, lam_vision=-1.5, vision_layers=[0])
    if adapter.spec.steering_vision_unsupported:  # its vectors hold no vision directions: a clear error
        with pytest.raises(KeyError, match=r"vision layers \[0\] are not in .*it has vision layers none"):
            vision.setup(adapter)
        return
    vision.setup(adapter)
    diff = _block_out(adapter, batch, "vision_layers", 0, vision) - _block_out(adapter, batch, "vision_layers", 0)
    assert diff.shape[-2:] == _vision_block_shape(adapter, coco_images)  # per position, every image / AnyRes tile
    assert torch.allclose(diff, (-1.5 * tensors["vision.0"]).expand_as(diff), atol=1e-5)


def test_family_and_shape_mismatches_are_clear_errors(tiny_adapters, vti_vectors, tmp_path):
    with pytest.raises(ValueError, match="built for model family 'llava'.*family 'blip2'"):
        _steer(vti_vectors["tiny_llava"][0]).setup(tiny_adapters["tiny_blip2"])
    tensors, side = load_steering(vti_vectors["tiny_llava"][0])
    bad = {**tensors, "text.0": torch.zeros(48)}
    save_steering(tmp_path / "bad", bad, {k: v for k, v in side.items() if k not in ("format", "layers", "shapes")})
    with pytest.raises(ValueError, match=r"text.0 .* has shape \[48\]"):
        _steer(tmp_path / "bad").setup(tiny_adapters["tiny_llava"])
    with pytest.raises(KeyError, match="text layers \\[9\\] are not in"):
        _steer(vti_vectors["tiny_llava"][0], layers=[9]).setup(tiny_adapters["tiny_llava"])
    with pytest.raises(ValueError, match="intervention.vectors is required"):
        build_intervention({"name": "steer"}).setup(tiny_adapters["tiny_llava"])
    with pytest.raises(FileNotFoundError, match="halluc-bench-build-steering"):
        _steer(tmp_path / "missing").setup(tiny_adapters["tiny_llava"])
    with pytest.raises(ValueError, match="positions"):
        _steer(tmp_path / "x", positions="first")


def test_params_fingerprint_the_vectors_file(vti_vectors):
    stem = vti_vectors["tiny_llava"][0]
    p = _steer(stem, lam=0.5).params()
    assert p["lam"] == 0.5 and len(p["vectors_sha256"]) == 12
    assert _steer(steering_paths(stem)[0]).params()["vectors_sha256"] == p["vectors_sha256"]
    assert "vectors=tiny_llava" in _steer(stem, lam=0.5).label()


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_script_then_run_py_with_steer(tmp_path):
    out = tmp_path / "vec"
    proc = run_cli(["scripts/build_steering.py", "model=tiny_llava", "steering.method=vti", f"steering.out={out}",
                    "steering.num_pairs=3", "steering.vti.num_masks=2", "run.num_threads=1",
                    "steering.combine=reference", 'steering.vti.answer_separator=""',
                    f"hydra.run.dir={tmp_path / 'build'}"])
    assert "written:" in proc.stdout and "intervention.site=mlp intervention.mode=renorm" in proc.stdout
    side = json.loads((tmp_path / "vec.json").read_text())
    assert side["model"]["name"] == "tiny_llava" and side["data"]["num_pairs"] == 3
    assert (side["combine"], side["text_last"], side["answer_separator"]) == ("reference", "final_norm", "")
    assert (tmp_path / "vec.safetensors").exists()
    # `python run.py model=tiny_llava intervention=steer intervention.vectors=OUT ...`, composed in-process
    # (same config and job code as the CLI; saves a second interpreter start on a loaded machine)
    from hydra import compose, initialize_config_dir

    from harness.pipeline import run_job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llava", "intervention=steer", f"intervention.vectors={out}", "intervention.lam=0.8",
            "intervention.site=mlp", "intervention.mode=renorm",
            "benchmark=smoke", "run.limit=4", f"results_store={tmp_path / 'r.jsonl'}"])
    scores = run_job(cfg, run_dir)
    assert scores["n"] == 4
    records = [json.loads(l) for l in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert len(records) == 4
    params = records[0]["fingerprint"]["intervention"]["params"]
    assert params["vectors_sha256"] and (params["site"], params["mode"]) == ("mlp", "renorm")
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["intervention"] == "steer"
