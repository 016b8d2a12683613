"""What the web tests share: an HTTP client over real sockets (urllib, the token sent
as the page sends it), a web server on a lab, and a real headless Chromium driven by
Playwright (Debian's chromium at /usr/bin/chromium, or $MAILLAB_CHROMIUM; Playwright
downloads no browser). Without the browser the browser tests are skipped, except under
CI=true, where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.web import WebServer, serve

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"


@dataclass
class Reply:
    status: int
    json: Any
    headers: dict[str, str]


class Api:
    """The lab's HTTP API over a real connection."""

    def __init__(self, web: WebServer):
        self.web = web
        self.origin = web.origin
        self.token = web.token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            sent["X-Maillab-Token"] = token or self.token
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.origin + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                status, got = response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        text = raw.decode()
        assert "Traceback" not in text, text
        return Reply(status, json.loads(text) if text else None, got)

    def get(self, path: str, **kw: Any) -> Any:
        reply = self.call("GET", path, **kw)
        assert reply.status == 200, f"GET {path}: {reply.status} {reply.json}"
        return reply.json

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        reply = self.call("POST", path, body if body is not None else {}, **kw)
        assert reply.status == 200, f"POST {path}: {reply.status} {reply.json}"
        return reply.json


@pytest.fixture
def web_api(lab_factory: Any) -> Iterator[tuple[Lab, Api]]:
    """home-dialup on the test's backend, with its web server; (lab, api). A lab of its
    own: the event stream's tests count events from the lab's first."""
    lab = lab_factory(HOME_DIALUP, fresh=True)
    with serve(lab) as web:
        yield lab, Api(web)


def chromium_path() -> str | None:
    found = os.environ.get("MAILLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright over Debian's chromium)."""
    path = chromium_path()
    problem = ""
    if path is None:
        problem = "no chromium (apt-get install chromium; make setup installs it)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and the browser tests need a browser: {problem}", False)
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(page: Any, name: str) -> None:
    """Write the page to $MAILLAB_SCREENSHOTS/NAME.png when asked (docs/ui.md's pictures)."""
    where = os.environ.get("MAILLAB_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)
