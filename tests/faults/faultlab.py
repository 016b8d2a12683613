"""Fault scenarios on home-dialup, measured: the tests of this folder run them small, and
run as a script they give the figures of docs/reliability.md.

- crash: messages queued on the hub, the dial-up link raised (its on_up hook flushes),
  the process holding the lab killed with SIGKILL part way through the flush, then a
  new lab over the same state directory raises the link again. Counts what was lost,
  stuck (still queued) and delivered more than once.
- flap: messages queued on the hub, the link toggled every `period` seconds for
  `seconds` (each raise starts a flush), then left up: each message delivered once?

    python tests/faults/faultlab.py crash --messages 2000
    python tests/faults/faultlab.py flap --messages 1000 --period 0.1 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from lab.harness import Lab  # noqa: E402
from lab.services.mta.queue import Queue, QueuedMessage, Recipient, new_id  # noqa: E402

HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
TO = "paulmidgley@freeuk.com"


def fill_hub_queue(state: Path, count: int) -> None:
    """The hub's queue as `count` submissions made while the link was down leave it
    (each accepted, tried once, deferred for 30 minutes); Message-IDs <fault-N@...>."""
    queue = Queue(state / "nodes" / "hub" / "queue", durable=False)
    now = time.time()
    for n in range(count):
        rcpt = Recipient(TO, TO, state="deferred", reply="451 4.4.1 link down")
        message = QueuedMessage(
            new_id(),
            "eddy@shofar.org.uk",
            [rcpt],
            now,
            client="192.168.10.11",
            helo="pc1.shofar.org.uk",
            next_attempt=now + 1800,
            message_id=f"<fault-{n}@shofar.org.uk>",
        )
        content = (
            f"Message-ID: <fault-{n}@shofar.org.uk>\r\nFrom: eddy@shofar.org.uk\r\n"
            f"To: {TO}\r\nSubject: fault {n}\r\n\r\nmessage {n}\r\n"
        )
        queue.put(content.encode(), message)
    queue.close()


def _copies(lab: Lab) -> Counter[str]:
    return Counter(str(m["Message-ID"]) for m in lab.mailbox("freeuk", "paulmidgley"))


def _leftovers(lab: Lab) -> int:
    return sum(len(lab.queue(node)) for node in ("hub", "isp", "freeuk"))


@dataclass
class Outcome:
    messages: int
    delivered: int  # copies in the mailbox
    lost: int  # never delivered
    doubled: int  # delivered more than once
    stuck: int  # still in a queue at the end
    seconds: float
    killed_after: int = 0  # crash: copies delivered when the lab was killed
    toggles: int = 0  # flap: link changes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _outcome(lab: Lab, count: int, started: float, **extra: Any) -> Outcome:
    copies = _copies(lab)
    wanted = {f"<fault-{n}@shofar.org.uk>" for n in range(count)}
    return Outcome(
        messages=count,
        delivered=sum(copies.values()),
        lost=len(wanted - set(copies)),
        doubled=sum(1 for c in copies.values() if c > 1),
        stuck=_leftovers(lab),
        seconds=time.perf_counter() - started,
        **extra,
    )


# crash and restart -----------------------------------------------------------------------


def hold(state: Path) -> None:
    """The child's part: the lab over `state`, the link raised (the flush runs), held
    until the parent kills this process."""
    lab = Lab.up(HOME_DIALUP, state_dir=state)
    print("up", flush=True)
    lab.link("dialup").up()
    print("flushed", flush=True)
    time.sleep(3600)


_KILLED_AFTER: dict[Path, int] = {}


def _delivered_files(state: Path, at_kill: bool = False) -> int:
    if at_kill:
        return _KILLED_AFTER.pop(state, 0)
    new = state / "nodes" / "freeuk" / "mail" / "paulmidgley" / "new"
    try:
        return len(os.listdir(new))
    except FileNotFoundError:
        return 0


def crash(state: Path, count: int, kill_at: float = 1 / 3, timeout: float = 120.0) -> Outcome:
    """Kill the lab with SIGKILL once `kill_at` of the messages are delivered, start it
    again over the same state, raise the link, and count."""
    started = time.perf_counter()
    fill_hub_queue(state, count)
    child = subprocess.Popen(
        [sys.executable, __file__, "hold", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with child, child.stdout as out:
        assert out is not None
        _kill_mid_flush(child, out.readline(), state, count * kill_at, timeout)
    with Lab.up(HOME_DIALUP, state_dir=state) as lab:
        lab.link("dialup").up()  # flushes what the hub still has
        lab.settle()
        return _outcome(lab, count, started, killed_after=_delivered_files(state, at_kill=True))


def _kill_mid_flush(
    child: subprocess.Popen[str], first: str, state: Path, threshold: float, timeout: float
) -> None:
    try:
        if first.strip() != "up":
            raise RuntimeError("the lab in the child process did not come up")
        deadline = time.monotonic() + timeout
        while (done := _delivered_files(state)) < threshold:
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the flush ended or stalled before the kill ({done} done)")
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        _KILLED_AFTER[state] = done
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# link flapping ---------------------------------------------------------------------------


async def _flap(lab: Lab, period: float, seconds: float) -> int:
    """Toggle the link every `period` for `seconds`, without waiting for the flushes the
    raises start; end with it up and every flush done."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    changes: list[asyncio.Task[None]] = []
    up = False
    while loop.time() < end:
        up = not up
        changes.append(loop.create_task(lab.backend.set_link("dialup", up)))
        await asyncio.sleep(period)
    if not up:
        changes.append(loop.create_task(lab.backend.set_link("dialup", True)))
    await asyncio.gather(*changes)
    return len(changes)


def flap(
    state: Path, count: int, period: float = 0.1, seconds: float = 10.0, backend: str = "inprocess"
) -> Outcome:
    started = time.perf_counter()
    fill_hub_queue(state, count)
    with Lab.up(HOME_DIALUP, backend=backend, state_dir=state) as lab:
        toggles = lab.run(_flap(lab, period, seconds), timeout=seconds + 300)
        lab.flush("hub")  # what the last cut deferred goes now, not in 30 minutes
        lab.settle()
        return _outcome(lab, count, started, toggles=toggles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    held = sub.add_parser("hold", help="(the crash scenario's child process)")
    held.add_argument("state", type=Path)
    for name in ("crash", "flap"):
        one = sub.add_parser(name)
        one.add_argument("--messages", type=int, default=1000)
        one.add_argument("--state", type=Path, help="state directory (default: a new one)")
        if name == "flap":
            one.add_argument("--period", type=float, default=0.1)
            one.add_argument("--seconds", type=float, default=10.0)
            one.add_argument("--backend", default="inprocess")
    args = parser.parse_args()
    if args.what == "hold":
        hold(args.state)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="maillab-faults-") as tmp:
        state = args.state or Path(tmp) / "lab"
        if args.what == "crash":
            outcome = crash(state, args.messages)
        else:
            outcome = flap(state, args.messages, args.period, args.seconds, args.backend)
    print(json.dumps(outcome.as_dict()))


if __name__ == "__main__":
    main()
