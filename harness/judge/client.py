"""A minimal OpenAI-compatible chat-completions client (stdlib HTTP) with bounded retries.

Retried: HTTP 429 and 5xx, timeouts, connection errors and unreadable 200 bodies, with
capped exponential backoff that honours ``Retry-After``. Other 4xx fail at once. The API key
is read from an environment variable, sent only in the ``Authorization`` header and never
put into an error message, a log line or this object's repr.
"""
from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import mimetypes
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """A judge request that failed; the message never contains the API key."""


class JudgeHTTPError(JudgeError):
    """A non-retryable HTTP error (a 4xx other than 429)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class MissingAPIKeyError(RuntimeError):
    """No API key in the configured environment variable (fatal for a run, not per question)."""


class RetriesExhaustedError(JudgeError):
    """A request that still failed after the configured number of retries."""


def image_data_url(data: bytes, filename: str = "image.jpg") -> str:
    """A ``data:`` URL (base64) for image bytes; the MIME type comes from the file name."""
    mime = mimetypes.guess_type(filename)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def vision_messages(prompt: str, image_url: str | None) -> list[dict]:
    """A single user message holding the text prompt and, when given, the image."""
    content: list[dict] = [{"type": "text", "text": prompt}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return [{"role": "user", "content": content}]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects, so the Authorization header is never re-sent to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """No new request: the 3xx surfaces as an HTTP error."""
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class ChatClient:
    """Sends chat-completions requests to ``{base_url}/chat/completions``."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-2024-05-13"
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 300
    temperature: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        # Read once; checked at the first request, so a fully cached rerun needs no key.
        self.__key = os.environ.get(self.api_key_env, "").strip()
        self.url = self.base_url.rstrip("/") + "/chat/completions"

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based), capped at ``backoff_max_s``."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        delay = self.backoff_base_s * (2 ** attempt)
        return min(self.backoff_max_s, delay * (1.0 + 0.25 * random.random()))

    def _post(self, body: bytes) -> tuple[int, dict, bytes]:
        if not self.__key:
            raise MissingAPIKeyError(f"no API key: set the environment variable {self.api_key_env}")
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.__key}"})
        try:
            with _OPENER.open(req, timeout=self.timeout_s) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            try:
                data = e.read()
            except OSError:
                data = b""
            return e.code, dict(e.headers or {}), data

    def complete(self, messages: list[dict]) -> str:
        """The reply text (``choices[0].message.content``) for a list of chat messages."""
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                           "temperature": self.temperature}).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, headers, data = self._post(body)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, bad replies
                last = self._redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            else:
                if status == 200:
                    try:
                        content = json.loads(data)["choices"][0]["message"]["content"]
                        if content is None or isinstance(content, str):
                            return content or ""  # an empty reply (e.g. a refusal) fails at parsing
                        raise TypeError("non-text content")
                    except (ValueError, KeyError, IndexError, TypeError):
                        text = self._redact(data.decode("utf-8", "replace"))
                        last = f"unreadable 200 reply: {text[:200]!r}"
                else:
                    detail = _error_detail(self._redact(data.decode("utf-8", "replace")))
                    last = f"HTTP {status} from {self.url}: {detail}"
                    if status != 429 and status < 500:
                        raise JudgeHTTPError(status, last)
                    retry_after = parse_retry_after({k.lower(): v for k, v in headers.items()}.get("retry-after"))
            if attempt < self.max_retries:
                wait = self.backoff(attempt, retry_after)
                log.info("judge request failed (%s); retry %d/%d in %.2fs", last, attempt + 1, self.max_retries, wait)
                self.sleep(wait)
        raise RetriesExhaustedError(f"gave up after {self.max_retries + 1} attempts; last error: {last}")


def _error_detail(text: str) -> str:
    """The server's error message from an error body (OpenAI's ``{"error": {"message"}}`` or raw text)."""
    try:
        obj = json.loads(text)
        msg = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        text = str(msg)
    except ValueError:
        pass
    return text.strip()[:300] or "(empty body)"


def read_image(path: str | Path) -> bytes:
    """The bytes of an image file (a FileNotFoundError names the path)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"judge image not found: {p}")
    return p.read_bytes()
