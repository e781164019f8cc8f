"""Answer records: crash-safe JSONL writing, strict reading, and normalising other tools' formats.

Answers schema (one JSON object per line of ``answers.jsonl``):

- ``question_id``: the benchmark item's id (int or str, as the benchmark gives it)
- ``image_id``: the benchmark's image identifier (e.g. ``COCO_val2014_000000012345.jpg``) or null
- ``image``: the image path used, or null
- ``prompt``: the full text fed to the model (after the chat template)
- ``question``: the benchmark's question/instruction text (before the template)
- ``answer``: the generated text
- ``meta``: the benchmark item's metadata (label, category, ...)
- ``skipped``: present and true only when the image was missing and ``run.skip_missing=true``
- ``intervention_info``: optional per-item data an intervention records (e.g. probe decisions)
- ``fingerprint``: model, intervention and its parameters, decoding, seed, attention implementation,
  package versions; identical for every record of one run
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError, InputFileError, MissingFileError

ANSWER_KEYS = ("answer", "text", "caption", "output", "response", "pred")
ID_KEYS = ("question_id", "image_id", "id", "qid")


class MalformedRecordError(HarnessError, ValueError):
    """A line of a JSONL file that is not a JSON object, or a record missing a field; names file and record."""


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a file; a binary or otherwise non-UTF-8 file raises InputFileError naming it."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        kind = "a binary file" if b"\x00" in data[:8192] else "not UTF-8 text"
        raise InputFileError(f"{what} {path} is {kind} (undecodable byte 0x{data[e.start]:02x} at offset "
                             f"{e.start}); expected UTF-8 JSON/JSONL") from None


def require_text(value: Any, where: str, field: str = "answer") -> str:
    """`value` when it is a string ('' for null); any other type raises MalformedRecordError naming the record."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRecordError(f"{where}: the {field} must be a string, got {type(value).__name__} "
                                   f"{json.dumps(value, default=str)[:80]}")
    return value


def read_jsonl(path: str | Path, drop_partial_tail: bool = False) -> list[dict]:
    """All JSON objects of a JSONL file (a `.json` array file is accepted too).

    A malformed line raises MalformedRecordError naming file and line. With
    `drop_partial_tail`, an unparsable last line without a trailing newline (a write cut
    short by a crash) is silently dropped instead.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"answers file not found: {path}")
    text = read_text(path, "answers file")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MalformedRecordError(f"{path}: not valid JSON at line {e.lineno}: {e.msg}") from None
        if not all(isinstance(x, dict) for x in data):
            raise MalformedRecordError(f"{path}: a JSON array file must hold objects")
        return data
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            is_tail = i == len(lines) and not text.endswith("\n")
            if drop_partial_tail and is_tail:
                break
            raise MalformedRecordError(f"{path}, line {i}: malformed JSON ({e.msg}): {line[:120]!r}") from None
        if not isinstance(obj, dict):
            raise MalformedRecordError(f"{path}, line {i}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records


def normalise_record(rec: dict, answer_key: str | None = None, id_key: str | None = None,
                     where: str = "") -> dict:
    """A copy of `rec` with `question_id` and `answer` set from the first matching known key."""
    out = dict(rec)
    akeys = (answer_key,) if answer_key else ANSWER_KEYS
    ikeys = (id_key,) if id_key else ID_KEYS
    a = next((k for k in akeys if k in rec), None)
    q = next((k for k in ikeys if k in rec), None)
    if a is None:
        raise MalformedRecordError(f"{where}: no answer field (looked for {', '.join(akeys)}); keys: {sorted(rec)}")
    if q is None:
        raise MalformedRecordError(f"{where}: no id field (looked for {', '.join(ikeys)}); keys: {sorted(rec)}")
    out["answer"] = require_text(rec[a], where, f"answer field {a!r}")
    out["question_id"] = rec[q]
    return out


def read_answers(path: str | Path, answer_key: str | None = None, id_key: str | None = None) -> list[dict]:
    """Answer records of any tool's JSONL/JSON file, normalised to carry `question_id` and `answer`."""
    recs = read_jsonl(path)
    return [normalise_record(r, answer_key, id_key, where=f"{path}, record {i + 1}") for i, r in enumerate(recs)]


class AnswerWriter:
    """Appends records to a JSONL file, flushed and fsynced per batch so a kill loses at most one batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_partial_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write_batch(self, records: Iterable[dict]) -> None:
        """Write whole lines for all records, then flush and fsync."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace a file's content all at once: write a temporary file, fsync it, rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def repair_partial_tail(path: Path) -> None:
    """Truncate a half-written last line (no trailing newline) left by a killed writer."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # 0 when the only line is partial
        fh.truncate(cut)


def done_ids(path: str | Path) -> set[str]:
    """Ids (as strings) already answered in an answers file; a partial last line is ignored."""
    path = Path(path)
    if not path.exists():
        return set()
    return {str(r["question_id"]) for r in read_jsonl(path, drop_partial_tail=True)}
