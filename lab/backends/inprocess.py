"""The in-process backend: a whole mail world in one asyncio loop, in milliseconds.

Each host is a set of service objects sharing a `Host` (name, virtual network, lab clock,
event bus, state directory). Their sockets are real: every interface listens on its own
loopback address (see virtualnet.py), so `telnet` and `swaks` from the host machine work
against the printed endpoints, and `dig @ADDR -p PORT` against the lab DNS.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lab.backends.virtualnet import VirtualNetwork
from lab.errors import LabError
from lab.harness.clock import LabClock
from lab.harness.events import EventBus
from lab.nodes.client import SubmitResult, build_message, submit
from lab.nodes.dns import DnsServer
from lab.nodes.fetch import FetchService
from lab.nodes.host import Host
from lab.nodes.mta.service import SMTP_PORT, MtaService
from lab.nodes.pop3 import Pop3Service
from lab.nodes.resolver import Resolver
from lab.nodes.tls import LabCA
from lab.software import check_supported
from lab.topology.addressing import assign_addresses, hostname_of
from lab.topology.model import Fault, Service, Topology
from lab.topology.records import RecordTable

SERVICE_PORTS = {"smtp": 25, "pop3": 110, "dns": 53}


class InProcessBackend:
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
        self.topology = topology
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix=f"maillab-{topology.name}-"))
        self.connect_timeout = connect_timeout
        self.dns_timeout = dns_timeout
        self.durable = durable
        self.clock = LabClock(settle=self.settle)
        self.events = EventBus(self.clock.time, self.state_dir / "events.jsonl")
        self.addresses = assign_addresses(topology)
        self.records = RecordTable.from_topology(topology, self.addresses)
        self.operator = topology.operator or next(
            (n for n, node in topology.nodes.items() if Service.client in node.service_set()), None
        )
        self.vnet = VirtualNetwork(topology, self.addresses, self.operator)
        self.hosts: dict[str, Host] = {}
        self.mtas: dict[str, MtaService] = {}
        self.fetchers: dict[str, Any] = {}
        self.pop3: dict[str, Any] = {}
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
        # DNS first: the others resolve through it.
        for host in self.hosts.values():
            if Service.dns in host.node.service_set():
                await DnsServer(host, self.records).start()
        for name, host in self.hosts.items():
            services = host.node.service_set()
            if Service.smtp in services:
                mta = MtaService(
                    host,
                    Resolver(host.net, timeout=self.dns_timeout),
                    connect_timeout=self.connect_timeout,
                    durable=self.durable,
                )
                await mta.start()
                self.mtas[name] = mta
            await self._start_extra(name, host, services)
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        self.events.emit("lab", "lab.up", backend=self.name, nodes=list(self.hosts))

    async def _start_extra(self, name: str, host: Host, services: set[Service]) -> None:
        """The POP3 and fetch services, when the node runs them."""
        if Service.pop3 in services:
            pop = Pop3Service(host, self.mtas.get(name))
            await pop.start()
            self.pop3[name] = pop
        if Service.fetch in services:
            fetcher = FetchService(
                host,
                Resolver(host.net, timeout=self.dns_timeout),
                self.mtas.get(name),
                link_up=functools.partial(self.link_is_up, name),
            )
            await fetcher.start()
            self.fetchers[name] = fetcher

    async def down(self) -> None:
        await self.settle(timeout=5.0)
        await self.clock.stop()
        for fetcher in self.fetchers.values():
            await fetcher.stop()
        for pop in self.pop3.values():
            await pop.stop()
        for mta in self.mtas.values():
            mta.queue.close()
        for host in self.hosts.values():
            for task in list(host.tasks):
                task.cancel()
            await host.net.close()  # type: ignore[attr-defined]
        for conn in list(self.vnet.conns.values()):
            conn.close()
        self.events.emit("lab", "lab.down")
        self.events.close()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def settle(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = asyncio.current_task()
        while True:
            tasks = [
                t for h in self.hosts.values() for t in h.tasks if t is not current and not t.done()
            ]
            if not tasks:
                # one more turn of the loop: a finishing task may start another
                await asyncio.sleep(0)
                tasks = [
                    t
                    for h in self.hosts.values()
                    for t in h.tasks
                    if t is not current and not t.done()
                ]
                if not tasks:
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.wait(tasks, timeout=remaining)

    # acting ----------------------------------------------------------------------------

    def _host(self, node: str) -> Host:
        if node not in self.hosts:
            raise LabError(f"unknown node {node!r}; expected one of: {', '.join(self.hosts)}")
        return self.hosts[node]

    def _mta(self, node: str) -> MtaService:
        self._host(node)
        if node not in self.mtas:
            raise LabError(f"node {node!r} runs no MTA (smtp service)")
        return self.mtas[node]

    def submission_target(self, node: str, via: str | None) -> tuple[str, str, int]:
        """(lab address, server name, port) a node submits to."""
        host = self._host(node)
        target = via or host.node.submit_to
        port = host.node.submit_port if not via else SMTP_PORT
        if target is None:
            if node in self.mtas:
                target = node
            else:
                shared = [
                    n for n in self.mtas if set(self.addresses[n]) & set(self.addresses[node])
                ]
                if not shared:
                    raise LabError(f"node {node!r} has no MTA to submit to")
                target = shared[0]
        name = target
        if target in self.topology.nodes:
            name = hostname_of(self.topology, target)
            mine = set(self.addresses[node])
            nets = self.addresses[target]
            shared_nets = [n for n in nets if n in mine] or list(nets)
            return str(nets[shared_nets[0]]), name, port
        found = self.records.lookup(target, "A").values("A")
        if not found:
            raise LabError(f"{target!r} does not resolve in the lab")
        return str(found[0]), name, port

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

    def message(
        self,
        node: str,
        *,
        mail_from: str,
        to: list[str],
        subject: str,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        return build_message(
            mail_from=mail_from,
            to=to,
            subject=subject,
            body=body,
            headers=headers,
            hostname=self._host(node).hostname,
            date=self.clock.time(),
        )

    async def set_link(self, link: str, up: bool) -> None:
        if link not in self.topology.links:
            raise LabError(
                f"unknown link {link!r}; expected one of: {', '.join(self.topology.links)}"
            )
        spec = self.topology.links[link]
        iface = self.vnet.interfaces[(spec.node, spec.network)]
        if iface.up == up:
            self.events.emit(spec.node, "link.unchanged", link=link, state="up" if up else "down")
            return
        cut = self.vnet.set_link(spec.node, spec.network, up)
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
        host = self._host(node)
        if node in self.mtas:
            return self.mtas[node].mailbox(user)
        from lab.nodes.maildir import MailStore

        store = MailStore(host.state_dir / "mail", durable=False)
        return [
            {"id": k, "envelope_from": "", "raw": store.read(user, k).decode("utf-8", "replace")}
            for k in store.keys(user)
        ]

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
        self._mta(node).runtime_faults.append(Fault.model_validate(fault))
        self.events.emit(node, "fault.added", **{k: str(v) for k, v in fault.items()})
