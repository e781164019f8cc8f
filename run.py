"""halluc-bench entry point: `python run.py model=... intervention=... benchmark=...` (Hydra; sweeps with -m)."""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def _split_overrides(text: str) -> list[str]:
    """Hydra's override_dirname ("a=1,b=[1,2]") split into overrides, commas inside brackets kept."""
    parts, depth, cur = [], 0, ""
    for ch in text or "":
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in parts + [cur] if p]


def _null_default(intervention: str, key: str) -> bool:
    """True when `configs/intervention/<intervention>.yaml` sets `key` to null (so `key=null` changes nothing)."""
    path = Path(__file__).resolve().parent / "configs" / "intervention" / f"{intervention}.yaml"
    if not path.exists():
        return False
    node = OmegaConf.load(path)
    return key in node and node[key] is None


def _slug(text: str, intervention: str | None = None) -> str:
    """A filesystem-safe, bounded folder name for a list of overrides ('' -> 'default').

    An `intervention.<key>=null` override whose default is already null changes nothing, so it is left out:
    the same run gets the same folder."""
    kept = [p for p in _split_overrides(text)
            if not (intervention and p.startswith("intervention.") and p.endswith("=null")
                    and _null_default(intervention, p[len("intervention."):-len("=null")]))]
    s = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", ",".join(kept)).strip("_") or "default"
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
