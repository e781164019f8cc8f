"""Asking the judge many questions: through the reply cache, on a thread pool, re-asking unparsable replies.

A ``JudgeRequest`` is one prompt (with an optional image) and a parser for its reply. The engine
looks each request up in the on-disk cache first (a rerun sends nothing), sends the rest,
caches every reply (key already redacted by the client), and re-asks at most ``parse_retries``
times when the parser rejects a reply. Per-request outcomes carry a status, the parsed value,
the reply and the number of HTTP requests sent. A bad key, model or URL (401/403/404) or a
missing key stops the whole run; any other failure is recorded per request.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.judge.cache import ReplyCache, cache_key, sha256_bytes
from harness.judge.client import ChatClient, JudgeError, JudgeHTTPError, image_data_url, read_image, vision_messages

FATAL_STATUSES = (401, 403, 404)  # a bad key, model or URL fails every request: stop the run


class ReplyParseError(ValueError):
    """A judge reply that does not hold what the prompt asked for."""


class JudgeUnavailableError(RuntimeError):
    """Every judge request of a run failed: there is nothing to score."""


@dataclass(frozen=True)
class JudgeRequest:
    """One question for the judge: a prompt, an optional image, and how to read the reply."""

    id: str  # unique within a run, e.g. "<question_id>/correctness"
    prompt: str
    parse: Callable[[str], Any]  # reply -> value; raises ReplyParseError
    image_path: str | None = None
    role: str = "user"
    meta: dict = field(default_factory=dict)


@dataclass
class JudgeOutcome:
    """What became of one request: status ok | parse_failed | request_failed."""

    id: str
    status: str
    value: Any = None
    reply: str | None = None
    reason: str | None = None
    attempts: int = 0
    api_calls: int = 0  # HTTP requests sent for this request (0 when every reply came from the cache)
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-able record of the outcome."""
        return {"id": self.id, "status": self.status, "value": self.value, "reply": self.reply,
                "reason": self.reason, "attempts": self.attempts, "api_calls": self.api_calls, **self.meta}


class JudgeEngine:
    """Runs JudgeRequests against one client and one reply cache."""

    def __init__(self, client: ChatClient, cache: ReplyCache, parse_retries: int = 2, concurrency: int = 4,
                 progress: bool = True, max_failures_in_a_row: int = 8):
        self.client, self.cache = client, cache
        self.parse_retries, self.concurrency, self.progress = int(parse_retries), int(concurrency), bool(progress)
        self.max_failures_in_a_row = int(max_failures_in_a_row)
        self._images: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def _image(self, path: str) -> tuple[bytes, str]:
        with self._lock:
            if path not in self._images:
                data = read_image(path)
                self._images[path] = (data, sha256_bytes(data))
            return self._images[path]

    def ask(self, req: JudgeRequest) -> JudgeOutcome:
        """The outcome of one request (cache first; re-asked while the reply does not parse)."""
        data, img_sha = self._image(req.image_path) if req.image_path else (b"", None)
        key_messages = vision_messages(req.prompt, f"sha256:{img_sha}" if img_sha else None, req.role)
        out = JudgeOutcome(req.id, "ok", meta=dict(req.meta))
        c = self.client
        for attempt in range(self.parse_retries + 1):
            key = cache_key(c.request_body(key_messages), attempt, c.url)
            out.attempts = attempt + 1
            entry = self.cache.get(key)
            if entry is not None:
                reply = entry["reply"]
            else:
                url = image_data_url(data, Path(req.image_path).name) if req.image_path else None
                try:
                    done = c.complete(vision_messages(req.prompt, url, req.role))
                except JudgeHTTPError as e:
                    out.api_calls += e.requests
                    if e.status in FATAL_STATUSES:
                        raise
                    out.status, out.reason = "request_failed", str(e)
                    return out
                except JudgeError as e:
                    out.api_calls += e.requests
                    out.status, out.reason = "request_failed", str(e)
                    return out
                out.api_calls += done.requests
                reply = done.text
                self.cache.put(key, {"model": c.model, "request": req.id, "attempt": attempt, "reply": reply,
                                     "created": time.time()})
            out.reply = reply
            try:
                out.value = req.parse(reply)
            except ReplyParseError as e:
                out.status, out.reason, out.value = "parse_failed", str(e), None
                continue
            out.status, out.reason = "ok", None
            return out
        return out

    def run(self, requests: Sequence[JudgeRequest], desc: str = "judge") -> list[JudgeOutcome]:
        """Outcomes of all requests, in request order, asked on a thread pool.

        After ``max_failures_in_a_row`` requests in a row got no reply (a server that is down), the
        rest are not sent: they are recorded as failed, instead of each waiting through its retries.
        """
        from tqdm import tqdm

        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("judge request ids must be unique")
        results: list[JudgeOutcome | None] = [None] * len(requests)
        abort = threading.Event()  # set by a fatal error: queued requests then send nothing
        in_a_row = [0]

        def guarded(req: JudgeRequest) -> JudgeOutcome | None:
            if abort.is_set():
                return None
            if self.max_failures_in_a_row and in_a_row[0] >= self.max_failures_in_a_row:
                return JudgeOutcome(req.id, "request_failed", meta=dict(req.meta),
                                    reason=f"not sent: the last {in_a_row[0]} judge requests got no reply")
            try:
                out = self.ask(req)
            except BaseException:
                abort.set()
                raise
            with self._lock:
                in_a_row[0] = in_a_row[0] + 1 if out.status == "request_failed" else 0
            return out

        pool = ThreadPoolExecutor(max_workers=max(1, self.concurrency))
        try:
            futs = {pool.submit(guarded, r): i for i, r in enumerate(requests)}
            for fut in tqdm(as_completed(futs), total=len(futs), desc=desc, disable=not self.progress):
                results[futs[fut]] = fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]


def summarise(outcomes: Sequence[JudgeOutcome]) -> dict:
    """Counts over outcomes: requests, HTTP requests sent, parse and request failures."""
    return {"requests": len(outcomes),
            "api_calls": sum(o.api_calls for o in outcomes),
            "from_cache": sum(o.api_calls == 0 and o.status != "request_failed" for o in outcomes),
            "parse_failures": sum(o.status == "parse_failed" for o in outcomes),
            "request_failures": sum(o.status == "request_failed" for o in outcomes)}


def require_some_success(outcomes: Sequence[JudgeOutcome], what: str = "judge") -> None:
    """Raise JudgeUnavailableError when there were requests and every one of them failed to get a reply."""
    if outcomes and all(o.status == "request_failed" for o in outcomes):
        raise JudgeUnavailableError(f"{what}: all {len(outcomes)} judge requests failed; first error: "
                                    f"{outcomes[0].reason}")
