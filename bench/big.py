"""Big labs in process: a generated topology of N clients and D remote domains (each
its MX host), besides a DNS server, a hub and an ISP relay; how fast it comes up and
how much memory it takes (python -m bench.big [CLIENTS DOMAINS]).

The topology is generated as data and validated as a file's would be (the model, then
the semantic checks), without the loader's file-size limit, meant for hand-written files.
The 1,000-MTA lab runs in a process of its own, so its resident memory is its own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab.errors import TopologyError
from lab.topology.model import Topology
from lab.topology.validate import semantic_check

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"up_s": 0.5, "rss_mb": 150}  # the 1,000-MTA lab (100 clients)


def big_data(clients: int, domains: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "dns": {"role": "dns", "networks": {"internet": "10.0.0.53"}},
        "hub": {
            "role": "mta",
            "hostname": "hub.home.example",
            "networks": ["lan", "internet"],
            "local_domains": ["home.example"],
            "users": ["u"],
            "relay_from": ["lan"],
            "smarthost": "isp",
        },
        "isp": {
            "role": "mta",
            "hostname": "smtp.isp.example",
            "networks": ["internet"],
            "relay_from": ["internet"],
        },
    }
    for d in range(domains):
        nodes[f"remote{d}"] = {
            "role": "mta",
            "hostname": f"mx.remote{d}.example",
            "networks": ["internet"],
            "local_domains": [f"remote{d}.example"],
            "users": ["user"],
        }
    for c in range(clients):
        nodes[f"pc{c}"] = {"role": "client", "networks": ["lan"], "submit_to": "hub"}
    return {
        "name": "big",
        "networks": {"lan": {"subnet": "192.168.0.0/16"}, "internet": {"subnet": "10.0.0.0/8"}},
        "dns": {
            "zones": {
                f"remote{d}.example": {"@": {"MX": f"10 mx.remote{d}.example"}}
                for d in range(domains)
            }
        },
        "nodes": nodes,
    }


def big_topology(clients: int, domains: int) -> Topology:
    model = Topology.model_validate(big_data(clients, domains), context={"base": ROOT})
    problems, warnings = semantic_check(model, {})
    if problems:
        raise TopologyError(problems, warnings)
    return model


def rss_mb(pid: int | str = "self") -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def disk_rss_mb() -> float:
    """The resident memory of the lab's disk process (lab.services.diskproc), if one runs."""
    from lab.services.diskproc import DiskProcess

    pid = DiskProcess.shared().pid
    return rss_mb(pid) if pid is not None else 0.0


async def bench_big(clients: int, domains: int) -> dict[str, Any]:
    """Up (timed), resident memory, one message from the last client to the last domain
    (delivered?), down (timed)."""
    import time

    from lab.backends.inprocess.backend import InProcessBackend

    gc.collect()
    before = rss_mb()
    topology = big_topology(clients, domains)
    backend = InProcessBackend(topology)
    t0 = time.perf_counter()
    await backend.up()
    up_s = time.perf_counter() - t0
    after = rss_mb()
    last, to = f"pc{clients - 1}", [f"user@remote{domains - 1}.example"]
    content = await backend.message(
        last, mail_from="u@home.example", to=to, subject="big", body="hi\n"
    )
    result = await backend.send(last, mail_from="u@home.example", to=to, content=content)
    await backend.settle()
    delivered = len(await backend.mailbox(f"remote{domains - 1}", "user"))
    disk_mb = disk_rss_mb()  # (it has written a message by now)
    t1 = time.perf_counter()
    await backend.down()
    down_s = time.perf_counter() - t1
    mtas = sum(1 for n in topology.nodes.values() if str(n.role) == "mta")
    return {
        "clients": clients,
        "domains": domains,
        "nodes": len(topology.nodes),
        "mtas": mtas,
        "up_seconds": up_s,
        "down_seconds": down_s,
        "rss_mb": after + disk_mb,
        "rss_lab_process_mb": after,
        "rss_disk_process_mb": disk_mb,
        "rss_added_mb": after - before,
        "sample_accepted": result.accepted,
        "sample_delivered": delivered,
    }


def bench_big_apart(clients: int, domains: int) -> dict[str, Any]:
    """bench_big in a new Python process (its memory figure is the lab's alone: its own
    process and its disk process)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.big", str(clients), str(domains), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def rows(big: dict[str, Any]) -> list[str]:
    """The report's rows for the 1,000-MTA lab."""
    up_ok = big["up_seconds"] <= TARGETS["up_s"]
    rss_ok = big["rss_mb"] <= TARGETS["rss_mb"]
    return [
        f"| lab of {big['mtas']} MTA hosts (each its own domain and MX) + {big['clients']}"
        f" clients: up | {big['up_seconds'] * 1000:.0f} ms ({big['nodes']} nodes) |"
        f" <= {TARGETS['up_s'] * 1000:.0f} ms | {'meets' if up_ok else 'MISSES'} the target |",
        f"| same lab, in a process of its own: resident memory | {big['rss_mb']:.0f} MB"
        f" (the lab's process {big.get('rss_lab_process_mb', big['rss_mb']):.0f} MB, its disk"
        f" process {big.get('rss_disk_process_mb', 0):.0f} MB) | <= {TARGETS['rss_mb']} MB |"
        f" {'meets' if rss_ok else 'MISSES'} the target |",
    ]


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n_clients, n_domains = (int(args[0]), int(args[1])) if args else (100, 998)
    figures = asyncio.run(bench_big(n_clients, n_domains))
    if "--json" in sys.argv:
        print(json.dumps(figures))
    else:
        print("\n".join(rows(figures)))
        print(f"sample message delivered: {bool(figures['sample_delivered'])}")
