"""Fail fast on a model hub id that cannot be fetched, before transformers spends minutes retrying.

``check_reachable(path)`` is called before a model loads. A local folder passes; a hub id passes
when the hub answers within a few seconds, or when it is in the local cache (offline mode, or
hub unreachable: a warning then suggests ``HF_HUB_OFFLINE=1``). Otherwise a HubUnreachableError
says what to set: ``model.path`` to a local folder, or ``HF_HUB_OFFLINE=1`` with a cached copy.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from harness.errors import HubUnreachableError

log = logging.getLogger("halluc_bench")

#: seconds to wait for the hub to answer
TIMEOUT_S = 5.0


def _offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any(str(f).strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags if f)


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_cached(repo_id: str) -> bool:
    """Whether the model's config.json is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the cache cannot even name (e.g. invalid characters)
        return False


def check_reachable(path: str | None, timeout: float = TIMEOUT_S) -> str:
    """How model `path` will be found: 'local' (a folder), 'cached' or 'hub'; HubUnreachableError if nowhere.

    Paths that are neither an existing folder nor an 'org/name' hub id are left to the loader's own checks
    (returned as 'local').
    """
    if not path:
        return "local"
    path = str(path)
    if Path(path).expanduser().exists() or path.startswith(("/", "./", "../", "~")) or path.count("/") != 1:
        return "local"
    hint = ("set model.path to a local folder holding the checkpoint, or download it once "
            f"(`hf download {path}`) and run with HF_HUB_OFFLINE=1")
    if _offline():
        if is_cached(path):
            return "cached"
        raise HubUnreachableError(f"model.path={path!r} is not in the local Hugging Face cache and "
                                  f"HF_HUB_OFFLINE is set, so it cannot be downloaded; {hint}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    endpoint = _endpoint()
    try:
        HfApi(endpoint=endpoint).model_info(path, timeout=timeout)
        return "hub"
    except GatedRepoError:
        return "hub"  # reachable; the loader reports the missing access token
    except RepositoryNotFoundError:
        raise HubUnreachableError(f"model.path={path!r}: no such model on {endpoint} (or it is private and "
                                  f"no token is set); check the id, or {hint}") from None
    except Exception as e:  # connection refused, DNS failure, timeout, proxy or server error
        if is_cached(path):
            log.warning("the hub (%s) cannot be reached (%s); using the cached copy of %s. "
                        "Set HF_HUB_OFFLINE=1 to skip the hub.", endpoint, type(e).__name__, path)
            return "cached"
        raise HubUnreachableError(f"model.path={path!r}: the hub ({endpoint}) cannot be reached "
                                  f"({type(e).__name__}: {str(e)[:120]}); {hint}") from None
