"""Latent steering: shift decoder / vision hidden states by lam * direction during generation (VTI, VaLSe).

    halluc-bench-build-steering model=llava15_7b steering.method=vti steering.out=outputs/steering/llava_vti
    python run.py model=llava15_7b intervention=steer intervention.vectors=outputs/steering/llava_vti \
        intervention.lam_text=0.8 intervention.lam_vision=0.9 benchmark=chair

Directions (interventions/steering/: `vti` = Liu et al. 2024, arXiv:2410.15778; `valse` = Chen et al.
2025, arXiv:2505.17812, our reimplementation) are stored as `<vectors>.safetensors` + `<vectors>.json`.
While a batch is generated, forward hooks change, for each steered layer l,
- `site: block` (default): the output of block l (the residual stream);
  `site: mlp`: the output of block l's MLP, before the residual add (VTI's released code);
- `mode: add` (default): `h + lam * d`;
  `mode: renorm`: `normalize(normalize(h) + 0.1 * lam * normalize(d)) * |h|` (VTI's `VTILayer`);
with `lam_text` for decoder blocks (`text.<l>`) at every position (`positions: all`) or only the last
position of each forward call (`positions: last`: the last prompt token at prefill, then each new
token), and `lam_vision` for vision encoder blocks (`vision.<l>`), per token position when the
direction is [positions, hidden] (every image / AnyRes tile gets the same per-position shift).
LLaVA reads its penultimate vision block (`vision_feature_layer: -2`), so steering the last vision
block changes nothing there.

VTI's own form is `site=mlp mode=renorm` on vectors built with `steering.combine=reference`; the
paper's lambdas (0.8 text, 0.9 vision on LLaVA-1.5) are on that scale only: with `mode: add` the same
lam moves the model far more (tiny_llava, reference vectors from the 6 shipped pairs, lam_text=0.8:
largest logit change 0.83 added to block outputs, 0.03 in VTI's form). The default
stays `block` + `add`, which is the form both papers write (an additive shift of the latent states,
VaLSe's x_l + lam * v_l) and the one VaLSe vectors are built for; with `scale: projection` directions
lam=1 shifts by the average contrast. Vectors built with `combine=reference` and applied in another
form log a note.

`lam_text` / `lam_vision` default to `lam`; a modality whose lam is 0 adds no hook at all, so lam=0
reproduces the baseline exactly. `layers` / `vision_layers`: which of the file's layers to steer
(null: all in the file). The file's model family must match the model's, and shapes must match its
hidden sizes. The hooks exist only inside the session, and run before any other hook on their
modules (`prepend`), so transformers' lazily installed `hidden_states` recorders (LLaVA's projector
input) always see the steered values, whatever the batch order.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from harness.hooks import forward_hooks
from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.steering.apply import MODES, POSITIONS, SITES, check_choice, steering_hooks

log = logging.getLogger("halluc_bench")


@INTERVENTIONS.register("steer")
class Steer(Intervention):
    """Shift decoder and/or vision hidden states by lam * direction (directions from halluc-bench-build-steering)."""

    name = "steer"
    strength_key = "lam"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.positions = check_choice("intervention.positions", self.cfg["positions"], POSITIONS)
        self.site = check_choice("intervention.site", self.cfg["site"], SITES)
        self.mode = check_choice("intervention.mode", self.cfg["mode"], MODES)
        self.lam_text = self._lam("lam_text")
        self.lam_vision = self._lam("lam_vision")
        self._hooks: dict = {}
        self._ready = False
        self.sidecar: dict = {}

    def _lam(self, key: str) -> float:
        value = self.cfg.get(key)
        if value is None:
            value = self.cfg["lam"]
        return float(value)

    def params(self) -> dict:
        """The config parameters plus the SHA-256 (12 hex) of the vectors file, so rebuilt vectors change fingerprints."""
        p = super().params()
        if self.cfg.get("vectors"):
            from interventions.steering.io import steering_paths

            st_path, _ = steering_paths(self.cfg["vectors"])
            if st_path.exists():
                from interventions.steering import file_sha256

                p["vectors_sha256"] = file_sha256(st_path)[:12]
        return p

    def label(self) -> str:
        """A short label: the set parameters, the vectors by file name (full path and hash stay in params)."""
        p = {k: v for k, v in self.params().items() if v is not None and k != "vectors_sha256"}
        if p.get("vectors"):
            p["vectors"] = Path(str(p["vectors"])).name
        return self.name + (" " + ", ".join(f"{k}={v}" for k, v in p.items()) if p else "")

    def setup(self, adapter: Any) -> None:
        """Load the vectors, check family, shapes and sites, and prepare the hooks (lam folded in)."""
        from interventions.steering import text_hidden_size, vision_hidden_size
        from interventions.steering.io import load_steering, parse_name

        vectors = self.cfg.get("vectors")
        if not vectors:
            raise ValueError("intervention.vectors is required: the path of directions built with "
                             "`halluc-bench-build-steering model=... steering.out=PATH`")
        tensors, sidecar = load_steering(vectors)
        self.sidecar = sidecar
        built = sidecar.get("model") or {}
        if built.get("family") != adapter.family:
            raise ValueError(f"steering vectors {vectors} were built for model family {built.get('family')!r} "
                             f"(model {built.get('name')!r}) but the model {adapter.name!r} is family "
                             f"{adapter.family!r}; build vectors for this model with halluc-bench-build-steering")
        if built.get("name") and built.get("name") != adapter.name:
            log.warning("steering vectors %s were built on model %r, applying them to %r", vectors,
                        built.get("name"), adapter.name)
        by_kind: dict[str, dict[int, torch.Tensor]] = {"text": {}, "vision": {}}
        for name, t in tensors.items():
            kind, layer = parse_name(name)
            by_kind[kind][layer] = t
        if sidecar.get("combine") == "reference" and (self.site, self.mode) != ("mlp", "renorm"):
            log.info("steering vectors %s follow VTI's released code (combine=reference), which applies them with "
                     "intervention.site=mlp intervention.mode=renorm; applying with site=%s mode=%s",
                     vectors, self.site, self.mode)
        hooks: dict = {}
        plans = [("text", self.cfg.get("layers"), self.lam_text, text_hidden_size(adapter)),
                 ("vision", self.cfg.get("vision_layers"), self.lam_vision, vision_hidden_size(adapter))]
        for kind, wanted, lam, width in plans:
            available = by_kind[kind]
            layers = sorted(available) if wanted is None else [int(l) for l in wanted]
            missing = [l for l in layers if l not in available]
            if missing:
                raise KeyError(f"{kind} layers {missing} are not in {vectors} (it has {kind} layers "
                               f"{sorted(available) or 'none'})")
            for l in layers:
                t = available[l]
                if t.shape[-1] != width or t.dim() not in ((1,) if kind == "text" else (1, 2)):
                    want = f"[{width}]" if kind == "text" else f"[{width}] or [positions, {width}]"
                    raise ValueError(f"{kind}.{l} in {vectors} has shape {list(t.shape)}; model {adapter.name!r} "
                                     f"needs {want}")
            hooks.update(steering_hooks(adapter, kind, {l: available[l] for l in layers}, lam, self.site, self.mode,
                                        self.positions))
        self._hooks = hooks
        self._ready = True

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """The steering hooks, registered for this batch only."""
        if not self._ready:
            raise RuntimeError("steer.session() before setup(adapter): the vectors are not loaded")
        if not self._hooks:
            yield GenerationPlan()
            return
        with forward_hooks(adapter.model, self._hooks, prepend=True):  # before transformers' output recorders
            yield GenerationPlan()
