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
    exists, a Hugging Face hub dataset id (needs network; `split` selects the split). Local JSON/JSONL
    files of flat rows are read with `json` (`plain_json_rows`), without importing `datasets`.
    """
    path = resolve_data_path(source)
    if path.exists():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigValueError(f"{path}: unsupported question-file type {path.suffix!r}; use one of {sorted(_BUILDERS)}")
        if builder != "parquet":
            text = read_text(path, "question file")  # a binary or non-UTF-8 file: an error naming it
            if builder == "json":
                rows = plain_json_rows(text)
                if rows is not None:
                    return rows
        import datasets

        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # datasets/pyarrow errors do not name the file
            raise InputFileError(f"question file {path} cannot be read as {builder}: "
                                 f"{type(e).__name__}: {str(e)[:200]}") from e
    elif "/" in str(source) and not str(source).endswith(tuple(_BUILDERS)):
        import datasets

        ds = datasets.load_dataset(str(source), split=split)
    else:
        raise MissingFileError(f"question file not found: {path}")
    return [dict(row) for row in ds]


_SCALARS = (str, int, float, bool)


def plain_json_rows(text: str) -> list[dict] | None:
    """The rows `datasets`' json builder would give for a JSONL text or JSON list of objects, when that is
    plain to see: every value a string, number or boolean, one type per key (missing keys become None, as
    in `datasets`). None for anything else (nested values, a key with mixed types, other JSON): then the
    caller asks `datasets`."""
    import json

    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return None
    if not isinstance(rows, list) or not rows or not all(type(r) is dict for r in rows):
        return None
    types: dict[str, type] = {}
    for row in rows:
        for k, v in row.items():
            if v is None:
                continue
            t = type(v)
            if t not in _SCALARS or types.setdefault(k, t) is not t:
                return None
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if all(len(r) == len(keys) for r in rows):
        return [{k: r[k] for k in keys} for r in rows]
    return [{k: r.get(k) for k in keys} for r in rows]
