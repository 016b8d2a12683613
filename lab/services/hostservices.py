"""The services one host runs, assembled from its topology node: the same code in-process
(one `HostServices` per host in the lab's loop) and in a container (one per agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab.errors import LabError
from lab.services.dns import DnsServer
from lab.services.fetch import FetchService
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.services.mta.service import SMTP_PORT, MtaService
from lab.services.pop3 import Pop3Service
from lab.services.resolver import DnsCache, Resolver
from lab.topology.addressing import Addresses, hostname_of
from lab.topology.model import Fault, Service, Topology
from lab.topology.records import RecordTable

SERVICE_PORTS = {"smtp": 25, "pop3": 110, "dns": 53}


class HostServices:
    """DNS, MTA, POP3 and fetch, as the node's services say; started DNS first."""

    def __init__(
        self,
        host: Host,
        records: RecordTable,
        *,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
        link_up: Callable[[], bool] = lambda: True,
    ):
        self.host = host
        self.records = records
        self.connect_timeout = connect_timeout
        self.dns_timeout = dns_timeout
        self.durable = durable
        self.link_up = link_up
        self.dns: DnsServer | None = None
        self.dns_cache = DnsCache(host.clock.time, lambda: records.version)
        self.mta: MtaService | None = None
        self.pop3: Pop3Service | None = None
        self.fetcher: FetchService | None = None

    @property
    def services(self) -> set[Service]:
        return self.host.node.service_set()

    async def start_dns(self) -> None:
        if Service.dns in self.services:
            self.dns = DnsServer(self.host, self.records)
            await self.dns.start()

    async def start_others(self) -> None:
        host = self.host
        if Service.smtp in self.services:
            self.mta = MtaService(
                host,
                Resolver(host.net, timeout=self.dns_timeout, cache=self.dns_cache),
                connect_timeout=self.connect_timeout,
                durable=self.durable,
            )
            await self.mta.start()
        if Service.pop3 in self.services:
            self.pop3 = Pop3Service(host, self.mta)
            await self.pop3.start()
        if Service.fetch in self.services:
            self.fetcher = FetchService(
                host,
                Resolver(host.net, timeout=self.dns_timeout, cache=self.dns_cache),
                self.mta,
                link_up=self.link_up,
            )
            await self.fetcher.start()

    async def stop(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.stop()
        if self.pop3 is not None:
            await self.pop3.stop()
        if self.mta is not None:
            await self.mta.close_sessions()
            self.mta.queue.close()
        for task in list(self.host.tasks):
            task.cancel()

    # acting ----------------------------------------------------------------------------

    def need_mta(self) -> MtaService:
        if self.mta is None:
            raise LabError(f"node {self.host.name!r} runs no MTA (smtp service)")
        return self.mta

    async def flush(self) -> int:
        return await self.need_mta().flush()

    async def fetch(self) -> int:
        if self.fetcher is None:
            raise LabError(f"node {self.host.name!r} has no fetch jobs")
        count: int = await self.fetcher.run_all()
        return count

    def link_changed(self) -> None:
        self.dns_cache.clear()
        if self.fetcher is not None:
            self.fetcher.link_changed()

    def queue(self) -> list[dict[str, Any]]:
        return self.need_mta().list_queue()

    def queue_content(self, queue_id: str) -> bytes:
        return self.need_mta().content(queue_id)

    def mailbox(self, user: str) -> list[dict[str, Any]]:
        if self.mta is not None:
            return self.mta.mailbox(user)
        store = MailStore(self.host.state_dir / "mail", durable=False)
        return [
            {"id": k, "envelope_from": "", "raw": store.read(user, k).decode("utf-8", "replace")}
            for k in store.keys(user)
        ]

    def add_fault(self, fault: dict[str, Any]) -> None:
        self.need_mta().runtime_faults.append(Fault.model_validate(fault))


def submission_target(
    topology: Topology,
    addresses: Addresses,
    records: RecordTable,
    node: str,
    via: str | None,
) -> tuple[str, str, int]:
    """(lab address, server name, port) that `node` submits to: its `submit_to`, or itself
    when it runs an MTA, or an MTA on a network it shares; `via` names another server."""
    spec = topology.nodes[node]
    mtas = [n for n, other in topology.nodes.items() if Service.smtp in other.service_set()]
    target = via or spec.submit_to
    port = spec.submit_port if not via else SMTP_PORT
    if target is None:
        if node in mtas:
            target = node
        else:
            shared = [n for n in mtas if set(addresses[n]) & set(addresses[node])]
            if not shared:
                raise LabError(f"node {node!r} has no MTA to submit to")
            target = shared[0]
    if target in topology.nodes:
        name = hostname_of(topology, target)
        mine = set(addresses[node])
        nets = addresses[target]
        shared_nets = [n for n in nets if n in mine] or list(nets)
        return str(nets[shared_nets[0]]), name, port
    found = records.lookup(target, "A").values("A")
    if not found:
        raise LabError(f"{target!r} does not resolve in the lab")
    return str(found[0]), target, port
