"""Drive a diagnosis report in headless Chromium and read back what its JS rendered.

The report's JS reads ``#token=N&kind=NAME&layers=A-B`` from the URL hash, clicks token N's button and
writes signatures of the drawn canvases into DOM attributes; ``chromium --dump-dom`` prints the DOM
after the load event, so two dumps with different hashes can be compared without a DevTools client.

    python tests/browser_check.py REPORT.html [HASH ...]     # prints the body and canvas attributes
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    """Debian's chromium binary (or $CHROMIUM), or None when it is not installed."""
    env = os.environ.get("CHROMIUM")
    for cand in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium")


def dump_dom(html_path: str | Path, url_hash: str = "", chromium: str | None = None, timeout: int = 90) -> str:
    """The DOM of ``html_path`` (opened as file://...#url_hash) after its load-time scripts ran."""
    chromium = chromium or find_chromium()
    if not chromium:
        raise FileNotFoundError("chromium not found (install Debian's chromium: apt-get install -y chromium)")
    url = Path(html_path).resolve().as_uri() + (f"#{url_hash.lstrip('#')}" if url_hash else "")
    with tempfile.TemporaryDirectory(prefix="hb-chromium-") as profile:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or "<body" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


class _Attrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict = {}
        self.canvases: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "canvas":
            self.canvases.append(dict(attrs))


def rendered(dom: str) -> tuple[dict, list[dict]]:
    """(attributes of <body>, attributes of every <canvas>) of a dumped DOM."""
    p = _Attrs()
    p.feed(dom)
    return p.body, p.canvases


def check(html_path: str | Path, url_hash: str = "") -> tuple[dict, list[dict]]:
    """Dump ``html_path`` with ``url_hash`` and return what the report rendered."""
    return rendered(dump_dom(html_path, url_hash))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for h in sys.argv[2:] or [""]:
        body, canvases = check(sys.argv[1], h)
        print(h or "(no hash)", {k: v for k, v in body.items() if k.startswith("data-")})
        for c in canvases:
            print("  ", {k: v for k, v in c.items() if k.startswith("data-")})
