"""The in-process backend: a whole mail world in one asyncio loop, in milliseconds.

Each host is a set of service objects sharing a `Host` (name, virtual network, lab clock,
event bus, state directory), assembled by `HostServices`, which is also the host's
handle for the common code of lab.backends.base. Their sockets are real: every interface
listens on its own loopback address (see net.py), so `telnet` and `swaks` from the host
machine work against the printed endpoints, and `dig @ADDR -p PORT` against the lab DNS.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from pathlib import Path

from lab.backends.base import LabBackend
from lab.backends.inprocess.net import VirtualNetwork
from lab.runtime.clock import LabClock
from lab.runtime.events import EventBus
from lab.services.diskproc import DiskProcess
from lab.services.host import Host, settle_tasks
from lab.services.hostservices import SERVICE_PORTS, HostServices
from lab.services.tls import LabCA
from lab.software import check_topology
from lab.topology.addressing import hostname_of
from lab.topology.impair import Impairment
from lab.topology.model import Topology


class InProcessBackend(LabBackend[HostServices]):
    name = "inprocess"

    def __init__(
        self,
        topology: Topology,
        *,
        state_dir: Path | None = None,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
        disk_process: bool = True,
    ):
        super().__init__(
            topology,
            state_dir=state_dir,
            connect_timeout=connect_timeout,
            dns_timeout=dns_timeout,
            durable=durable,
        )
        self.clock = LabClock(settle=self.settle)
        self.events = EventBus(self.clock.time, self.state_dir / "events.jsonl")
        self.vnet = VirtualNetwork(topology, self.addresses, self.operator, clock=self.clock)
        self.ca: LabCA | None = None
        # the hosts' disk work runs in the disk process (lab.services.diskproc), not in
        # threads of this one: there it does not take the interpreter lock from the loop
        self.disk_process = disk_process

    @property
    def services(self) -> dict[str, HostServices]:
        """Each host's services (its handle)."""
        return self.handles

    @property
    def hosts(self) -> dict[str, Host]:
        return {name: services.host for name, services in self.handles.items()}

    # lifecycle -------------------------------------------------------------------------

    async def up(self) -> None:
        check_topology(self.topology, self.name)
        self.events.bind()
        self.clock.on_error = lambda timer, exc: self.events.emit(
            "lab", "clock.error", timer=timer, error=f"{type(exc).__name__}: {exc}"
        )
        self.clock.start()
        self.ca = LabCA(self.state_dir)
        disk = DiskProcess.shared() if self.disk_process else None
        for name, node in self.topology.nodes.items():
            host = Host(
                name=name,
                hostname=hostname_of(self.topology, name),
                node=node,
                topology=self.topology,
                addresses={net: str(a) for net, a in self.addresses[name].items()},
                net=self.vnet.host(name),
                clock=self.clock,
                events=self.events,
                state_dir=self.state_dir / "nodes" / name,
                tls=self.ca,
            )
            self.handles[name] = HostServices(
                host,
                self.records,
                connect_timeout=self.connect_timeout,
                dns_timeout=self.dns_timeout,
                durable=self.durable,
                addresses=self.addresses,
                disk_process=disk,
            )
        # DNS first: the others resolve through it.
        for services in self.handles.values():
            await services.start_dns()
        for services in self.handles.values():
            await services.start_others()
        # Every host listens now: only then do queues left by an earlier run go out.
        for services in self.handles.values():
            await services.run_queues()
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        self.dialer.start(self.clock)
        self.listen_links()
        await self.impair_as_declared()
        self.events.emit(
            "lab", "lab.up", backend=self.name, nodes=list(self.handles), seed=self.topology.seed
        )

    async def down(self) -> None:
        await self.settle(timeout=5.0)
        await self.clock.stop()
        self.vnet.cut_paced()
        for services in self.handles.values():
            await services.stop()
        for services in self.handles.values():
            await services.host.net.close()
        for conn in list(self.vnet.conns.values()):
            conn.close()
        self.events.emit("lab", "lab.down")
        self.events.close()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def settle(self, timeout: float = 60.0) -> None:
        await settle_tasks(self.hosts.values(), timeout, clock_wait=self.vnet)

    async def reset_hosts(self) -> None:
        """Cut every connection and cancel every host's work first (nothing of one host
        may reach another already reset), then the clock, then each host."""
        for conn in list(self.vnet.conns.values()):
            conn.close()
        self.vnet.conns.clear()
        tasks = [t for h in self.hosts.values() for t in h.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.clock.reset()
        self.vnet.parked = 0
        for services in self.handles.values():
            await services.reset()

    async def shape(self, network: str, node: str | None, impairment: Impairment | None) -> None:
        self.vnet.impair(network, node, impairment)

    async def shape_as_declared(self) -> None:
        self.vnet.impair_as_declared()

    # the clock ---------------------------------------------------------------------------

    async def advance(self, seconds: float) -> int:
        ran = await self.clock.advance(seconds)
        self.events.emit("lab", "clock.advanced", seconds=seconds, timers=ran)
        return ran

    def clock_time(self) -> float:
        return self.clock.time()

    def clock_offset(self) -> float:
        return self.clock.offset

    # what is this backend's own -----------------------------------------------------------

    def dns_copies(self) -> Iterable[HostServices]:
        return ()  # every host reads the lab's own record table

    def endpoints(self, node: str) -> dict[str, str]:
        endpoints: dict[str, str] = {}
        for service, port in SERVICE_PORTS.items():
            for network, address in self.addresses[node].items():
                ep = self.vnet.endpoint(str(address), port)
                if ep is not None:
                    endpoints.setdefault(service, f"{ep.real_host}:{ep.real_port}")
                    endpoints.setdefault(f"{service}@{network}", f"{ep.real_host}:{ep.real_port}")
        return endpoints

    def operator_address(self) -> str:
        return self.vnet.operator_address()
