"""`halluc-bench` / `python run.py model=... intervention=... benchmark=...` (Hydra; sweeps with -m).

Configs ship as package data (`pkg://configs`), so a wheel install runs from any folder. Hydra composes the
overrides against the typed schema; until the job starts, Hydra is told to raise what goes wrong instead of
printing it (HYDRA_FULL_ERROR is set for the composition only), so a wrong type, an unknown key or an unknown
choice prints one line `error: <key>: <what>` and exits 2 (a user's HYDRA_FULL_ERROR=1: Hydra's own report).
Inside the job, range checks and every HarnessError print one line the same way.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.config import config_error_line, group_defaults, register_configs
from harness.errors import EXIT_CODE, HarnessError


def split_overrides(text: str) -> list[str]:
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
    """True when the intervention's config sets `key` to null (so `key=null` changes nothing)."""
    try:
        node = group_defaults("intervention", intervention)
    except Exception:  # an unknown choice is reported by Hydra itself
        return False
    return key in node and node[key] is None


def run_dir_slug(text: str, intervention: str | None = None) -> str:
    """A filesystem-safe, bounded folder name for a list of overrides ('' -> 'default').

    An `intervention.<key>=null` override whose default is already null changes nothing, so it is left out:
    the same run gets the same folder."""
    kept = [p for p in split_overrides(text)
            if not (intervention and p.startswith("intervention.") and p.endswith("=null")
                    and _null_default(intervention, p[len("intervention."):-len("=null")]))]
    s = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", ",".join(kept)).strip("_") or "default"
    if len(s) > 80:
        s = s[:60] + "-" + hashlib.sha256(s.encode()).hexdigest()[:10]
    return s


if not OmegaConf.has_resolver("hb_slug"):
    OmegaConf.register_new_resolver("hb_slug", run_dir_slug)
register_configs()


def fail(message: str) -> None:
    """Print one `error:` line and exit with the harness's error code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)


_forced_full_error = False  # HYDRA_FULL_ERROR=1 set by main() for the composition only


def _release_full_error() -> None:
    """Give the job the user's environment back (its children, and Hydra's report of a failing job)."""
    global _forced_full_error
    if _forced_full_error:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        _forced_full_error = False


def report_composition_error(e: BaseException) -> None:
    """One `error:` line for what stopped Hydra before the job started (a config error names its key)."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException):
        options = getattr(e, "options", None) or []
        missing = getattr(e, "missing_cfg_file", "") or ""
        group = missing.rsplit("/", 1)[0] if "/" in missing else ""
        hint = f"; valid choices: {', '.join(sorted(options))}" if options else ""
        fail(f"{group or 'config'}: no choice {missing.rsplit('/', 1)[-1]!r}{hint}")
    fail(config_error_line(e))


@hydra.main(config_path="pkg://configs", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig):
    """Run one job in the Hydra run directory and return its scores (None for a shard that does not score),
    or, when `optimized_metric` is set (a sweep's objective, e.g. Optuna's), that metric of the scores.

    A HarnessError (bad input or configuration, busy run folder) prints one line `error: <message>` and
    exits with code 2; HYDRA_FULL_ERROR=1 shows the traceback instead.
    """
    _release_full_error()
    try:
        return _run(cfg)
    except HarnessError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(e))


def _run(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from harness.config import validate

    validate(cfg)
    from harness.pipeline import run_job

    threads = cfg.run.num_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    scores = run_job(cfg, run_dir)
    metric = cfg.get("optimized_metric")
    return objective(scores, metric) if metric and scores is not None else scores


def objective(scores: dict, metric: str) -> float:
    """The value a sweeper optimises: `metric` of a job's scores (a dotted key reaches a nested one)."""
    node: object = scores
    for part in [metric] if metric in scores else metric.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = ", ".join(sorted(k for k, v in scores.items() if isinstance(v, (int, float))))
            raise HarnessError(f"optimized_metric: no metric {metric!r} in the scores; numeric ones: {keys}")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise HarnessError(f"optimized_metric: {metric!r} is not a number ({node!r})")
    return float(node)


def main() -> None:
    """Console entry point `halluc-bench`: Hydra's main; an error before the job starts is one line.

    Hydra's own flags (`--cfg`, `--help`, `-m` sweeps) and a user's HYDRA_FULL_ERROR=1 keep Hydra's reports."""
    global _forced_full_error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if any(a.startswith("-") for a in sys.argv[1:]) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        hydra_main()
        return
    os.environ["HYDRA_FULL_ERROR"], _forced_full_error = "1", True
    try:
        hydra_main()
    except Exception as e:
        if not _forced_full_error:  # the job had started: not a composition error
            raise
        report_composition_error(e)
    finally:
        _release_full_error()


if __name__ == "__main__":  # `python -m harness.cli.run ...` (what scripts that start runs use)
    main()
