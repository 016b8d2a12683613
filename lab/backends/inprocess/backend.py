"""The in-process backend: a whole mail world in one asyncio loop, in milliseconds.

Each host is a set of service objects sharing a `Host` (name, virtual network, lab clock,
event bus, state directory). Their sockets are real: every interface listens on its own
loopback address (see virtualnet.py), so `telnet` and `swaks` from the host machine work
against the printed endpoints, and `dig @ADDR -p PORT` against the lab DNS.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from lab.backends.base import BackendCommon
from lab.backends.inprocess.net import VirtualNetwork
from lab.errors import LabError
from lab.runtime.clock import LabClock
from lab.runtime.events import EventBus
from lab.services.client import SubmitResult, submit
from lab.services.host import Host, settle_tasks
from lab.services.hostservices import SERVICE_PORTS, HostServices, submission_target
from lab.services.mta.service import MtaService
from lab.services.tls import LabCA
from lab.software import check_supported
from lab.topology.addressing import hostname_of
from lab.topology.model import Topology


class InProcessBackend(BackendCommon):
    name = "inprocess"

    def __init__(
        self,
        topology: Topology,
        *,
        state_dir: Path | None = None,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
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
        self.vnet = VirtualNetwork(topology, self.addresses, self.operator)
        self.hosts: dict[str, Host] = {}
        self.mtas: dict[str, MtaService] = {}
        self.fetchers: dict[str, Any] = {}
        self.pop3: dict[str, Any] = {}
        self.services: dict[str, HostServices] = {}
        self.ca: LabCA | None = None

    # lifecycle -------------------------------------------------------------------------

    async def up(self) -> None:
        for name, node in self.topology.nodes.items():
            check_supported(name, node.software.value, self.name)
        self.events.bind()
        self.clock.on_error = lambda timer, exc: self.events.emit(
            "lab", "clock.error", timer=timer, error=f"{type(exc).__name__}: {exc}"
        )
        self.clock.start()
        self.ca = LabCA(self.state_dir)
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
            self.hosts[name] = host
        for name, host in self.hosts.items():
            self.services[name] = HostServices(
                host,
                self.records,
                connect_timeout=self.connect_timeout,
                dns_timeout=self.dns_timeout,
                durable=self.durable,
                link_up=functools.partial(self.link_is_up, name),
            )
        # DNS first: the others resolve through it.
        for services in self.services.values():
            await services.start_dns()
        for name, services in self.services.items():
            await services.start_others()
            if services.mta is not None:
                self.mtas[name] = services.mta
            if services.pop3 is not None:
                self.pop3[name] = services.pop3
            if services.fetcher is not None:
                self.fetchers[name] = services.fetcher
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        self.events.emit("lab", "lab.up", backend=self.name, nodes=list(self.hosts))

    async def down(self) -> None:
        await self.settle(timeout=5.0)
        await self.clock.stop()
        for services in self.services.values():
            await services.stop()
        for host in self.hosts.values():
            await host.net.close()  # type: ignore[attr-defined]
        for conn in list(self.vnet.conns.values()):
            conn.close()
        self.events.emit("lab", "lab.down")
        self.events.close()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def settle(self, timeout: float = 60.0) -> None:
        await settle_tasks(self.hosts.values(), timeout)

    # acting ----------------------------------------------------------------------------

    def _host(self, node: str) -> Host:
        self.check_node(node)
        return self.hosts[node]

    def _mta(self, node: str) -> MtaService:
        self._host(node)
        if node not in self.mtas:
            raise LabError(f"node {node!r} runs no MTA (smtp service)")
        return self.mtas[node]

    def submission_target(self, node: str, via: str | None) -> tuple[str, str, int]:
        """(lab address, server name, port) a node submits to."""
        self._host(node)
        return submission_target(self.topology, self.addresses, self.records, node, via)

    async def send(
        self, node: str, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        host = self._host(node)
        address, name, port = self.submission_target(node, via)
        return await submit(
            host,
            address,
            server_name=name,
            port=port,
            mail_from=mail_from,
            recipients=to,
            content=content,
            timeout=self.connect_timeout + 10,
        )

    async def set_link(self, link: str, up: bool) -> None:
        self.check_link(link)
        spec = self.topology.links[link]
        iface = self.vnet.interfaces[(spec.node, spec.network)]
        if iface.up == up:
            self.events.emit(spec.node, "link.unchanged", link=link, state="up" if up else "down")
            return
        cut = self.vnet.set_link(spec.node, spec.network, up)
        self.services[spec.node].dns_cache.clear()  # its resolver finds the link changed
        self.events.emit(
            spec.node, "link.up" if up else "link.down", link=link, network=spec.network, cut=cut
        )
        if up:
            for hook in spec.on_up:
                self.events.emit(spec.node, "link.hook", link=link, hook=hook.value)
                if hook.value == "flush" and spec.node in self.mtas:
                    await self.mtas[spec.node].flush()
                elif hook.value == "fetch" and spec.node in self.fetchers:
                    await self.fetchers[spec.node].run_all()
                await self.settle()
        for fetcher in self.fetchers.values():
            if hasattr(fetcher, "link_changed"):
                fetcher.link_changed()

    def link_state(self, link: str) -> str:
        spec = self.topology.links[link]
        return "up" if self.vnet.interfaces[(spec.node, spec.network)].up else "down"

    def link_is_up(self, node: str) -> bool:
        """True when every link of the node is up (the fetch service polls only then)."""
        return all(
            self.vnet.interfaces[(link.node, link.network)].up
            for link in self.topology.links.values()
            if link.node == node
        )

    async def advance(self, seconds: float) -> int:
        ran = await self.clock.advance(seconds)
        self.events.emit("lab", "clock.advanced", seconds=seconds, timers=ran)
        return ran

    def now(self) -> float:
        return self.clock.time()

    async def flush(self, node: str) -> int:
        count = await self._mta(node).flush()
        await self.settle()
        return count

    async def fetch(self, node: str) -> int:
        self._host(node)
        if node not in self.fetchers:
            raise LabError(f"node {node!r} has no fetch jobs")
        count: int = await self.fetchers[node].run_all()
        await self.settle()
        return count

    def queue(self, node: str) -> list[dict[str, Any]]:
        return self._mta(node).list_queue()

    def mailbox(self, node: str, user: str) -> list[dict[str, Any]]:
        self._host(node)
        return self.services[node].mailbox(user)

    def capture_queued(self, node: str) -> dict[str, bytes]:
        """Queue id -> content of every message `node` queues from now on, read as it is
        queued (DSNs included: they may be gone from the queue a moment later)."""
        mta = self._mta(node)
        captured: dict[str, bytes] = {}

        def listener(event: Any) -> None:
            if event.node == node and event.kind == "queue.queued":
                captured[event.get("id")] = mta.content(event.get("id"))

        self.events.listen(listener)
        return captured

    def queue_content(self, node: str, queue_id: str) -> bytes:
        return self._mta(node).content(queue_id)

    def status(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for name, host in self.hosts.items():
            endpoints: dict[str, str] = {}
            for service, port in SERVICE_PORTS.items():
                for network, address in host.addresses.items():
                    ep = self.vnet.endpoint(address, port)
                    if ep is not None:
                        endpoints.setdefault(service, f"{ep.real_host}:{ep.real_port}")
                        endpoints.setdefault(
                            f"{service}@{network}", f"{ep.real_host}:{ep.real_port}"
                        )
            nodes[name] = {
                "hostname": host.hostname,
                "services": sorted(s.value for s in host.node.service_set()),
                "addresses": dict(host.addresses),
                "endpoints": endpoints,
            }
        links = {
            name: {"state": self.link_state(name), "node": link.node, "network": link.network}
            for name, link in self.topology.links.items()
        }
        return {
            "name": self.topology.name,
            "backend": self.name,
            "nodes": nodes,
            "links": links,
            "operator": {"node": self.operator, "address": self.vnet.operator_address()},
            "clock": {"time": self.clock.time(), "offset": self.clock.offset},
            "state_dir": str(self.state_dir),
            "ca": str(self.state_dir / "lab-ca.pem"),
        }

    def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        self.records.set(name, rtype, values)
        self.events.emit(
            "lab", "dns.changed", name=name, type=rtype, values=[str(v) for v in values]
        )

    def set_dns_fault(self, name: str, fault: str | None) -> None:
        self.records.set_fault(name, fault)
        self.events.emit("lab", "dns.fault", name=name, fault=fault or "none")

    def add_fault(self, node: str, fault: dict[str, Any]) -> None:
        self._mta(node)
        self.services[node].add_fault(fault)
        self.events.emit(node, "fault.added", **{k: str(v) for k, v in fault.items()})
