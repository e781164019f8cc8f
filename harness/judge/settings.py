"""The judge configuration (the ``judge`` config node) and judge prompts as data files.

``JudgeSettings`` is the schema of ``configs/judge/default.yaml``: a key left null takes the
benchmark's published setting (its judge model, temperature, ...), so a judged benchmark is
faithful by default and any OpenAI-compatible judge is one override away
(``judge.model=Qwen2.5-72B-Instruct judge.base_url=http://localhost:8000/v1 judge.api_key_env=null``).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from harness.judge.cache import sha256_text

OPENAI_URL = "https://api.openai.com/v1"
_NONE = object()


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how it is asked; ``None`` fields take the benchmark's published value."""

    model: str | None = None  # null: the benchmark's published judge model
    base_url: str = OPENAI_URL  # any OpenAI-compatible chat-completions server (vLLM: http://host:8000/v1)
    api_key_env: str | None = "OPENAI_API_KEY"  # environment variable holding the key; null: send none
    prompt: str | None = None  # a prompt file; null: the benchmark's shipped prompt
    max_tokens: int | None = None  # null: the benchmark's published value (or not sent)
    temperature: float | None = None  # null: the benchmark's published value (or not sent)
    top_p: float | None = None  # null: the benchmark's published value (or not sent)
    timeout_s: float = 60.0  # total deadline of one HTTP request (connect + send + whole reply)
    max_retries: int = 5  # on 429, 5xx, deadlines, connection errors, unreadable replies
    backoff_base_s: float = 1.0  # base * 2^attempt, capped at backoff_max_s; Retry-After honoured
    backoff_max_s: float = 60.0
    concurrency: int = 4  # requests in flight
    max_failures_in_a_row: int = 8  # after this many requests in a row got no reply, send no more
    parse_retries: int = 2  # re-asks when a reply cannot be parsed
    cache_dir: str | None = "outputs/judge_cache"  # on-disk reply cache; null disables it
    progress: bool = True
    strict: bool = False  # fail the run when any judge request failed (not only when all did)
    extra: dict = field(default_factory=dict)  # extra request fields sent as is

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, published: Mapping[str, Any] | None = None) -> "JudgeSettings":
        """Settings from a ``judge`` config node; null keys take ``published`` values; unknown keys are errors."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        given = dict(cfg or {})
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"unknown judge config key(s): {', '.join('judge.' + k for k in unknown)}; "
                             f"valid: {', '.join(sorted(names))}")
        values: dict[str, Any] = {}
        for name, f in names.items():
            v = given.get(name)
            if v is None and published and published.get(name) is not None:
                v = published[name]
            if v is not None:
                values[name] = _coerce(name, v, f)
            elif name in given and "None" in str(f.type):
                values[name] = None  # an explicit null: e.g. no API key, no cache
        s = cls(**values)
        if not s.model:
            raise ValueError("judge.model must be set (this benchmark has no published judge model)")
        if s.timeout_s <= 0 or min(s.max_retries, s.parse_retries, s.max_failures_in_a_row) < 0 or s.concurrency < 1:
            raise ValueError("judge.timeout_s must be > 0, judge.max_retries, judge.parse_retries and "
                             "judge.max_failures_in_a_row >= 0 (0: no limit), judge.concurrency >= 1")
        return s

    def client(self, **kw: Any):
        """A ChatClient for these settings."""
        from harness.judge.client import ChatClient

        extra = dict(self.extra)
        if self.top_p is not None:
            extra["top_p"] = float(self.top_p)
        return ChatClient(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env,
                          max_tokens=self.max_tokens, temperature=self.temperature, timeout_s=self.timeout_s,
                          max_retries=self.max_retries, backoff_base_s=self.backoff_base_s,
                          backoff_max_s=self.backoff_max_s, extra_body=extra, **kw)

    def judge_id(self) -> str:
        """The judge's name for labels: the model, plus the server's host when it is not OpenAI's."""
        host = urlparse(self.base_url).netloc
        return self.model if self.base_url.rstrip("/") == OPENAI_URL else f"{self.model}@{host}"

    def record(self) -> dict:
        """What is stored with every score: judge id, model, server and sampling settings (never the key)."""
        return {"id": self.judge_id(), "model": self.model, "base_url": self.base_url,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "parse_retries": self.parse_retries}


def _coerce(name: str, value: Any, f: dataclasses.Field) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("dict"):
            return dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"judge.{name}: expected {kind.split(' ')[0]}, got {value!r}") from None
    return str(value) if kind.startswith("str") else value


_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Prompt:
    """A judge prompt template read verbatim from a file; ``{name}`` marks where values go."""

    text: str
    path: str
    sha256: str

    @classmethod
    def load(cls, path: str | Path, fields: tuple[str, ...]) -> "Prompt":
        """The prompt in ``path`` (shipped-data-relative paths accepted); every field must appear in it."""
        from benchmarks.loading import resolve_data_path

        p = resolve_data_path(path)
        try:
            with open(p, encoding="utf-8", newline="") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"judge prompt file not found: {p}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: judge prompt is not UTF-8 text ({e.reason})") from None
        missing = [f for f in fields if "{" + f + "}" not in text]
        if missing:
            raise ValueError(f"{p}: judge prompt lacks the placeholder(s) {', '.join('{' + f + '}' for f in missing)}")
        return cls(text, str(p), sha256_text(text))

    def render(self, **values: str) -> str:
        """The prompt with each ``{name}`` replaced by its value in one pass (values are never re-read)."""
        return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), self.text)
