"""A simulated day of scheduled dial-ups: topologies/hourly-dialup.yaml (the hub dials its
ISP every hour for five minutes, `on_up: [flush]`), its hub retrying every 30 minutes,
with 1,000 messages queued while the line is down; then `clock advance 1d` plays the
retries (which fail: the line is down), the 24 dials and their queue runs in lab-time
order. Target: <= 10 s of real time in process, every message delivered once.

python -m bench.dialup [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from lab.backends.inprocess.backend import InProcessBackend
from lab.topology import load
from lab.topology.model import Retry

ROOT = Path(__file__).resolve().parents[1]
HOURLY = ROOT / "topologies" / "hourly-dialup.yaml"
TARGET_SECONDS = 10.0
BODY = "Mail written between dials waits for the next one.\n" * 20  # ~1 KB


async def bench_dial_day(count: int, concurrency: int = 16) -> dict[str, Any]:
    topology = load(HOURLY).model
    hub = topology.nodes["hub"].model_copy(update={"retry": Retry(intervals=[1800.0])})
    topology = topology.model_copy(update={"nodes": {**topology.nodes, "hub": hub}})
    backend = InProcessBackend(topology)
    await backend.up()
    try:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> bool:
            content = await backend.message(
                "pc1", mail_from="eddy@home.test", to=["paul@isp.test"], subject=f"{i}", body=BODY
            )
            async with sem:
                sent = await backend.send(
                    "pc1", mail_from="eddy@home.test", to=["paul@isp.test"], content=content
                )
            return sent.accepted

        accepted = sum(await asyncio.gather(*(one(i) for i in range(count))))
        await backend.settle()
        queued = len(await backend.queue("hub"))
        began = time.perf_counter()
        timers = await backend.advance(86400.0)
        seconds = time.perf_counter() - began
        box = await backend.mailbox("isp", "paul")
        ids = [m["raw"].split("Message-ID: ", 1)[1].split("\r\n", 1)[0] for m in box]
        left = len(await backend.queue("hub")) + len(await backend.queue("isp"))
        events = backend.events.events
        dials = sum(1 for e in events if e.kind == "link.up" and e.get("cause") == "schedule")
        retries = sum(1 for e in events if e.kind == "queue.deferred")
    finally:
        await backend.down()
    return {
        "messages": count,
        "accepted": accepted,
        "queued": queued,
        "seconds": seconds,
        "timers": timers,
        "dials": dials,
        "deferrals": retries,
        "delivered": len(box),
        "unique": len(set(ids)),
        "left_in_queues": left,
        "ok": seconds <= TARGET_SECONDS
        and len(box) == len(set(ids)) == count == queued
        and left == 0,
    }


def rows(day: dict[str, Any], verdict: Any) -> list[str]:
    """The bench report's row for the day of dials."""
    return [
        f"| a day of hourly 5-minute dial-ups, {day['messages']} messages queued:"
        f" `clock advance 1d` | {day['seconds']:.2f} s ({day['dials']} dials,"
        f" {day['timers']} timers, {day['deferrals']} deferrals; {day['delivered']} delivered,"
        f" {day['unique']} unique, {day['left_in_queues']} left queued) | <= 10 s, each"
        f" delivered once | {verdict(day['ok'])} |"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    day = asyncio.run(bench_dial_day(args.messages))
    print(day)
    return 0 if day["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
