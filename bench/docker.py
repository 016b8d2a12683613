"""Docker lab start-up and tear-down: home-dialup with warm images (python -m bench.docker)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.harness import Lab

HOME_DIALUP = Path(__file__).resolve().parent.parent / "topologies" / "home-dialup.yaml"


def bench_docker_up_down(rounds: int) -> dict[str, Any]:
    """Median seconds of Lab.up / Lab.down on the Docker backend (images already built:
    the first round builds them if needed and is not counted)."""
    from lab.backends.docker.engine import docker_client
    from lab.backends.docker.image import ensure_node_image

    client = docker_client()
    ensure_node_image(client)
    client.close()
    ups: list[float] = []
    downs: list[float] = []
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
        print(f"  up {ups[-1]:.2f} s, down {downs[-1]:.2f} s", file=sys.stderr)
    return {
        "rounds": rounds,
        "nodes": 8,
        "up_s": statistics.median(ups),
        "up_max_s": max(ups),
        "down_s": statistics.median(downs),
        "down_max_s": max(downs),
    }


if __name__ == "__main__":
    print(bench_docker_up_down(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
