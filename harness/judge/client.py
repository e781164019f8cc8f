"""An OpenAI-compatible chat-completions client on httpx, with bounded retries by tenacity.

Any server that speaks ``POST {base_url}/chat/completions`` works: OpenAI, Azure-style
gateways, a local vLLM or llama.cpp server. Each HTTP request has a **total** deadline of
``timeout_s`` (connect, send and the whole body: a server that trickles bytes cannot hold a
request longer); it runs on an asyncio loop and is cancelled when the deadline passes.

Retried (at most ``max_retries`` times, capped exponential backoff with jitter, ``Retry-After``
honoured): HTTP 429 and 5xx, deadlines, connection errors and unreadable 200 bodies. Other
4xx fail at once. Redirects are not followed, so the key is never sent to another address.

The API key is read from the environment variable ``api_key_env`` (none is sent when it is
null), only ever put into the ``Authorization`` header, and redacted from every reply and
error text this client returns.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import mimetypes
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """A judge request that failed; the message never contains the API key."""

    requests: int = 0  # HTTP requests sent before giving up


class JudgeHTTPError(JudgeError):
    """A non-retryable HTTP error (a 4xx other than 429)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class MissingAPIKeyError(RuntimeError):
    """No API key in the configured environment variable (fatal for a run, not per question)."""


class RetriesExhaustedError(JudgeError):
    """A request that still failed after the configured number of retries."""


class _Retryable(Exception):
    """One failed attempt that may be retried; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None, sent: bool = True):
        super().__init__(message)
        self.retry_after, self.sent = retry_after, sent


@dataclass(frozen=True)
class Completion:
    """A judge reply: its text (key redacted) and how many HTTP requests it took."""

    text: str
    requests: int


def image_data_url(data: bytes, filename: str = "image.jpg") -> str:
    """A ``data:`` URL (base64) for image bytes; the MIME type comes from the file name."""
    mime = mimetypes.guess_type(filename)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def vision_messages(prompt: str, image_url: str | None, role: str = "user") -> list[dict]:
    """One message holding the text prompt and, when given, the image (text-only: a plain string)."""
    if image_url is None:
        return [{"role": role, "content": prompt}]
    return [{"role": role, "content": [{"type": "text", "text": prompt},
                                       {"type": "image_url", "image_url": {"url": image_url}}]}]


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


@dataclass
class ChatClient:
    """Sends chat-completions requests to ``{base_url}/chat/completions``; safe to share between threads."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-2024-05-13"
    api_key_env: str | None = "OPENAI_API_KEY"
    max_tokens: int | None = 300
    temperature: float | None = 0.0
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    extra_body: dict = field(default_factory=dict)  # more request fields (e.g. top_p)
    sleep: Callable[[float], None] = time.sleep
    transport: Any = None  # an httpx.AsyncBaseTransport for tests; None: the network

    def __post_init__(self) -> None:
        # Read once; checked at the first request, so a fully cached rerun needs no key.
        self.__key = os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self._lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests sent by this client, retries included

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the API key replaced by ``***``."""
        return text.replace(self.__key, "***") if self.__key else text

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based), capped at ``backoff_max_s``."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        delay = self.backoff_base_s * (2 ** attempt)
        return min(self.backoff_max_s, delay * (1.0 + 0.25 * random.random()))

    def _headers(self) -> dict:
        if self.api_key_env and not self.__key:
            raise MissingAPIKeyError(f"no API key: set the environment variable {self.api_key_env} "
                                     "(or judge.api_key_env=null for a server that needs none)")
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return headers

    async def _post(self, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        """One POST; the deadline covers the whole exchange (connect, send, every byte of the reply)."""
        async with httpx.AsyncClient(transport=self.transport, timeout=httpx.Timeout(self.timeout_s),
                                     follow_redirects=False, verify=_ssl_context()) as http:

            async def exchange() -> tuple[int, dict, bytes]:
                async with http.stream("POST", self.url, content=body, headers=headers) as resp:
                    data = b"".join([chunk async for chunk in resp.aiter_bytes()])
                    return resp.status_code, dict(resp.headers), data

            return await asyncio.wait_for(exchange(), self.timeout_s)

    def _attempt(self, body: bytes, headers: dict) -> str:
        """One HTTP request under the total deadline; raises _Retryable or JudgeHTTPError on failure."""
        try:
            status, resp_headers, data = _run(self._post(body, headers))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as e:
            raise _Retryable(self.redact(f"cannot connect to {self.url}: {e}"), sent=False) from None
        except (asyncio.TimeoutError, httpx.TimeoutException):
            self._count()
            raise _Retryable(f"no complete reply within the {self.timeout_s:g} s deadline") from None
        except (httpx.HTTPError, OSError) as e:
            self._count()
            raise _Retryable(self.redact(f"{type(e).__name__}: {e}")) from None
        self._count()
        if status == 200:
            try:
                content = json.loads(data)["choices"][0]["message"]["content"]
                if content is None or isinstance(content, str):
                    return self.redact(content or "")  # an empty reply (e.g. a refusal) fails at parsing
                raise TypeError("non-text content")
            except (ValueError, KeyError, IndexError, TypeError):
                text = self.redact(data.decode("utf-8", "replace"))
                raise _Retryable(f"unreadable 200 reply: {text[:200]!r}") from None
        detail = _error_detail(self.redact(data.decode("utf-8", "replace")))
        message = f"HTTP {status} from {self.url}: {detail}"
        if status != 429 and status < 500:
            raise JudgeHTTPError(status, message)
        retry_after = parse_retry_after({k.lower(): v for k, v in resp_headers.items()}.get("retry-after"))
        raise _Retryable(message, retry_after)

    def _count(self) -> None:
        with self._lock:
            self.requests_sent += 1

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        wait = self.backoff(state.attempt_number - 1, getattr(exc, "retry_after", None))
        log.info("judge request failed (%s); retry %d/%d in %.2fs", exc, state.attempt_number, self.max_retries, wait)
        return wait

    def request_body(self, messages: list[dict]) -> dict:
        """The JSON body sent for ``messages`` (fields left null in the config are not sent)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.max_tokens is not None:
            body["max_tokens"] = int(self.max_tokens)
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        return {**body, **self.extra_body}

    def complete(self, messages: list[dict]) -> Completion:
        """The reply to a list of chat messages (``choices[0].message.content``), with its request count."""
        headers = self._headers()
        body = json.dumps(self.request_body(messages)).encode("utf-8")
        sent = 0

        def attempt() -> str:
            nonlocal sent
            try:
                return self._attempt(body, headers)
            except _Retryable as e:
                sent += e.sent
                raise
            except JudgeHTTPError as e:
                sent += 1
                e.requests = sent
                raise

        retrying = Retrying(stop=stop_after_attempt(int(self.max_retries) + 1), wait=self._wait,
                            retry=retry_if_exception_type(_Retryable), sleep=self.sleep, reraise=True)
        try:
            text = retrying(attempt)
        except _Retryable as e:
            err = RetriesExhaustedError(f"gave up after {int(self.max_retries) + 1} attempts; last error: {e}")
            err.requests = sent
            raise err from None
        return Completion(text, sent + 1)


_SSL: list = []
_SSL_LOCK = threading.Lock()


def _ssl_context() -> Any:
    """One SSL context for all requests (building one loads the CA bundle: too slow to do per request)."""
    with _SSL_LOCK:
        if not _SSL:
            _SSL.append(httpx.create_ssl_context())
        return _SSL[0]


def _run(coro: Any) -> Any:
    """Run a coroutine to completion; in a thread that already runs a loop (a notebook), on a new thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_image(path: str | Path) -> bytes:
    """The bytes of an image file (a FileNotFoundError names the path)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"judge image not found: {p}")
    return p.read_bytes()
