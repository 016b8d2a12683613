"""Docker lab start-up and tear-down: home-dialup with warm images, per phase
(python -m bench.docker [ROUNDS])."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.harness import Lab

HOME_DIALUP = Path(__file__).resolve().parent.parent / "topologies" / "home-dialup.yaml"
UP_TARGET, DOWN_TARGET = 2.0, 0.5  # seconds


def bench_docker_up_down(rounds: int) -> dict[str, Any]:
    """Median seconds of Lab.up / Lab.down on the Docker backend, and of each phase of
    them (images already built: the first round builds them if needed and is not counted)."""
    from lab.backends.docker.engine import docker_client
    from lab.backends.docker.image import ensure_node_image

    client = docker_client()
    ensure_node_image(client)
    client.close()
    ups: list[float] = []
    downs: list[float] = []
    phases: dict[str, list[float]] = {}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="maillab-bench-") as tmp:
            started = time.perf_counter()
            lab = Lab.up(HOME_DIALUP, backend="docker", state_dir=Path(tmp) / "lab")
            ups.append(time.perf_counter() - started)
            result = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["keith@shofar.org.uk"])
            assert result.accepted, result.to_json()
            started = time.perf_counter()
            lab.down()
            downs.append(time.perf_counter() - started)
            for name, seconds in lab.backend.provision.timings.items():  # type: ignore[attr-defined]
                phases.setdefault(name, []).append(seconds)
        print(f"  up {ups[-1]:.2f} s, down {downs[-1]:.2f} s", file=sys.stderr)
    return {
        "rounds": rounds,
        "nodes": 8,
        "up_s": statistics.median(ups),
        "up_max_s": max(ups),
        "down_s": statistics.median(downs),
        "down_max_s": max(downs),
        "phases": {name: statistics.median(times) for name, times in phases.items()},
    }


PHASES = {
    "engine": "connect to the engine",
    "reap": "look for runs of dead processes to remove (one listing)",
    "images": "check the images are built (content hash, one inspect)",
    "plan": "the run's plan: interfaces, resolvers, hosts, forwards; the CA key",
    "containers": "create and start the switch, the management network and the containers",
    "wiring": "bridges, veth pairs and addresses (one exec in the switch)",
    "agents": "every agent's control socket answers (a host's services start as soon as "
    "its agent answers, the DNS hosts' first)",
    "services": "after the last agent answered: every host's services listen",
    "down: settle": "down: every host idle",
    "down: stop agents": "down: agents stop their services",
    "down: remove": "down: containers and network removed",
}


def phase_rows(figures: dict[str, Any]) -> list[str]:
    """The report's rows for the phases of up and down (medians)."""
    rows = []
    for name, seconds in figures.get("phases", {}).items():
        rows.append(f"| {PHASES.get(name, name)} | {seconds * 1000:.0f} ms | | |")
    return rows


if __name__ == "__main__":
    figures = bench_docker_up_down(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(
        f"up {figures['up_s']:.2f} s (max {figures['up_max_s']:.2f}; target <= {UP_TARGET} s),"
        f" down {figures['down_s']:.2f} s (max {figures['down_max_s']:.2f};"
        f" target <= {DOWN_TARGET} s), median of {figures['rounds']}"
    )
    print("\n".join(phase_rows(figures)))
