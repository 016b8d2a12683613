"""Lab.reset(): how long putting a used lab back to its initial state takes.

Each round leaves a mess (a message delivered, one queued, the link raised and dropped,
the clock pushed, a DNS edit), then times `Lab.reset()`. Targets: in process <= 5 ms;
Docker with built-in hosts <= 300 ms; Docker with a Postfix hub <= 2.5 s.

python -m bench.reset [--backend inprocess|docker] [--real] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lab.harness import Lab

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"inprocess": 0.005, "docker": 0.300, "docker-real": 2.5}


def mess(lab: Lab) -> None:
    lab.link("dialup").up()
    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    lab.settle()
    lab.link("dialup").down()
    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    lab.clock.advance("1h")
    lab.set_dns("freeuk.com", "MX", [[10, "elsewhere.example"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inprocess")
    parser.add_argument("--real", action="store_true", help="the Postfix hub (Docker)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    name = "home-dialup-real.yaml" if args.real else "home-dialup.yaml"
    key = f"{args.backend}-real" if args.real else args.backend
    with Lab.up(ROOT / "topologies" / name, backend=args.backend) as lab:
        times = []
        for _ in range(args.rounds):
            mess(lab)
            began = time.perf_counter()
            lab.reset()
            times.append(time.perf_counter() - began)
            assert lab.queue("hub") == [], "the queue was not emptied"
    median = statistics.median(times)
    target = TARGETS[key]
    print(
        f"reset {name} on {args.backend}: median {median * 1000:.1f} ms,"
        f" max {max(times) * 1000:.1f} ms over {len(times)} rounds"
        f" (target <= {target * 1000:.0f} ms: {'met' if median <= target else 'MISSED'})"
    )
    return 0 if median <= target else 1


if __name__ == "__main__":
    raise SystemExit(main())
