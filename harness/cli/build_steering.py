"""Build latent steering directions for one model (Hydra): `halluc-bench-build-steering model=... steering.method=vti|valse steering.out=PATH`.

Writes PATH.safetensors (`text.<layer>` [hidden], `vision.<layer>` [positions, vision hidden]) and
PATH.json (sidecar: model, method, layers, data, counts, hidden sizes, created, harness version).
Methods: `vti` (Liu et al. 2024, "Reducing Hallucinations in Vision-Language Models via Latent Space
Steering") and `valse` (Chen et al. 2025, "Seeing It or Not? Interpretable Vision-aware Latent
Steering...", our reimplementation). Config: configs/build_steering.yaml. Apply with
`python run.py model=<same model> intervention=steer intervention.vectors=PATH`.
VTI exactly as its released code: `steering.combine=reference` here (plus, as its scripts,
`steering.vti.answer_separator=""`), then `intervention.site=mlp intervention.mode=renorm` when applying.
"""
from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf



@hydra.main(config_path="pkg://configs", config_name="build_steering", version_base="1.3")
def hydra_main(cfg: DictConfig) -> str:
    """Build and save the configured directions; returns the .safetensors path."""
    import torch

    if cfg.run.get("num_threads"):
        torch.set_num_threads(int(cfg.run.num_threads))
    from interventions.steering import build_from_config

    c = OmegaConf.to_container(cfg, resolve=True)
    torch.manual_seed(int(c["steering"].get("seed") or 0))
    st_path, js_path, sidecar = build_from_config(c["model"], c["steering"])
    summary = {k: sidecar.get(k) for k in ("method", "layers", "hidden_size", "counts")}
    print(json.dumps(summary, indent=1))
    print(f"written: {st_path} and {js_path}")
    form = " intervention.site=mlp intervention.mode=renorm" if sidecar.get("combine") == "reference" else ""
    print(f"apply with: halluc-bench model={c['model']['name']} intervention=steer "
          f"intervention.vectors={st_path.with_suffix('')}{form}")
    return str(st_path)


def main() -> None:
    """Console entry point `halluc-bench-build-steering` (Hydra key=value overrides of configs/build_steering.yaml)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hydra_main()


if __name__ == "__main__":
    main()
