"""An on-disk cache of judge replies: one JSON file per request, written atomically."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_VERSION = 2


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """The hex sha256 of a text's UTF-8 bytes."""
    return sha256_bytes(text.encode("utf-8"))


def _digest_images(node: Any) -> Any:
    """The messages with every base64 ``data:`` URL replaced by ``sha256:<hex of its decoded bytes>``."""
    if isinstance(node, dict):
        return {k: _digest_images(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_digest_images(v) for v in node]
    if isinstance(node, str) and node.startswith("data:") and ";base64," in node:
        return "sha256:" + sha256_bytes(base64.b64decode(node.split(",", 1)[1]))
    return node


def cache_key(body: dict, attempt: int = 0, server: str | None = None) -> str:
    """The cache key of one judge request: sha256 over its JSON body (model, messages, sampling fields).

    Images inside the messages count by their sha256. ``attempt`` tells apart the re-asks made
    when a reply does not parse (0 for the first request); ``server`` (the endpoint URL) keeps
    two servers that serve a model under the same name apart.
    """
    payload: dict[str, Any] = {"v": CACHE_VERSION, "body": _digest_images(body)}
    if attempt:
        payload["attempt"] = int(attempt)
    if server:
        payload["server"] = server
    return sha256_text(json.dumps(payload, sort_keys=True, ensure_ascii=False))


class ReplyCache:
    """Judge replies stored as ``<dir>/<key[:2]>/<key>.json``; a disabled cache stores nothing."""

    def __init__(self, directory: str | Path | None):
        self.dir = Path(directory).expanduser() if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file that holds (or will hold) the entry for ``key``."""
        if self.dir is None:
            raise ValueError("the reply cache is disabled")
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The cached entry for ``key``, or None when absent or unreadable."""
        if self.dir is None:
            return None
        try:
            with open(self.path(key), encoding="utf-8") as fh:
                entry = json.load(fh)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("cache_key") == key and "reply" in entry else None

    def put(self, key: str, entry: dict) -> None:
        """Store an entry (a JSON-able dict holding ``reply``) atomically: temp file, then rename."""
        if self.dir is None:
            return
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({**entry, "cache_key": key}, fh, ensure_ascii=False, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
