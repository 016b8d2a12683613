"""Lab.reset(): how long putting a used lab back to its initial state takes.

Each round leaves a mess (a message delivered, one queued, the link raised and dropped,
the clock pushed, a DNS edit), then times `Lab.reset()`. Targets: in process <= 5 ms;
Docker with built-in hosts <= 300 ms; Docker with a Postfix hub <= 2.5 s.

python -m bench.reset [--backend inprocess|docker] [--real] [--rounds N]   (one figure)
python -m bench.reset --all                                                (all three)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lab.harness import Lab

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"inprocess": 0.005, "docker": 0.300, "docker-real": 2.5}
LABELS = {
    "inprocess": "in process, home-dialup",
    "docker": "Docker, home-dialup (built-in hosts)",
    "docker-real": "Docker, home-dialup-real (Postfix hub, fetchmail, Dovecot)",
}


def mess(lab: Lab) -> None:
    lab.link("dialup").up()
    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    lab.settle()
    lab.link("dialup").down()
    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    lab.clock.advance("1h")
    lab.set_dns("freeuk.com", "MX", [[10, "elsewhere.example"]])


def bench_reset(backend: str, real: bool, rounds: int) -> dict[str, Any]:
    """Median and max seconds of `Lab.reset()` after `mess`, over `rounds` rounds; each
    reset lab is checked (empty queue and mailbox, link down)."""
    name = "home-dialup-real.yaml" if real else "home-dialup.yaml"
    key = f"{backend}-real" if real else backend
    with Lab.up(ROOT / "topologies" / name, backend=backend) as lab:
        times = []
        for _ in range(rounds):
            mess(lab)
            began = time.perf_counter()
            lab.reset()
            times.append(time.perf_counter() - began)
            assert lab.queue("hub") == [], "the queue was not emptied"
            assert lab.mailbox("freeuk", "paulmidgley") == [], "the mailbox was not emptied"
            assert lab.link("dialup").state == "down", "the link was left up"
    median = statistics.median(times)
    return {
        "key": key,
        "topology": name,
        "rounds": rounds,
        "median_s": median,
        "max_s": max(times),
        "target_s": TARGETS[key],
        "met": median <= TARGETS[key],
    }


def run_all(rounds: int, docker: bool = True) -> dict[str, Any]:
    """Every reset figure: in process, then (when an engine answers) the two on Docker;
    a figure that could not be measured carries its error."""
    from lab.errors import LabError

    results: dict[str, Any] = {}
    cases = [("inprocess", False)] + ([("docker", False), ("docker", True)] if docker else [])
    for backend, real in cases:
        key = f"{backend}-real" if real else backend
        print(f"reset, {LABELS[key]} ...", file=sys.stderr)
        try:
            results[key] = bench_reset(
                backend, real, rounds * 3 if backend == "inprocess" else rounds
            )
        except LabError as exc:
            results[key] = {"key": key, "error": str(exc)}
        print(results[key], file=sys.stderr)
    return results


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def report(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Reset",
        "",
        "`Lab.reset()` on a used lab (`python -m bench.reset --all`): each round delivers a"
        " message, queues another behind the dropped link, advances the clock an hour and"
        " edits the DNS, then resets; the lab is checked clean after each reset.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        figure = results.get(key)
        if figure is None:
            continue
        target = f"<= {_ms(TARGETS[key])}"
        if "error" in figure:
            lines.append(f"| reset, {label} | not measured: {figure['error']} | {target} | |")
            continue
        verdict = "meets the target" if figure["met"] else "MISSES the target"
        lines.append(
            f"| reset, {label} (median of {figure['rounds']}) | {_ms(figure['median_s'])}"
            f" (max {_ms(figure['max_s'])}) | {target} | {verdict} |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inprocess")
    parser.add_argument("--real", action="store_true", help="the Postfix hub (Docker)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--all", action="store_true", help="in process and both Docker labs")
    args = parser.parse_args()
    if args.all:
        results = run_all(args.rounds)
    else:
        figure = bench_reset(args.backend, args.real, args.rounds)
        results = {figure["key"]: figure}
    print("\n".join(report(results)))
    return 0 if all(r.get("met") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
