"""Real software in a lab (Docker backend, warm images): home-dialup with the hub on
Postfix, its fetch on fetchmail and the ISPs' POP3 on Dovecot.

- up / down of that lab;
- a message deferred on the Postfix hub, returned to its sender by `clock advance 5d`
  with a delay warning before: the real time the advance takes;
- nothing lost: messages through the Postfix hub while its link is up, dropped and
  raised again: each delivered exactly once.

python -m bench.realmta [--rounds N] [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lab.harness import Lab
from lab.topology import load

ROOT = Path(__file__).resolve().parent.parent
REAL_STORY = ROOT / "topologies" / "home-dialup-real.yaml"
SENDER = "eddy@shofar.org.uk"
REMOTE = "paulmidgley@freeuk.com"


def warm_images(topology: Path) -> None:
    from lab.backends.docker.engine import docker_client
    from lab.backends.docker.families import ensure_image
    from lab.software.registry import image_families

    client = docker_client()
    try:
        for node in load(topology).model.nodes.values():
            ensure_image(client, image_families(node))
    finally:
        client.close()


def bench_real_up_down(rounds: int, topology: Path = REAL_STORY) -> dict[str, Any]:
    """Median seconds of Lab.up / Lab.down (images built beforehand, not counted)."""
    warm_images(topology)
    ups: list[float] = []
    downs: list[float] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="maillab-bench-") as tmp:
            started = time.perf_counter()
            lab = Lab.up(topology, backend="docker", state_dir=Path(tmp) / "lab")
            ups.append(time.perf_counter() - started)
            result = lab.send("pc1", mail_from=SENDER, to=["keith@shofar.org.uk"])
            assert result.accepted, result.to_json()
            started = time.perf_counter()
            lab.down()
            downs.append(time.perf_counter() - started)
        print(f"  up {ups[-1]:.2f} s, down {downs[-1]:.2f} s", file=sys.stderr)
    return {
        "topology": topology.name,
        "rounds": rounds,
        "up_s": statistics.median(ups),
        "up_max_s": max(ups),
        "down_s": statistics.median(downs),
        "down_max_s": max(downs),
    }


def bench_advance_5d(topology: Path = REAL_STORY) -> dict[str, Any]:
    """A message to the outside world waits on the Postfix hub with the modem down;
    `clock advance 5d` steps Postfix's lab time through its retries: the delay warning,
    then the return to the sender. The real time of the advance."""
    warm_images(topology)
    with (
        tempfile.TemporaryDirectory(prefix="maillab-bench-") as tmp,
        Lab.up(topology, backend="docker", state_dir=Path(tmp) / "lab") as lab,
    ):
        sent = lab.send("pc1", mail_from=SENDER, to=[REMOTE], subject="five days")
        assert sent.accepted, sent.to_json()
        lab.assert_queued("hub", to=REMOTE)
        started = time.perf_counter()
        steps = lab.clock.advance("5d")
        seconds = time.perf_counter() - started
        dsns = [e.get("action") for e in lab.trace(sent) if e.kind == "dsn.sent"]
        tries = sum(1 for e in lab.trace(sent) if e.kind == "delivery.result" and e.node == "hub")
        returned = bool(lab.mailbox("hub", "eddy")) and lab.queue("hub") == []
    return {
        "seconds": seconds,
        "steps": steps,
        "tries": tries,
        "dsns": dsns,
        "ok": dsns == ["delayed", "failed"] and returned,
    }


def bench_nothing_lost(count: int, topology: Path = REAL_STORY) -> dict[str, Any]:
    """`count` messages from pc1 through the Postfix hub to freeuk, sent eight at a
    time: the first third with the link up, then the link dropped (what is under way is
    cut), the second third queued, the link raised (on_up flushes), the last third with
    it up. Every message is delivered exactly once."""
    warm_images(topology)
    with (
        tempfile.TemporaryDirectory(prefix="maillab-bench-") as tmp,
        Lab.up(topology, backend="docker", state_dir=Path(tmp) / "lab") as lab,
    ):
        lab.link("dialup").up()
        started = time.perf_counter()
        accepted: list[str] = []

        async def send_range(numbers: range) -> None:
            gate = asyncio.Semaphore(8)

            async def one(n: int) -> None:
                subject = f"message {n:04d} of {count}"
                async with gate:
                    content = await lab.backend.message(
                        "pc1", mail_from=SENDER, to=[REMOTE], subject=subject, body=subject
                    )
                    result = await lab.backend.send(
                        "pc1", mail_from=SENDER, to=[REMOTE], content=content
                    )
                if result.accepted:
                    accepted.append(subject)

            await asyncio.gather(*(one(n) for n in numbers))

        third = count // 3
        lab.run(send_range(range(0, third)), 600)
        lab.link("dialup").down()
        lab.run(send_range(range(third, 2 * third)), 600)
        lab.link("dialup").up()
        lab.run(send_range(range(2 * third, count)), 600)
        deadline = time.monotonic() + 300
        subjects: Counter[str] = Counter()
        while time.monotonic() < deadline:
            lab.flush("hub")
            lab.settle()
            subjects = Counter(str(m["Subject"]) for m in lab.mailbox("freeuk", "paulmidgley"))
            if sum(subjects.values()) >= len(accepted) and not lab.queue("hub"):
                break
            time.sleep(1)
        seconds = time.perf_counter() - started
        left = len(lab.queue("hub"))
    once = sum(1 for s in accepted if subjects[s] == 1)
    return {
        "messages": count,
        "accepted": len(accepted),
        "delivered_once": once,
        "duplicates": sum(n - 1 for n in subjects.values() if n > 1),
        "missing": sum(1 for s in accepted if subjects[s] == 0),
        "left_queued": left,
        "seconds": seconds,
        "ok": once == count == len(accepted),
    }


def run_all(rounds: int, messages: int, topology: Path = REAL_STORY) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"real software: {topology.name} up/down ...", file=sys.stderr)
    results["up_down"] = bench_real_up_down(rounds, topology)
    print(results["up_down"], file=sys.stderr)
    print("real software: a deferred message and clock advance 5d ...", file=sys.stderr)
    results["advance"] = bench_advance_5d(topology)
    print(results["advance"], file=sys.stderr)
    print(f"real software: {messages} messages over a link flap ...", file=sys.stderr)
    results["lost"] = bench_nothing_lost(messages, topology)
    print(results["lost"], file=sys.stderr)
    return results


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def report(results: dict[str, Any]) -> list[str]:
    lines = ["## Real software (Docker backend)", ""]
    if "error" in results:
        return [*lines, f"Not measured: {results['error']}.", ""]
    ud, adv, lost = results["up_down"], results["advance"], results["lost"]
    lines += [
        f"{ud['topology']}: home-dialup with the hub on Postfix, its fetch on fetchmail, the"
        " ISPs' POP3 on Dovecot; images already built.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
        f"| up (median of {ud['rounds']}) | {ud['up_s']:.2f} s (max {ud['up_max_s']:.2f}) |"
        f" <= 6 s | {verdict(ud['up_s'] <= 6)} |",
        f"| down (median of {ud['rounds']}) | {ud['down_s']:.2f} s (max"
        f" {ud['down_max_s']:.2f}) | <= 2 s | {verdict(ud['down_s'] <= 2)} |",
        f"| a deferred message, `clock advance 5d`: {adv['tries']} tries by Postfix, DSNs"
        f" {', '.join(adv['dsns']) or 'none'} | {adv['seconds']:.1f} s | <= 10 s, delay"
        f" warning then return | {verdict(adv['ok'] and adv['seconds'] <= 10)} |",
        f"| {lost['messages']} messages through the Postfix hub, link up, down, up |"
        f" {lost['delivered_once']} delivered once, {lost['duplicates']} duplicates,"
        f" {lost['missing']} missing, {lost['left_queued']} still queued"
        f" ({lost['seconds']:.0f} s) | every one once | {verdict(lost['ok'])} |",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realmta", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--topology", type=Path, default=REAL_STORY)
    args = parser.parse_args()
    print("\n".join(report(run_all(args.rounds, args.messages, args.topology))))


if __name__ == "__main__":
    main()
