"""Provenance of a result row: harness commit, library versions, dataset files and version, judge, decoding, seed.

Everything here is cheap and never imports torch (versions come from package metadata), so score-only runs
stay lean. The harness commit is `git rev-parse HEAD` of the checkout the harness runs from (with a `dirty`
flag for uncommitted changes to tracked files); outside a git checkout it is the installed package version.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any, Mapping

from harness.fingerprint import package_versions

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def harness_version() -> dict:
    """{"commit": sha, "dirty": bool} in a git checkout, else {"version": package version}."""
    if (ROOT / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout
            return {"commit": sha, "dirty": bool(status.strip())}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"version": package_versions().get("halluc-bench", "unknown")}


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """The sha256 of a file's bytes (cached per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_size, st.st_mtime)


def dataset_provenance(bench: Any) -> dict:
    """The benchmark's label, configured version and the sha256 of each local data file it reads."""
    files = {}
    for f in getattr(bench, "data_files", lambda: [])():
        p = Path(f)
        if p.is_file():
            try:
                key = str(p.resolve().relative_to(ROOT))
            except ValueError:
                key = str(p)
            files[key] = file_hash(p)
    return {"label": bench.label(), "version": bench.cfg.get("version"), "files": files}


def run_provenance(bench: Any, decoding: Mapping | None, seed: Any, fingerprint: Mapping | None = None) -> dict:
    """Everything a reader needs to trust or redo a result (see the module docstring)."""
    versions = dict((fingerprint or {}).get("versions") or package_versions())
    judge = getattr(bench, "judge_model", lambda: None)()
    return {
        "harness": harness_version(),
        "versions": {k: versions.get(k) for k in ("python", "torch", "transformers", "tokenizers", "nltk")
                     if versions.get(k)},
        "dataset": dataset_provenance(bench),
        "judge_model": judge,
        "decoding": dict(decoding) if decoding is not None else None,
        "seed": seed,
        "bootstrap": {"resamples": int(bench.cfg["bootstrap"]), "seed": int(bench.cfg["bootstrap_seed"])},
    }


PROVENANCE_FILE = "provenance.json"


def write_provenance(run_dir: str | Path, bench: Any, prov: Mapping) -> Path:
    """`run_dir/provenance.json`: the provenance and the benchmark's config (compare_runs reads it)."""
    import json

    path = Path(run_dir) / PROVENANCE_FILE
    path.write_text(json.dumps({**prov, "benchmark_cfg": dict(bench.cfg)}, indent=1, default=str) + "\n")
    return path
