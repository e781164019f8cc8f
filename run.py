"""halluc-bench entry point: `python run.py model=... intervention=... benchmark=...` (Hydra; sweeps with -m)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def _slug(text: str) -> str:
    """A filesystem-safe, bounded folder name for a list of overrides ('' -> 'default')."""
    s = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", text or "").strip("_") or "default"
    if len(s) > 80:
        s = s[:60] + "-" + hashlib.sha256(s.encode()).hexdigest()[:10]
    return s


if not OmegaConf.has_resolver("hb_slug"):
    OmegaConf.register_new_resolver("hb_slug", _slug)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    """Run one job in the Hydra run directory and return its scores (None for a waiting shard)."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.run.get("num_threads"):
        import torch  # only here: score-only runs never import torch

        torch.set_num_threads(int(cfg.run.num_threads))
    from harness.pipeline import run_job

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return run_job(cfg, run_dir)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
