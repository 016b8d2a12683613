"""The services one host runs, assembled from its topology node: the same code in-process
(one `HostServices` per host in the lab's loop) and in a container (one per agent).

`HostServices` is also what a backend acts on for one host (lab.backends.base.HostHandle):
in process the backend calls it directly, in Docker the agent answers the lab's requests
with it. Every acting method is a coroutine, so a proxy over a socket has the same face.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from lab.errors import LabError
from lab.protocols.smtp import SubmitResult
from lab.protocols.wire import (
    LinkState,
    MailboxEntry,
    QueueEntry,
    encode_mailbox,
    encode_queue,
)
from lab.runtime.events import Event
from lab.services.client import submit
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.services.resolver import DnsCache, Resolver
from lab.topology.addressing import Addresses, assign_addresses, hostname_of
from lab.topology.model import DnsFaultRule, Fault, Service, Topology
from lab.topology.records import RecordTable

if TYPE_CHECKING:  # each service's module is loaded when a host runs it (start_*)
    from lab.services.diskproc import DiskProcess
    from lab.services.dns import DnsServer
    from lab.services.fetch import FetchService
    from lab.services.mta.service import MtaService
    from lab.services.pop3 import Pop3Service

SERVICE_PORTS = {"smtp": 25, "pop3": 110, "dns": 53}
SMTP_PORT = SERVICE_PORTS["smtp"]


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
        addresses: Addresses | None = None,
        builtin_smtp: bool = True,
        builtin_fetch: bool = True,
        builtin_pop3: bool = True,
        mail_owner: tuple[int, int] | None = None,
        disk_process: DiskProcess | None = None,
    ):
        self.host = host
        self.builtin_smtp = builtin_smtp  # False: a real MTA is the SMTP service (Docker)
        self.builtin_fetch = builtin_fetch  # False: fetchmail is the fetch service (Docker)
        self.builtin_pop3 = builtin_pop3  # False: a real server (Dovecot) is POP3 (Docker)
        self.mail_owner = mail_owner  # who the Maildirs belong to (that server's uid, gid)
        self.disk_process = disk_process  # where the MTA's disk work runs (None: a thread)
        self.records = records
        self.connect_timeout = connect_timeout
        self.dns_timeout = dns_timeout
        self.durable = durable
        self.addresses = addresses if addresses is not None else assign_addresses(host.topology)
        self.dns: DnsServer | None = None
        self.dns_cache = DnsCache(host.clock.time, lambda: records.version)
        self.mta: MtaService | None = None
        self.pop3: Pop3Service | None = None
        self.fetcher: FetchService | None = None
        self.captured: dict[str, bytes] | None = None
        self.drops: dict[str, Any] = {}  # link -> the clock timer of its drop_at

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def services(self) -> set[Service]:
        return self.host.node.service_set()

    async def start_dns(self) -> None:
        if Service.dns in self.services:
            from lab.services.dns import DnsServer

            self.dns = DnsServer(self.host, self.records)
            await self.dns.start()

    async def start_others(self) -> None:
        host = self.host
        if Service.smtp in self.services and self.builtin_smtp:
            from lab.services.mta.service import MtaService

            self.mta = MtaService(
                host,
                Resolver(host.net, timeout=self.dns_timeout, cache=self.dns_cache),
                connect_timeout=self.connect_timeout,
                durable=self.durable,
                disk_process=self.disk_process,
            )
            self.mta.store.owner = self.mail_owner
            await self.mta.start()
        if Service.pop3 in self.services and self.builtin_pop3:
            from lab.services.pop3 import Pop3Service

            self.pop3 = Pop3Service(host, self.mta)
            await self.pop3.start()
        if Service.fetch in self.services and self.builtin_fetch:
            from lab.services.fetch import FetchService

            self.fetcher = FetchService(
                host,
                Resolver(host.net, timeout=self.dns_timeout, cache=self.dns_cache),
                self.mta,
                link_up=self.link_up,
            )
            await self.fetcher.start()

    async def run_queues(self) -> None:
        """Start the queue runs of what a previous run left on disk: called once every
        host of the lab listens (in-process and in Docker alike)."""
        if self.mta is not None:
            self.mta.run_queue()

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

    async def reset(self) -> None:
        """Back to the state the host started in, its services kept running (`Lab.reset()`):
        its background work cancelled, queue, mailboxes, maildrops, fetch journals and
        resolver cache emptied, faults and greylist forgotten. The lab's clock, DNS
        records and links are the backend's to reset."""
        tasks = [t for t in self.host.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.dns_cache.clear()
        if self.dns is not None:
            self.dns.gates.clear()  # the fault rules' hits and draws start again
        if self.captured is not None:
            self.captured.clear()
        if self.pop3 is not None:
            await self.pop3.reset()
        if self.mta is not None:
            await self.mta.reset()
        else:
            MailStore(self.host.state_dir / "mail", durable=False).clear()
        if self.fetcher is not None:
            self.fetcher.reset()

    # the links ---------------------------------------------------------------------------

    def link_up(self) -> bool:
        """True when every link of this host is up (its fetch jobs poll only then)."""
        return all(
            self.host.net.link_state(link.network) == LinkState.UP
            for link in self.host.topology.links.values()
            if link.node == self.host.name
        )

    async def set_link(self, link: str, state: str) -> int:
        """Raise or drop one of this host's links; returns the connections cut. The host
        hears of it at once: its resolver forgets what it cached, its fetch jobs poll
        again (up) or stop polling (down)."""
        spec = self.host.topology.links.get(link)
        if spec is None or spec.node != self.host.name:
            raise LabError(f"{link!r} is not a link of node {self.host.name!r}")
        cut = await self.host.net.set_link(spec.network, LinkState(state))
        self.link_changed()
        return cut

    async def arm_drops(
        self, link: str, drop_after: int | None = None, drop_at: float | None = None
    ) -> None:
        """Hang `link` up once: after `drop_after` more bytes crossed it, or at lab time
        `drop_at` (a modem that hangs up mid-message); None: not that way. Replaces what
        was armed before."""
        spec = self.host.topology.links[link]
        old = self.drops.pop(link, None)
        if old is not None:
            old.cancel()
        self.host.net.watch_bytes(
            spec.network,
            drop_after,
            lambda: self.host.spawn(self.hang_up(link, "drop_after"), "hang-up"),
        )
        if drop_at is not None:
            self.drops[link] = self.host.call_at(
                drop_at, lambda: self.hang_up(link, "drop_at"), "hang-up"
            )

    async def hang_up(self, link: str, cause: str) -> None:
        """The link's modem hangs up: the link goes down, as `link down` takes it."""
        spec = self.host.topology.links[link]
        if self.host.net.link_state(spec.network) == LinkState.DOWN:
            return
        cut = await self.set_link(link, LinkState.DOWN.value)
        self.host.emit("link.down", link=link, network=spec.network, cut=cut, cause=cause)

    def link_changed(self) -> None:
        self.dns_cache.clear()
        if self.fetcher is not None:
            self.fetcher.link_changed()

    # acting ----------------------------------------------------------------------------

    def need_mta(self) -> MtaService:
        if self.mta is None:
            raise LabError(f"node {self.host.name!r} runs no MTA (smtp service)")
        return self.mta

    async def submit(
        self, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        """Submit a message from this host over SMTP, to its submission target."""
        address, name, port = submission_target(
            self.host.topology, self.addresses, self.records, self.host.name, via
        )
        return await submit(
            self.host,
            address,
            server_name=name,
            port=port,
            mail_from=mail_from,
            recipients=list(to),
            content=content,
            timeout=self.connect_timeout + 10,
        )

    async def flush(self) -> int:
        """Start a queue run (sendmail -q) as the host's work, which settling the lab
        waits for; how many messages it tries. Started rather than awaited: over an
        impaired link it may wait for lab time, which only a settled lab moves."""
        mta = self.need_mta()
        count = len(mta.queue.list())
        self.host.spawn(mta.flush(), "flush")
        await asyncio.sleep(0)
        return count

    async def fetch(self) -> int:
        if self.fetcher is None:
            raise LabError(f"node {self.host.name!r} has no fetch jobs")
        count: int = await self.fetcher.run_all()
        return count

    async def queue(self) -> list[QueueEntry]:
        return encode_queue(self.need_mta().list_queue())

    async def queue_content(self, queue_id: str) -> bytes:
        return self.need_mta().content(queue_id)

    async def capture(self) -> dict[str, bytes]:
        """Queue id -> content of every message this host queues from now on, read as it
        is queued (DSNs included: they may be gone from the queue a moment later)."""
        mta = self.need_mta()
        if self.captured is None:
            self.captured = captured = {}

            def listener(event: Event) -> None:
                if event.node == self.host.name and event.kind == "queue.queued":
                    with contextlib.suppress(KeyError, OSError):
                        captured[str(event.get("id"))] = mta.content(str(event.get("id")))

            self.host.events.listen(listener)
        return self.captured

    async def mailbox(self, user: str) -> list[MailboxEntry]:
        if self.mta is not None:
            return encode_mailbox(self.mta.mailbox(user))
        store = MailStore(self.host.state_dir / "mail", durable=False)
        return [
            MailboxEntry(id=k, envelope_from="", raw=store.read(user, k).decode("utf-8", "replace"))
            for k in store.keys(user)
        ]

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        self.records.set(name, rtype, values)

    async def set_dns_fault(self, name: str, fault: str | None) -> None:
        self.records.set_fault(name, fault)

    async def set_dns_fault_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the lab DNS's glob fault rules (lab.topology.model.DnsFaultRule)."""
        self.records.set_fault_rules([DnsFaultRule.model_validate(r) for r in rules])

    async def add_fault(self, fault: dict[str, Any]) -> None:
        self.need_mta().runtime_faults.append(Fault.model_validate(fault))

    async def clear_faults(self) -> int:
        """Forget the faults added at run time; how many there were."""
        mta = self.need_mta()
        count = len(mta.runtime_faults)
        mta.runtime_faults.clear()
        mta.fault_gates.forget_from(len(mta.node.faults))
        return count


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
