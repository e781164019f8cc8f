"""Question sets through Hugging Face `datasets`: local JSON/JSONL/Parquet files by default, hub ids when online."""
from __future__ import annotations

from pathlib import Path

from benchmarks.base import DATA_DIR
from harness.errors import ConfigValueError, InputFileError, MissingFileError
from harness.records import read_text

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def resolve_data_path(path: str | Path) -> Path:
    """A path as given if it exists, else relative to the shipped data folder."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return DATA_DIR / p


def load_question_records(source: str | Path, split: str = "train") -> list[dict]:
    """The rows of a question set as dicts.

    `source` is a local file (shipped-data-relative paths are accepted) or, when no such file
    exists, a Hugging Face hub dataset id (needs network; `split` selects the split).
    """
    import datasets

    path = resolve_data_path(source)
    if path.exists():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigValueError(f"{path}: unsupported question-file type {path.suffix!r}; use one of {sorted(_BUILDERS)}")
        if builder != "parquet":
            read_text(path, "question file")  # a binary or non-UTF-8 file: an error naming it
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # datasets/pyarrow errors do not name the file
            raise InputFileError(f"question file {path} cannot be read as {builder}: "
                                 f"{type(e).__name__}: {str(e)[:200]}") from e
    elif "/" in str(source) and not str(source).endswith(tuple(_BUILDERS)):
        ds = datasets.load_dataset(str(source), split=split)
    else:
        raise MissingFileError(f"question file not found: {path}")
    return [dict(row) for row in ds]
