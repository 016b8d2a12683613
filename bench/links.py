"""Impaired links: a 100 KB message over a 33.6 kbit/s link, and the mail path unimpaired.

- 100 KB over 33.6 kbit/s: queue-lifecycle.yaml with `dialup` at 33.6 kbit/s, a message
  with 100 KB of attachment queued on the hub, the link raised and the queue run; the
  hub's delivery.result says the bytes and the transfer's duration (MAIL to the last
  reply). Target 24-27 s. The duration is lab time on both backends (the clock is
  advanced, so it takes a fraction of that in real time, also reported): in process the
  virtual network paces it, in Docker the hosts' agents (a network of built-in hosts).
- the same 100 KB through a Postfix hub (home-dialup-postfix.yaml), Docker: a network
  with a real daemon is paced by the kernel's qdisc (tbf, or netem), in real time; the
  figure is the real time from the link's raise to the delivery at freeuk.
- the mail path unimpaired: the end-to-end figure of `python -m bench` (pc1 -> hub -> ISP
  -> freeuk, no TLS, 1000 x 1 KB, 8 at a time, median of 3), to compare with it: an
  unimpaired link must be no slower than before.

python -m bench.links [--backend inprocess|docker] [--no-rate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from lab.harness import Lab
from lab.services.client import attachment_text

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "topologies" / "queue-lifecycle.yaml"
TO = "paulmidgley@freeuk.com"


def bench_modem(backend: str, size: int = 100_000) -> dict[str, Any]:
    with Lab.up(TOPOLOGY, backend=backend) as lab:
        lab.impair("dialup", rate="33.6kbit")
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=TO, body=attachment_text(size))
        lab.link("dialup").up()
        began = time.perf_counter()
        lab.flush("hub")
        lab.clock.advance("2m")
        lab.assert_delivered(TO, node="freeuk", timeout=120)
        real = time.perf_counter() - began
        [hop] = [
            e
            for e in lab.events
            if e.kind == "delivery.result" and e.get("id") == sent.queue_id
            if e.get("result") == "delivered"
        ]
    return {
        "backend": backend,
        "bytes": hop.get("bytes"),
        "duration": hop.get("duration"),
        "real_s": real,
        "clock": "lab time",
    }


def bench_modem_real_mta(size: int = 100_000) -> dict[str, Any]:
    """The Postfix hub's line: the kernel's qdisc, real time."""
    with Lab.up(ROOT / "topologies" / "home-dialup-postfix.yaml", backend="docker") as lab:
        lab.impair("dialup", rate="33.6kbit")
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=TO, body=attachment_text(size))
        assert sent.accepted, sent.to_json()
        lab.assert_queued("hub", to=TO)
        began = time.perf_counter()
        lab.link("dialup").up()
        lab.assert_delivered(TO, node="freeuk", timeout=120)
        real = time.perf_counter() - began
    return {
        "backend": "docker, Postfix hub",
        "bytes": size,
        "duration": real,
        "real_s": real,
        "clock": "real time (tbf qdisc)",
    }


def bench_path() -> dict[str, Any]:
    from bench.__main__ import bench_rate

    found: dict[str, Any] = asyncio.run(bench_rate(1000, 8, False))
    return found


def report(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Impaired links",
        "",
        "Measured alone with `python -m bench.links` (part of `make bench`): queue-lifecycle"
        " with its dial-up link at 33.6 kbit/s, one message with 100 KB of attachment; the"
        " duration is the hub's delivery.result (MAIL to the last reply); with the Postfix"
        " hub (home-dialup-postfix), the real time from the link's raise to the delivery.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
    ]
    for found in results.get("modem", []):
        if "error" in found:
            lines.append(f"| 100 KB over 33.6 kbit/s, {found['backend']} | {found['error']} | | |")
            continue
        ok = 24 <= found["duration"] <= 27
        lines.append(
            f"| 100 KB over 33.6 kbit/s, {found['backend']} ({found['bytes']} bytes) |"
            f" {found['duration']:.1f} s of {found['clock']} ({found['real_s']:.1f} s real) |"
            f" 24-27 s | {'meets the target' if ok else 'MISSES the target'} |"
        )
    path = results.get("path")
    if path:
        runs = ", ".join(f"{r:.0f}" for r in path["lab_rates"])
        lines.append(
            f"| mail path, no link impaired: end to end, no TLS (median of 3) |"
            f" {path['lab_rate']:.0f} msg/s (runs {runs}) | no slower than before |"
            " the end-to-end figure without impairments |"
        )
    return [*lines, ""]


def run_modems(backends: list[str]) -> list[dict[str, Any]]:
    found = []
    runs: list[tuple[str, Any]] = [(b, lambda b=b: bench_modem(b)) for b in backends]
    if "docker" in backends:
        runs.append(("docker, Postfix hub", bench_modem_real_mta))
    for name, run in runs:
        try:
            found.append(run())
        except Exception as exc:  # no Docker engine: said in the report
            found.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(found[-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", help="inprocess, docker (default: both)")
    parser.add_argument("--no-rate", action="store_true", help="skip the mail-path rate")
    args = parser.parse_args()
    results: dict[str, Any] = {"modem": run_modems(args.backend or ["inprocess", "docker"])}
    if not args.no_rate:
        results["path"] = bench_path()
        print(json.dumps({k: results["path"][k] for k in ("lab_rate", "lab_rates")}))
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
