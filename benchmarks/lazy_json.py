"""Large JSON tables stored one entry per line and read lazily: the keys at once, a value when it is read.

The big shipped tables a scoring run reads only a little of (the CHAIR ground truth: 123k images, a run reads
its captions' ones; the POS tagger's weights: 75k feature rows, a run reads some thousands) are written by
``write_lines_object`` as a JSON object with one entry per line::

    {
    "9": ["bowl","broccoli","orange"],
    "25": ["giraffe","person"]
    }

which is still plain JSON (``json.load`` and nltk read it as before). ``read_object`` finds the keys of such a
text with one regular-expression pass and decodes a value when it is read; any other JSON text is decoded
whole, so what it returns equals ``json.loads`` of the file (for a valid JSON file: a lazily read one is not
checked beyond its layout until a value is read). Decoding the two tables whole took about
a tenth of a 5,000-caption CHAIR run.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

#: a line's key (between its quotes, as written), then ": " (a JSON string holds no raw newline)
_KEY = r'"([^"\\\n]*(?:\\.[^"\\\n]*)*)": '
_LINE_KEY, _NEXT_LINE_KEY = re.compile(_KEY), re.compile("\n" + _KEY)


class LazyObject(Mapping):
    """key -> value of a one-entry-per-line JSON object; a value is decoded when read (its readers, the CHAIR
    ground truth and the tagger, keep what they read in their own form)."""

    def __init__(self, lines: dict[str, str], where: str, parse_constant: Callable[[str], Any] | None):
        self._lines, self._where, self._parse_constant = lines, where, parse_constant

    def __getitem__(self, key: str) -> Any:
        line = self._lines[key]
        value = line[_LINE_KEY.match(line).end():]
        try:
            return json.loads(value[:-1] if value.endswith(",") else value, parse_constant=self._parse_constant)
        except ValueError as err:
            raise ValueError(f"{self._where}: entry {key!r}: {err}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._lines

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


def read_object(path: str | Path, parse_constant: Callable[[str], Any] | None = None) -> Mapping | Any:
    """The JSON value of ``path``: a LazyObject when the file is a one-entry-per-line object (as
    ``write_lines_object`` writes it), else ``json.loads`` of the whole file (``parse_constant`` as json's)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    keys = _NEXT_LINE_KEY.findall(text)
    n = len(lines) - 2
    # every line between "{" and "}" starts with a key (a match starts at a line's start, so one per line at
    # most) and all but the last end with "," (a value holds no raw newline, so ",\n" occurs only at line ends)
    if (n < 1 or lines[0] != "{" or lines[-1] != "}" or len(keys) != n or text.count(",\n") != n - 1
            or lines[-2].endswith(",")):
        return json.loads(text, parse_constant=parse_constant)
    if "\\" in "".join(keys):  # a key with escapes is decoded as json does
        keys = [json.loads(f'"{k}"') if "\\" in k else k for k in keys]
    return LazyObject(dict(zip(keys, lines[1:-1])), str(path), parse_constant)


def write_lines_object(path: str | Path, mapping: Mapping[str, Any]) -> Path:
    """Write ``mapping`` as a JSON object with one entry per line (what ``read_object`` reads lazily)."""
    path = Path(path)
    entries = ",\n".join(f"{json.dumps(str(k))}: {json.dumps(v, separators=(',', ':'))}" for k, v in mapping.items())
    path.write_text("{\n" + entries + "\n}\n", encoding="utf-8")
    return path
