"""halluc-bench entry point: `python run.py model=... intervention=... benchmark=...` (Hydra; sweeps with -m)."""
from __future__ import annotations

import hashlib
import os
import re
import sys
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
    """Run one job in the Hydra run directory and return its scores (None for a shard that does not score).

    A HarnessError (bad input or configuration, busy run folder) prints one line `error: <message>` and
    exits with code 2; HYDRA_FULL_ERROR=1 shows the traceback instead.
    """
    from harness.errors import EXIT_CODE, HarnessError

    try:
        return _run(cfg)
    except HarnessError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CODE)


def _run(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from harness.pipeline import run_job
    from harness.validate import positive_int

    threads = positive_int(cfg.run.get("num_threads"), "run.num_threads")
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return run_job(cfg, run_dir)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
