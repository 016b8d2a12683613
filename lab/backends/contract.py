"""The backend contract, as typing Protocols: what a Lab asks of a backend (`Backend`) and
what the shared code asks of a host (`HostHandle`). lab.backends.base explains the
design and holds `LabBackend`, which implements the contract once for both backends;
it re-exports these two."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lab.protocols.smtp import SubmitResult
from lab.protocols.wire import LinkState, MailboxEntry, QueueEntry
from lab.runtime.events import EventBus
from lab.topology.model import Topology


class HostHandle(Protocol):
    """One host, as the common code of the backends acts on it."""

    @property
    def name(self) -> str: ...

    async def submit(
        self, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        """Submit a message from this host over SMTP, to its submission target."""
        ...

    async def set_link(self, link: str, state: str) -> int:
        """Raise or drop one of the host's links (the host hears of it at once: its
        resolver cache is dropped, its fetch jobs re-armed or stopped); the number of
        connections cut."""
        ...

    async def flush(self) -> int: ...

    async def fetch(self) -> int: ...

    async def queue(self) -> list[QueueEntry]: ...

    async def queue_content(self, queue_id: str) -> bytes: ...

    async def capture(self) -> dict[str, bytes]: ...

    async def mailbox(self, user: str) -> list[MailboxEntry]: ...

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None: ...

    async def set_dns_fault(self, name: str, fault: str | None) -> None: ...

    async def set_dns_fault_rules(self, rules: list[dict[str, Any]]) -> None: ...

    async def add_fault(self, fault: dict[str, Any]) -> None: ...

    async def clear_faults(self) -> int: ...
    async def arm_drops(
        self, link: str, drop_after: int | None = None, drop_at: float | None = None
    ) -> None:
        """Hang the link up once, after `drop_after` more bytes or at lab time `drop_at`
        (None: not that way); replaces what was armed."""
        ...

    async def reset(self) -> None:
        """Back to the state the host started in, its services running: no work under
        way, empty queue, mailboxes and fetch journals, no fault, greylist or resolver
        memory (links, clock and DNS records are the backend's)."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str
    topology: Topology
    events: EventBus
    state_dir: Path

    async def up(self) -> None:
        """Start every host and service; return when all of them answer."""
        ...

    async def down(self) -> None:
        """Stop everything and release what `up` took."""
        ...

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait until no delivery, bounce or fetch is under way."""
        ...

    async def reset(self) -> None:
        """Back to the topology's initial state without recreating a host: queues,
        mailboxes, maildrops, the clock, links as declared, faults, DNS edits, greylist
        and retry memory, fetch journals and events."""
        ...

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
        """A message as `node` would write it: its host name, the lab's time."""
        ...

    async def send(
        self, node: str, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        """Submit a message from a node over SMTP, as that host would."""
        ...

    async def set_link(self, link: str, up: bool, cause: str = "manual") -> None:
        """Raise or drop a link; raising runs its on_up hooks in order."""
        ...

    async def link_state(self, link: str) -> LinkState: ...

    async def advance(self, seconds: float) -> int:
        """Move the lab clock; returns the number of timers that ran."""
        ...

    async def now(self) -> float: ...

    async def flush(self, node: str) -> int:
        """Run a node's queue now (sendmail -q)."""
        ...

    async def fetch(self, node: str) -> int:
        """Run a node's fetch jobs now; returns how many messages were fetched."""
        ...

    async def queue(self, node: str) -> list[QueueEntry]:
        """A node's queue: id, envelope_from, recipients, attempts, ..."""
        ...

    async def queue_content(self, node: str, queue_id: str) -> bytes: ...

    async def capture_queued(self, node: str) -> dict[str, bytes]:
        """Queue id -> content of every message `node` queues from now on, filled in as
        they are queued (DSNs included: they may be gone from the queue a moment later)."""
        ...

    async def mailbox(self, node: str, user: str) -> list[MailboxEntry]:
        """Messages in a user's mailbox: id, envelope_from, raw."""
        ...

    async def status(self) -> dict[str, Any]:
        """Nodes with hostnames, addresses and endpoints; links with states."""
        ...

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None: ...

    async def set_dns_fault(self, name: str, fault: str | None) -> None: ...

    async def add_fault(self, node: str, fault: dict[str, Any]) -> None: ...

    async def clear_faults(self, node: str) -> int:
        """Forget the faults added to `node` at run time; how many there were."""
        ...

    async def add_dns_fault(self, rule: dict[str, Any]) -> None:
        """Add a glob fault rule to the lab DNS (lab.topology.model.DnsFaultRule)."""
        ...

    async def clear_dns_faults(self) -> int:
        """Remove the lab DNS's fault rules added at run time; how many there were."""
        ...

    async def set_schedule(self, link: str, schedule: dict[str, Any] | None) -> None:
        """Make `link` dial on this schedule (lab.topology.model.Schedule), or on none."""

    async def impair(
        self, name: str, settings: dict[str, Any] | None = None, *, clear: bool = False
    ) -> dict[str, Any]:
        """Change a link's or a network's impairment (docs/links.md); what is in force."""
        ...
