"""The backend contract: what a Lab needs from whatever brings a topology to life.

Two implementations keep to it, with the same file names' roles: `inprocess` (asyncio,
one process, loopback addresses) and `docker` (a container per host).

Every method of the contract is a coroutine, on both backends. Async rather than sync
because the Docker backend's answers come over sockets: listing a queue, reading a
mailbox or editing the DNS is a request to an agent, so a synchronous contract would
hide a blocking round trip (or a hop to another thread) in every call, and could not be
called on the lab's own loop, where the control server runs. The in-process backend
has its answers at hand; a coroutine that returns at once costs it nothing. So nobody
asks which kind of answer a backend gives: the Lab (lab.harness) runs them on its loop
thread for synchronous callers and pytest, the control server awaits them.

What both backends do alike is written once, in `LabBackend`, over a handle per host
with the same coroutines (`HostHandle`): in process the host's `HostServices` itself,
in Docker a proxy over the agent's control socket (lab.backends.docker.control), which
the agent answers with its own `HostServices`. A backend adds what is its own: bringing
hosts up and down, settling, the clock, and where its endpoints are.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from lab.backends.contract import Backend, HostHandle
from lab.errors import LabError
from lab.protocols.smtp import SubmitResult
from lab.protocols.wire import LinkState, MailboxEntry, QueueEntry
from lab.runtime.events import EventBus
from lab.topology.impair import Impairment
from lab.topology.model import Hook, Service, Topology

__all__ = ["Backend", "HostHandle", "LabBackend", "backend_class"]

_LISTENING = (Service.smtp, Service.pop3, Service.dns)  # the services with an endpoint


H = TypeVar("H", bound=HostHandle)


class LabBackend(Generic[H]):
    """What both backends do the same way, over their hosts' handles (`self.handles`):
    their options, the topology's addresses and DNS records, the operator, checking
    names, composing a node's message, submitting, links and their on_up hooks, flush
    and fetch, queues and mailboxes, DNS and fault edits, and the status."""

    name = ""
    events: EventBus

    def __init__(
        self,
        topology: Topology,
        *,
        state_dir: Path | None = None,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
    ):
        from lab.backends.dialer import Dialer
        from lab.topology.addressing import assign_addresses
        from lab.topology.records import RecordTable

        if topology.seed is None:  # a seed of its own, said in lab.up: the run replays
            topology = topology.model_copy(update={"seed": secrets.randbelow(2**31)})
        self.topology = topology
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix=f"maillab-{topology.name}-"))
        self.connect_timeout = connect_timeout
        self.dns_timeout = dns_timeout
        self.durable = durable
        self.addresses = assign_addresses(topology)
        self.records = RecordTable.from_topology(topology, self.addresses)
        self._records_version = self.records.version
        # the node a person on this machine acts as: the topology's, or its first client
        self.operator: str | None = topology.operator or next(
            (n for n, node in topology.nodes.items() if Service.client in node.service_set()), None
        )
        self.handles: dict[str, H] = {}
        self.link_states: dict[str, LinkState] = {
            name: LinkState(link.state) for name, link in topology.links.items()
        }
        self.dialer = Dialer(topology, self.set_link)
        self.impairs: dict[str, dict[str, Any]] = {}  # link or network -> its impairment
        self.started_at = 0.0  # lab time at up or reset, where `drop_at` counts from
        self._line: asyncio.Future[None] | None = None  # a hung-up line being emptied
        self._link_locks: dict[str, asyncio.Lock] = {}

    # what each backend does its own way ----------------------------------------------------

    async def up(self) -> None:
        raise NotImplementedError

    async def down(self) -> None:
        raise NotImplementedError

    async def settle(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    async def advance(self, seconds: float) -> int:
        raise NotImplementedError

    async def reset_hosts(self) -> None:
        """Stop the work under way on every host, put the clock back to real time, and
        reset each host (`HostHandle.reset`); the links are already as declared."""
        raise NotImplementedError

    def clock_time(self) -> float:
        """Lab time now."""
        raise NotImplementedError

    def clock_offset(self) -> float:
        """How far lab time is ahead of real time."""
        raise NotImplementedError

    def endpoints(self, node: str) -> dict[str, str]:
        """Where a person on this machine reaches the node's services."""
        raise NotImplementedError

    def operator_address(self) -> str:
        """The lab address a person on this machine is seen from."""
        raise NotImplementedError

    async def shape(self, network: str, node: str | None, impairment: Impairment | None) -> None:
        """Apply the rate, delay, jitter and loss of a network (node None) or of a node's
        attachment to it (a link); None clears them."""
        raise NotImplementedError

    async def shape_as_declared(self) -> None:
        """Every network's and link's rate, delay, jitter and loss as the topology says."""
        raise NotImplementedError

    async def line_down(self, node: str, network: str) -> None:
        """A link went down: what waited on its line to be sent is lost (a modem that
        hangs up), so the next dial starts with an empty line."""
        return None

    def dns_copies(self) -> Iterable[H]:
        """The hosts that keep a copy of the lab's DNS records, to be told of an edit."""
        return self.handles.values()

    def node_status(self, node: str) -> dict[str, Any]:
        """What the backend adds to a node's status."""
        return {}

    def lab_status(self) -> dict[str, Any]:
        """What the backend adds to the lab's status."""
        return {}

    # names -------------------------------------------------------------------------------

    def check_node(self, node: str) -> None:
        if node not in self.topology.nodes:
            raise LabError(
                f"unknown node {node!r}; expected one of: {', '.join(self.topology.nodes)}"
            )

    def check_link(self, link: str) -> None:
        if link not in self.topology.links:
            raise LabError(
                f"unknown link {link!r}; expected one of: {', '.join(self.topology.links)}"
            )

    def runs(self, node: str, service: Service) -> bool:
        return service in self.topology.nodes[node].service_set()

    def handle(self, node: str, service: Service | None = None) -> H:
        """The node's handle; a LabError when the node does not run `service`."""
        self.check_node(node)
        if service is Service.smtp and not self.runs(node, service):
            raise LabError(f"node {node!r} runs no MTA (smtp service)")
        if service is Service.fetch and not self.runs(node, service):
            raise LabError(f"node {node!r} has no fetch jobs")
        if node not in self.handles:
            raise LabError(f"node {node!r} is not running")
        return self.handles[node]

    # the contract, written once ------------------------------------------------------------

    async def reset(self) -> None:
        """Links as the topology declares them (no on_up hook runs), then every host, the
        clock, the DNS records and the events back to where `up` left them."""
        from lab.topology.records import RecordTable

        changed = [
            (name, LinkState(link.state))
            for name, link in self.topology.links.items()
            if self.link_states[name] != LinkState(link.state)
        ]
        await asyncio.gather(
            *(
                self.handles[self.topology.links[name].node].set_link(name, state.value)
                for name, state in changed
                if self.topology.links[name].node in self.handles
            )
        )
        for name, state in changed:
            self.link_states[name] = state
        if self.records.version != self._records_version:  # edited since up or reset
            self.records.restore(RecordTable.from_topology(self.topology, self.addresses))
            self._records_version = self.records.version
        await self.reset_hosts()
        self.dialer.reset()
        self.events.reset()
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        await self.impair_as_declared()
        self.events.emit("lab", "lab.reset", backend=self.name)

    # impairments (docs/links.md) -------------------------------------------------------------

    def listen_links(self) -> None:
        """Hear of the links a host hangs up itself (`drop_after`, `drop_at`)."""

        def heard(event: Any) -> None:
            if event.kind != "link.down":  # (it hears every event of the lab)
                return
            link = event.get("link")
            if event.get("cause") and link in self.link_states:
                self.link_states[link] = LinkState.DOWN
                spec = self.topology.links[link]
                self._line = asyncio.ensure_future(self.line_down(spec.node, spec.network))

        self.events.listen(heard)

    async def impair_as_declared(self) -> None:
        """The topology's impairments, its drops counted from now (up or reset)."""
        self.started_at = self.clock_time()
        self.impairs = {}
        await self.shape_as_declared()
        for name, net in self.topology.networks.items():
            if net.impair is not None:
                self.impairs[name] = net.impair.model_dump(mode="json", exclude_defaults=True)
        for name, link in self.topology.links.items():
            if link.impair is not None:
                self.impairs[name] = link.impair.model_dump(mode="json", exclude_defaults=True)
                await self._arm(name, link.impair)

    async def _arm(self, link: str, impairment: Impairment | None) -> None:
        spec = self.topology.links[link]
        if spec.node not in self.handles:
            return
        drop_after = getattr(impairment, "drop_after", None)
        drop_at = getattr(impairment, "drop_at", None)
        at = None if drop_at is None else self.started_at + drop_at
        await self.handle(spec.node).arm_drops(link, drop_after, at)

    async def impair(
        self, name: str, settings: dict[str, Any] | None = None, *, clear: bool = False
    ) -> dict[str, Any]:
        """Change a link's or a network's impairment at run time: `settings` (rate,
        delay, jitter, loss; drop_after, drop_at for a link) over what it has, or over
        nothing with `clear`. Returns the impairment now in force."""
        from pydantic import ValidationError

        from lab.topology.impair import impairment_of

        is_link = name in self.topology.links
        if not is_link and name not in self.topology.networks:
            known = [*self.topology.links, *self.topology.networks]
            raise LabError(f"unknown link or network {name!r}; expected one of: {', '.join(known)}")
        merged = {} if clear else dict(self.impairs.get(name, {}))
        merged.update({k: v for k, v in (settings or {}).items() if v is not None})
        try:
            impairment = impairment_of(merged, link=is_link)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or name}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise LabError(f"impairment of {name}: {problems}") from None
        drop_at = getattr(impairment, "drop_at", None)
        if drop_at is not None and self.started_at + drop_at < self.clock_time():
            raise LabError(
                f"impairment of {name}: drop_at {drop_at:g}s is past (lab time since up:"
                f" {self.clock_time() - self.started_at:.0f}s)"
            )
        if is_link:
            spec = self.topology.links[name]
            await self.shape(spec.network, spec.node, impairment)
            await self._arm(name, impairment)
        else:
            await self.shape(name, None, impairment)
        found = (
            {} if impairment is None else impairment.model_dump(mode="json", exclude_defaults=True)
        )
        if found:
            self.impairs[name] = found
        else:
            self.impairs.pop(name, None)
        node = self.topology.links[name].node if is_link else "lab"
        self.events.emit(node, "link.impaired", target=name, **found)
        return found

    async def now(self) -> float:
        return self.clock_time()

    async def message(
        self,
        node: str,
        *,
        mail_from: str,
        to: list[str],
        subject: str,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        from lab.services.client import build_message
        from lab.topology.addressing import hostname_of

        self.check_node(node)
        return build_message(
            mail_from=mail_from,
            to=to,
            subject=subject,
            body=body,
            headers=headers,
            hostname=hostname_of(self.topology, node),
            date=self.clock_time(),
        )

    async def send(
        self, node: str, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        return await self.handle(node).submit(
            mail_from=mail_from, to=list(to), content=content, via=via
        )

    async def cut_far_ends(self, link: str) -> int:
        """A link is dropping: the ends of its connections that other hosts hold, cut
        before its host cuts its own (Docker: each container cuts its own; in process
        the link's host cuts both ends). Returns how many."""
        return 0

    async def set_link(self, link: str, up: bool, cause: str = "manual") -> None:
        """The link's host changes its attachment and hears of it (its resolver cache is
        dropped; its fetch jobs, which poll while its links are up, re-armed or stopped);
        then, when it came up, its on_up hooks run in order, each settled. `cause`:
        manual, or schedule for a scheduled dial."""
        self.check_link(link)
        spec = self.topology.links[link]
        state = LinkState.of(up)
        host = self.handle(spec.node)
        # one change of a link at a time, in the order asked (a drop takes several steps
        # on Docker: a raise asked meanwhile waits for it); its hooks run outside
        async with self._link_locks.setdefault(link, asyncio.Lock()):
            if self.link_states[link] == state:
                self.events.emit(
                    spec.node, "link.unchanged", link=link, state=state.value, cause=cause
                )
                return
            self.link_states[link] = state
            if self._line is not None:  # a hang-up's line is empty before it dials again
                await self._line
                self._line = None
            cut = 0 if up else await self.cut_far_ends(link)
            cut += await host.set_link(link, state.value)
            kind = "link.up" if up else "link.down"
            self.events.emit(spec.node, kind, link=link, network=spec.network, cut=cut, cause=cause)
        if not up:
            await self.line_down(spec.node, spec.network)
            return
        for hook in spec.on_up:
            self.events.emit(spec.node, "link.hook", link=link, hook=hook.value)
            if hook is Hook.flush and self.runs(spec.node, Service.smtp):
                await host.flush()
            elif hook is Hook.fetch and self.runs(spec.node, Service.fetch):
                await host.fetch()
            await self.settle()

    async def set_schedule(self, link: str, schedule: dict[str, Any] | None) -> None:
        from lab.topology.model import Schedule

        self.check_link(link)
        parsed = Schedule.model_validate(schedule) if schedule is not None else None
        self.dialer.set(link, parsed)
        shown = parsed.model_dump(mode="json", by_alias=True, exclude_none=True) if parsed else None
        self.events.emit(self.topology.links[link].node, "link.schedule", link=link, schedule=shown)

    async def link_state(self, link: str) -> LinkState:
        self.check_link(link)
        return self.link_states[link]

    async def flush(self, node: str) -> int:
        count = await self.handle(node, Service.smtp).flush()
        await self.settle()
        return count

    async def fetch(self, node: str) -> int:
        count = await self.handle(node, Service.fetch).fetch()
        await self.settle()
        return count

    async def queue(self, node: str) -> list[QueueEntry]:
        return await self.handle(node, Service.smtp).queue()

    async def queue_content(self, node: str, queue_id: str) -> bytes:
        return await self.handle(node, Service.smtp).queue_content(queue_id)

    async def capture_queued(self, node: str) -> dict[str, bytes]:
        return await self.handle(node, Service.smtp).capture()

    async def mailbox(self, node: str, user: str) -> list[MailboxEntry]:
        return await self.handle(node).mailbox(user)

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        self.records.set(name, rtype, values)
        await asyncio.gather(*(h.set_dns(name, rtype, values) for h in self.dns_copies()))
        self.events.emit(
            "lab", "dns.changed", name=name, type=rtype, values=[str(v) for v in values]
        )

    async def set_dns_fault(self, name: str, fault: str | None) -> None:
        self.records.set_fault(name, fault)
        await asyncio.gather(*(h.set_dns_fault(name, fault) for h in self.dns_copies()))
        self.events.emit("lab", "dns.fault", name=name, fault=fault or "none")

    async def add_fault(self, node: str, fault: dict[str, Any]) -> None:
        await self.handle(node, Service.smtp).add_fault(dict(fault))
        self.events.emit(node, "fault.added", **{k: str(v) for k, v in fault.items()})

    async def clear_faults(self, node: str) -> int:
        count = await self.handle(node, Service.smtp).clear_faults()
        self.events.emit(node, "fault.cleared", count=count)
        return count

    async def _set_dns_fault_rules(self, rules: list[Any]) -> None:
        self.records.set_fault_rules(rules)
        shown = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in rules]
        await asyncio.gather(*(h.set_dns_fault_rules(shown) for h in self.dns_copies()))

    async def add_dns_fault(self, rule: dict[str, Any]) -> None:
        from lab.topology.model import DnsFaultRule

        parsed = DnsFaultRule.model_validate(rule)
        await self._set_dns_fault_rules([*self.records.fault_rules, parsed])
        shown = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.events.emit("lab", "dns.fault_rule", **shown)

    async def clear_dns_faults(self) -> int:
        declared = list(self.topology.dns.faults)
        count = len(self.records.fault_rules) - len(declared)
        await self._set_dns_fault_rules(declared)
        self.events.emit("lab", "dns.fault_rules_cleared", count=count)
        return count

    async def status(self) -> dict[str, Any]:
        from lab.topology.addressing import hostname_of

        nodes: dict[str, Any] = {}
        for name, node in self.topology.nodes.items():
            nodes[name] = {
                "hostname": hostname_of(self.topology, name),
                "services": sorted(s.value for s in node.service_set()),
                "addresses": {n: str(a) for n, a in self.addresses[name].items()},
                "endpoints": (endpoints := self.endpoints(name)),
                # services this machine has no endpoint for: reached only from inside
                "inside_lab": sorted(
                    s.value
                    for s in node.service_set()
                    if s in _LISTENING and s.value not in endpoints
                ),
                **self.node_status(name),
            }
        links = {
            name: {
                "state": self.link_states[name].value,
                "node": link.node,
                "network": link.network,
                **self._schedule_status(name),
                "impair": self.impairs.get(name, {}),
            }
            for name, link in self.topology.links.items()
        }
        return {
            "name": self.topology.name,
            "backend": self.name,
            **self.lab_status(),
            "nodes": nodes,
            "links": links,
            "operator": {"node": self.operator, "address": self.operator_address()},
            "clock": {"time": self.clock_time(), "offset": self.clock_offset()},
            "seed": self.topology.seed,
            "state_dir": str(self.state_dir),
            "ca": str(self.state_dir / "lab-ca.pem"),
        }

    def _schedule_status(self, link: str) -> dict[str, Any]:
        schedule = self.dialer.schedules.get(link)
        if schedule is None:
            return {}
        window = self.dialer.next_dial(link)
        return {
            "schedule": schedule.model_dump(mode="json", by_alias=True, exclude_none=True),
            "next_dial": window[0] if window else None,
        }


BACKENDS: dict[str, str] = {
    "inprocess": "lab.backends.inprocess.backend:InProcessBackend",
    "docker": "lab.backends.docker.backend:DockerBackend",
}


def backend_class(name: str) -> type[LabBackend[Any]]:
    import importlib

    if name not in BACKENDS:
        raise LabError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    found: type[LabBackend[Any]] = getattr(importlib.import_module(module), cls)
    return found
