"""The backend contract: what a Lab needs from whatever brings a topology to life.

Two implementations keep to it, with the same file names' roles: `inprocess` (asyncio,
one process, loopback addresses) and `docker` (a container per host). Every method is a
coroutine run on the lab's event loop; the Lab (lab.harness) wraps them for synchronous
callers and pytest.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lab.errors import LabError
from lab.runtime.events import EventBus
from lab.services.client import SubmitResult
from lab.topology.model import Topology


@runtime_checkable
class Backend(Protocol):
    name: str
    topology: Topology
    events: EventBus

    async def up(self) -> None:
        """Start every host and service; return when all of them answer."""
        ...

    async def down(self) -> None:
        """Stop everything and release what `up` took."""
        ...

    async def settle(self) -> None:
        """Wait until no delivery, bounce or fetch is under way."""
        ...

    async def send(
        self, node: str, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        """Submit a message from a node over SMTP, as that host would."""
        ...

    async def set_link(self, link: str, up: bool) -> None:
        """Raise or drop a link; raising runs its on_up hooks in order."""
        ...

    def link_state(self, link: str) -> str: ...

    async def advance(self, seconds: float) -> int:
        """Move the lab clock; returns the number of timers that ran."""
        ...

    def now(self) -> float: ...

    async def flush(self, node: str) -> int:
        """Run a node's queue now (sendmail -q)."""
        ...

    async def fetch(self, node: str) -> int:
        """Run a node's fetch jobs now; returns how many messages were fetched."""
        ...

    def queue(self, node: str) -> list[dict[str, Any]]:
        """A node's queue: dicts with id, envelope_from, recipients, attempts."""
        ...

    def mailbox(self, node: str, user: str) -> list[dict[str, Any]]:
        """Messages in a user's mailbox: dicts with id, envelope_from, raw."""
        ...

    def status(self) -> dict[str, Any]:
        """Nodes with hostnames, addresses and endpoints; links with states."""
        ...

    def set_dns(self, name: str, rtype: str, values: list[Any]) -> None: ...

    def set_dns_fault(self, name: str, fault: str | None) -> None: ...

    def add_fault(self, node: str, fault: dict[str, Any]) -> None: ...


class BackendCommon:
    """What both backends do the same way: their options, the topology's addresses and DNS
    records, the operator, checking names, and composing a node's message."""

    def __init__(
        self,
        topology: Topology,
        *,
        state_dir: Path | None = None,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
    ):
        from lab.topology.addressing import assign_addresses
        from lab.topology.model import Service
        from lab.topology.records import RecordTable

        self.topology = topology
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix=f"maillab-{topology.name}-"))
        self.connect_timeout = connect_timeout
        self.dns_timeout = dns_timeout
        self.durable = durable
        self.addresses = assign_addresses(topology)
        self.records = RecordTable.from_topology(topology, self.addresses)
        # the node a person on this machine acts as: the topology's, or its first client
        self.operator: str | None = topology.operator or next(
            (n for n, node in topology.nodes.items() if Service.client in node.service_set()), None
        )

    def now(self) -> float:
        raise NotImplementedError

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
        """A message as `node` would write it: its host name, the lab's time."""
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
            date=self.now(),
        )


BACKENDS: dict[str, str] = {
    "inprocess": "lab.backends.inprocess.backend:InProcessBackend",
    "docker": "lab.backends.docker.backend:DockerBackend",
}


def backend_class(name: str) -> type[Any]:
    import importlib

    if name not in BACKENDS:
        raise LabError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    found: type[Any] = getattr(importlib.import_module(module), cls)
    return found
