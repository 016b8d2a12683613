"""The web dashboard's figures (python -m bench; python -m bench.web for these alone),
on an in-process home-dialup lab with its web server, the page open in a headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright):

- an event reaches the open page (rendered in the event list): median <= 200 ms
- the page stays responsive with 10,000 events: all rendered, the DOM holding only the
  rows in view, a filter over all of them applied within a frame or so
- the API's server-side wait answers within 50 ms of the event (median)
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
CHROMIUM = "/usr/bin/chromium"


def run_web(quick: bool) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from lab.harness import Lab
    from lab.web import serve

    rounds = 10 if quick else 30
    results: dict[str, Any] = {}
    with Lab.up(HOME_DIALUP) as lab, serve(lab) as web, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(web.url)
        page.wait_for_selector("#live.on")
        bus = lab.backend.events

        async def emit(kind: str, **data: Any) -> int:
            return bus.emit("hub", kind, **data).seq

        # an event to the page
        latencies = []
        for i in range(rounds):
            sent = time.time() * 1000
            seq = lab.run(emit("bench.one", n=i))
            page.wait_for_function(f"window.maillab.rendered >= {seq}", polling="raf")
            latencies.append(page.evaluate("window.maillab.renderedAt") - sent)
            time.sleep(0.02)
        results["event_ms"] = statistics.median(latencies)
        results["event_max_ms"] = max(latencies)
        results["event_rounds"] = rounds

        # 10,000 events
        async def burst() -> int:
            for i in range(10_000):
                bus.emit("hub", "bench.burst", n=i)
            return bus.events[-1].seq

        started = time.perf_counter()
        last = lab.run(burst())
        page.wait_for_function(f"window.maillab.rendered >= {last}", timeout=60_000)
        results["burst_s"] = time.perf_counter() - started
        results["dom_rows"] = page.locator("#events .row").count()
        results["events_in_page"] = page.evaluate("window.maillab.state.events.length")
        results["filter_ms"] = page.evaluate(
            """() => {
                const input = document.querySelector('#event-filters input[name=kind]');
                const t0 = performance.now();
                input.value = 'bench.burst';
                input.dispatchEvent(new Event('input', {bubbles: true}));
                const t1 = performance.now();
                input.value = '';
                input.dispatchEvent(new Event('input', {bubbles: true}));
                return t1 - t0;
            }"""
        )
        results["scroll_ms"] = page.evaluate(
            """() => new Promise((done) => {
                const v = document.querySelector('#events');
                const t0 = performance.now();
                v.scrollTop = v.scrollHeight / 2;
                requestAnimationFrame(() => done(performance.now() - t0));
            })"""
        )
        browser.close()

        # the server-side wait
        waits = []
        for i in range(rounds):
            since = bus.events[-1].seq
            answered: dict[str, float] = {}
            url = f"{web.origin}/api/wait?until=event&kind=bench.wait&since={since}&timeout=10"

            def wait(url: str = url, answered: dict[str, float] = answered) -> None:
                request = urllib.request.Request(url, headers={"X-Maillab-Token": web.token})
                with urllib.request.urlopen(request, timeout=20) as response:
                    response.read()
                answered["at"] = time.perf_counter()

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.1)  # the request is waiting on the server
            emitted = time.perf_counter()
            lab.run(emit("bench.wait", n=i))
            waiter.join(20)
            waits.append((answered["at"] - emitted) * 1000)
        results["wait_ms"] = statistics.median(waits)
        results["wait_max_ms"] = max(waits)
    return results


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def report(results: dict[str, Any]) -> list[str]:
    lines = ["## Web dashboard and HTTP API", ""]
    web = results.get("web")
    if not isinstance(web, dict) or "event_ms" not in web:
        error = web.get("error") if isinstance(web, dict) else "not run"
        return [*lines, f"Not measured: {error}.", ""]
    return [
        *lines,
        "In-process home-dialup with its web server (`lab.web.serve`), the page open in"
        " headless Chromium (Debian's, driven by Playwright); events emitted on the lab's bus.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
        f"| an event reaches the open page: emitted -> drawn in the event list (median of"
        f" {web['event_rounds']}) | {web['event_ms']:.1f} ms (max {web['event_max_ms']:.1f})"
        f" | <= 200 ms | {verdict(web['event_ms'] <= 200)} |",
        f"| 10,000 events in one burst: all drawn | {web['burst_s'] * 1000:.0f} ms;"
        f" {web['events_in_page']} events in the page, {web['dom_rows']} rows in the DOM |"
        " responsive | "
        f"{verdict(web['dom_rows'] < 200 and web['filter_ms'] < 100 and web['scroll_ms'] < 100)} |",
        f"| with them: a filter over all 10,000 / a scroll to the middle |"
        f" {web['filter_ms']:.1f} ms / {web['scroll_ms']:.1f} ms (to the next frame) |"
        " < 100 ms each | |",
        f"| the API's wait (`GET /api/wait`): event -> answer received (median of"
        f" {web['event_rounds']}) | {web['wait_ms']:.1f} ms (max {web['wait_max_ms']:.1f}) |"
        f" <= 50 ms | {verdict(web['wait_ms'] <= 50)} |",
        "",
    ]


def run_safely(quick: bool) -> dict[str, Any]:
    """run_web, or what kept it from running (no browser, no web extra)."""
    if not Path(CHROMIUM).exists():
        return {"error": f"no browser at {CHROMIUM} (apt-get install chromium)"}
    try:
        return run_web(quick)
    except ImportError as exc:
        return {"error": f"{exc.name} is missing (pip install -e '.[dev,web]')"}


if __name__ == "__main__":
    found = {"web": run_safely("--quick" in sys.argv)}
    print(found["web"], file=sys.stderr)
    print("\n".join(report(found)))
