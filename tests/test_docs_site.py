"""The documentation site: ``mkdocs build --strict`` passes, and in a real browser (Debian's
headless Chromium) served on loopback every entry of the navigation opens a page, and a page
reached through the navigation shows its content."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    import mkdocs  # noqa: F401
except ImportError:  # the docs extra is not installed (scripts/setup installs it)
    HAVE_MKDOCS = False
else:
    HAVE_MKDOCS = True

pytestmark = pytest.mark.skipif(not HAVE_MKDOCS,
                                reason="mkdocs not installed: pip install -e '.[docs]'")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No line per request on stderr."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built with --strict, served on 127.0.0.1; its base URL."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                            "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after Chromium ran the page's scripts (the flags keep it off the network)."""
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def nav_links(dom: str) -> list[str]:
    """The navigation's page links (not the in-page table of contents: no '#')."""
    hrefs = re.findall(r'<a [^>]*href="([^"#]*)"[^>]*class="md-nav__link', dom)
    hrefs += re.findall(r'<a [^>]*class="md-nav__link[^"]*"[^>]*href="([^"#]*)"', dom)
    return sorted(set(hrefs))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_every_navigation_link_opens_a_page_in_chromium(site: str, tmp_path: Path) -> None:
    index = dump_dom(site, tmp_path / "profile")
    assert "<h1" in index and "xinterface" in index
    links = nav_links(index)
    wanted = ["getting-started/", "api/", "guarantees/", "writing-a-device/", "boards/",
              "linux/", "cli/", "performance/", "design/", "reference/", "changelog/",
              "qmp/", "pytest-plugin/", "logging/", "gdb/", "snapshot/"]
    assert set(wanted) <= set(links), links
    for link in links:
        with urllib.request.urlopen(site + link, timeout=30) as reply:
            assert reply.status == 200, link
    # A page reached through the navigation, rendered: its title, its own navigation, and the
    # API reference generated from the docstrings.
    page = dump_dom(site + "guarantees/", tmp_path / "profile")
    assert re.search(r"<h1[^>]*>Guarantees", page)
    seen = {re.sub(r"^\.\./", "", h) for h in nav_links(page)} | {"guarantees/"}  # itself: ./
    assert set(wanted) <= seen, seen
    reference = dump_dom(site + "reference/", tmp_path / "profile")
    assert "XInterfaceError" in reference and "doc-heading" in reference
