"""Checks that run before any model loads: outputs writable.

Config types and ranges are the typed schema's (`harness.config`: a value out of range such as
``run.batch_size=0`` raises ConfigValueError naming the key). An unwritable results store or run folder
raises OutputNotWritableError here, instead of surfacing only after generation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from harness.errors import OutputNotWritableError
from harness.results import check_store_writable


def check_dir_writable(folder: str | Path, key: str = "hydra.run.dir") -> None:
    """Raise OutputNotWritableError unless a file can be created in `folder` (created when missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputNotWritableError(f"run folder {folder} cannot be written ({e.strerror or e}); "
                                     f"set {key}=PATH to a writable folder") from None


def check_outputs(c: dict, run_dir: Path) -> None:
    """The run folder and the results store accept writes."""
    check_dir_writable(run_dir)
    check_store_writable(c["results_store"])
