"""What a service knows of the host it runs on: its name, its network, the lab clock,
the event bus, its state directory and the lab CA.

Services are written against `HostNet`, never against sockets directly, so the same
DNS, MTA, POP3 and fetch code runs in-process (where the network is virtual: every
interface is a loopback address and the backend maps lab addresses to real endpoints)
and inside a container (where the network is real).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lab.protocols.wire import LinkState
from lab.runtime.clock import LabClock, Timer
from lab.runtime.events import EventBus
from lab.topology.model import Node, Topology

if TYPE_CHECKING:
    import dns.message


class Unreachable(ConnectionRefusedError):
    """The destination cannot be reached: no route, link down (refuse), or nothing listens."""


class HostNet(Protocol):
    """A host's view of the network, in lab (virtual) addresses."""

    async def connect(self, address: str, port: int, *, timeout: float) -> socket.socket:
        """A connected, non-blocking TCP socket to address:port (lab addresses)."""
        ...

    async def listen(self, port: int, factory: Callable[[], asyncio.Protocol]) -> None:
        """Accept TCP connections on every address of this host at `port`."""
        ...

    async def listen_udp(self, port: int, factory: Callable[[], asyncio.DatagramProtocol]) -> None:
        """Receive datagrams on every address of this host at `port`."""
        ...

    def accepted(self, transport: asyncio.BaseTransport) -> tuple[str, int, str]:
        """Register an accepted connection; returns (peer address, peer port, local address)
        in lab addresses, so that policies and Received headers see the lab's view. A
        connection the lab's network refuses (the operator's, to an interface whose link is
        down) is closed here: the transport is closing, and the caller serves nothing."""
        ...

    def peer_of(self, sockaddr: tuple[str, int]) -> tuple[str, int]:
        """The lab address of a datagram's sender."""
        ...

    async def dns_query(self, query: dns.message.Message, *, timeout: float) -> dns.message.Message:
        """Ask the lab DNS (over UDP, TCP on truncation)."""
        ...

    def link_state(self, network: str) -> LinkState:
        """The state of this host's attachment to `network` (up unless a link is down)."""
        ...

    async def set_link(self, network: str, state: LinkState) -> int:
        """Raise or drop this host's attachment to `network` (a link of the topology, which
        says how a link that is down behaves); dropping it cuts the connections across it.
        Returns how many were cut."""
        ...

    def watch_bytes(self, network: str, limit: int | None, hang_up: Callable[[], object]) -> None:
        """Call `hang_up` once `limit` more bytes have crossed this host's attachment to
        `network` (a modem that hangs up mid-message); None: stop watching."""
        ...

    async def close(self) -> None:
        """Stop listening and close what is open."""
        ...


@dataclass
class Host:
    """Everything a service needs from the host it runs on."""

    name: str
    hostname: str
    node: Node
    topology: Topology
    addresses: dict[str, str]  # network -> lab address
    net: HostNet
    clock: LabClock
    events: EventBus
    state_dir: Path
    tls: Any = None  # lab.services.tls.LabCA
    settings: dict[str, Any] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def emit(self, kind: str, **data: Any) -> None:
        self.events.emit_data(self.name, kind, data)

    def spawn(self, coro: Any, name: str = "") -> asyncio.Task[Any]:
        """Start background work that the lab waits for when it settles."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def call_at(self, when: float, work: Callable[[], Any], name: str) -> Timer:
        """Start `work()` (a coroutine) as background work at lab time `when`: a host
        task, so that settling the lab waits for it even when the clock started it."""
        return self.clock.call_at(
            when, lambda: self.spawn(work(), name), name=f"{self.name}:{name}"
        )


class ClockWait(Protocol):
    """Work that waits for lab time without a host task knowing it (bytes of an impaired
    connection held until their due time): settled once nothing else moves."""

    def paced(self) -> bool:
        """Whether any connection can wait for the clock (something is impaired)."""
        ...

    def mark(self) -> int: ...

    def idle_on_clock(self, mark: int) -> bool: ...


QUIET = 0.01  # seconds without progress that make work waiting on the clock settled


async def settle_tasks(
    hosts: Iterable[Host], timeout: float = 60.0, clock_wait: ClockWait | None = None
) -> None:
    """Wait until the hosts have no background work left (a finishing task may start
    another, so look again after each), or until `timeout`. With `clock_wait`, work
    that only waits for the lab clock counts as done once nothing moved for `QUIET`."""
    hosts = list(hosts)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = asyncio.current_task()

    def busy() -> list[asyncio.Task[Any]]:
        return [t for h in hosts for t in h.tasks if t is not current and not t.done()]

    while True:
        tasks = busy()
        if not tasks:
            await asyncio.sleep(0)  # one more turn of the loop
            tasks = busy()
            if not tasks:
                return
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        if clock_wait is None or not clock_wait.paced():
            await asyncio.wait(tasks, timeout=remaining)
            continue
        # looked at every QUIET/4: settled QUIET after the last move, not two QUIETs
        mark, still = clock_wait.mark(), loop.time()
        while True:
            done, _ = await asyncio.wait(tasks, timeout=min(remaining, QUIET / 4))
            if done or loop.time() >= deadline:
                break
            if not clock_wait.idle_on_clock(mark):
                mark, still = clock_wait.mark(), loop.time()
            elif loop.time() - still >= QUIET:
                return
