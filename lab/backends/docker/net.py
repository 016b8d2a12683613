"""A host's network when the host is real (a container): lab addresses are its addresses.

The container has one interface per topology network with the topology's own address,
so nothing is mapped: services bind, connect and see peers as they are. What this adds
to plain sockets is what the lab needs: the open connections of each interface (to cut
them when its link goes down), the links' filter rules, a quick refusal of DNS queries
across a link that is down here, and the lab DNS server's address.

Impairments: where a network has no real daemon (every host on it runs the lab's own
services), the agents pace its connections whole, rate included, on their lab clock, as
in process (lab.services.pacing): a `clock advance` plays a long transfer in order with
the dials and retries. Elsewhere the rate is the kernel's qdisc (lab.backends.docker.
shaping) and the agents add delay, jitter and loss in real time where there is no netem.

A link that is down is, on its interface, filter rules both ways: `refuse` rejects (TCP
resets, ICMP port unreachable: both ends fail at once), `blackhole` drops (both ends
time out). The interface keeps its address, so raising the link only removes the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import LabError
from lab.protocols.wire import LinkState
from lab.services.dnsclient import DnsClient
from lab.services.host import Unreachable
from lab.services.pacing import Clock, Pacer, ParkedCount, RealTime, Relay, relay_pair
from lab.topology.impair import Impairment, combine

if TYPE_CHECKING:
    import dns.message

WATCH_EVERY = 0.02  # seconds between two looks at an interface's byte counters


class RealNet(ParkedCount):
    """One container's network (implements lab.services.host.HostNet)."""

    def __init__(
        self,
        addresses: dict[str, str],
        dns_server: str | None,
        *,
        subnets: dict[str, str] | None = None,
        interfaces: dict[str, str] | None = None,
        when_down: dict[str, str] | None = None,
        down: set[str] | None = None,
        peers: dict[str, tuple[str, str]] | None = None,
        node: str = "",
        clock: Clock | None = None,
    ):
        self.addresses = addresses  # network -> address
        self.dns_server = dns_server
        self.subnets = subnets or {}  # network -> CIDR
        self.interfaces = interfaces or {}  # network -> interface name
        self.when_down = when_down or {}  # network -> "refuse" | "blackhole" (its link's)
        self.links = {n: LinkState.DOWN if n in (down or ()) else LinkState.UP for n in addresses}
        self.closing: set[str] = set()  # links about to drop: no new connection across them
        self.servers: list[asyncio.AbstractServer] = []
        self.datagram_transports: list[asyncio.BaseTransport] = []
        self.open: dict[int, tuple[str, Callable[[], None], Callable[[], bool]]] = {}
        self.dns = DnsClient()
        self.watchers: dict[str, asyncio.Task[None]] = {}  # network -> its drop_after watch
        self.peers = peers or {}  # lab address -> (node, network)
        self.node = node
        self.impaired: dict[Any, Impairment] = {}  # network, or (node, network) of a link
        self.clock = clock  # the host's lab clock: what the lines of on_clock run on
        self.on_clock: set[str] = set()  # networks paced whole here, on the lab clock
        self.lines: dict[str, tuple[Pacer, Pacer]] = {}  # peer -> its line, both ways
        self.budgets: dict[str, tuple[list[int], Callable[[], object]]] = {}  # drop_after
        self.parked = 0  # pieces waiting for the lab clock
        self.progress = 0  # grows whenever a connection paced on the lab clock moves

    def pace(self, networks: dict[str, Any], links: list[Any], on_clock: list[str]) -> None:
        """The impairments of the connections this host opens (networks' and links', as
        JSON): on the `on_clock` networks all of it, on the lab clock; elsewhere delay,
        jitter and loss in real time, where the kernel has no netem (the rate is tbf's)."""
        self.impaired = {n: Impairment.model_validate(i) for n, i in networks.items()}
        for node, network, impairment in links:
            self.impaired[(node, network)] = Impairment.model_validate(impairment)
        self.on_clock = set(on_clock) if self.clock is not None else set()
        self.lines.clear()

    def _pacers(self, address: str) -> tuple[tuple[Pacer, Pacer], bool] | None:
        """The pacers of a connection to address, and whether they run on the lab clock."""
        peer = self.peers.get(address)
        if peer is None or not (self.impaired or self.budgets):
            return None
        node, network = peer
        keys = [network, (self.node, network), (node, network)]
        parts = [self.impaired[k] for k in keys if k in self.impaired]
        lab = network in self.on_clock
        shape = combine(parts) if lab else {**combine(parts), "rate": 0.0}  # tbf's rate
        if not any(shape.values()) and not (lab and network in self.budgets):
            return None
        if lab and address in self.lines:  # one line each way, shared by its connections
            return self.lines[address], True
        rng = random.Random(f"{self.node}>{address}")  # the same losses and jitter each run
        pacers = Pacer(**shape, rng=rng), Pacer(**shape, rng=rng)
        if lab:
            self.lines[address] = pacers
        return pacers, lab

    def crossed(self, network: str, size: int) -> int:
        """`size` bytes arrive across `network` (on the lab clock): how many may before
        its link hangs up (drop_after)."""
        budget = self.budgets.get(network)
        if budget is None:
            return size
        left, hang_up = budget
        if left[0] > size:
            left[0] -= size
            return size
        del self.budgets[network]
        hang_up()
        return left[0]

    # ClockWait (lab.services.host): bytes held for the lab clock count as settled
    def paced(self) -> bool:
        return bool(self.on_clock or self.parked)

    def _network_of(self, address: str) -> str | None:
        return next((n for n, a in self.addresses.items() if a == address), None)

    def _track(self, local: str, close: Callable[[], None], alive: Callable[[], bool]) -> int:
        key = id(close)
        self.open[key] = (local, close, alive)
        if len(self.open) > 256:
            self.open = {k: v for k, v in self.open.items() if v[2]()}
        return key

    async def connect(self, address: str, port: int, *, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout
            )
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"connect to {address}:{port} timed out") from None
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise Unreachable(f"{address}:{port}: {exc.strerror}") from None
            if exc.errno == errno.ECONNREFUSED:
                raise Unreachable(f"connection refused by {address}:{port}") from None
            raise
        except BaseException:
            sock.close()
            raise

        found = self._pacers(address)
        if found is not None:  # held on the lab clock, or in real time as netem would
            pacers, lab = found
            caller, mine = relay_pair()
            network = self.peers[address][1]
            if lab and self.clock is not None:
                relay = Relay(
                    self.clock, caller, mine, sock, pacers,
                    lambda n: self.crossed(network, n), self.moved,
                )  # fmt: skip
            else:
                relay = Relay(RealTime(), caller, mine, sock, pacers, lambda n: n, lambda _: None)
            relay.start()
            self._track(sock.getsockname()[0], relay.close, relay.alive)
            return caller

        def close() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._track(sock.getsockname()[0], close, lambda: sock.fileno() != -1)
        return sock

    async def listen(self, port: int, factory: Callable[[], asyncio.Protocol]) -> None:
        server = await asyncio.get_running_loop().create_server(
            factory, host="0.0.0.0", port=port, reuse_address=True
        )
        self.servers.append(server)

    async def listen_udp(self, port: int, factory: Callable[[], asyncio.DatagramProtocol]) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            factory, local_addr=("0.0.0.0", port)
        )
        self.datagram_transports.append(transport)

    def accepted(self, transport: asyncio.BaseTransport) -> tuple[str, int, str]:
        local = transport.get_extra_info("sockname")[0]
        peer, peer_port = transport.get_extra_info("peername")[:2]

        def close() -> None:
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()

        self._track(local, close, lambda: not transport.is_closing())
        return peer, peer_port, local

    def peer_of(self, sockaddr: tuple[str, int]) -> tuple[str, int]:
        return sockaddr[0], sockaddr[1]

    # links ---------------------------------------------------------------------------------

    def link_state(self, network: str) -> LinkState:
        return self.links.get(network, LinkState.UP)

    async def set_link(self, network: str, state: LinkState) -> int:
        """A link that drops cuts every TCP connection of its interface, whoever holds it
        (the agent, Postfix, Dovecot): with `refuse`, the servers' ends first, then the
        clients' (for what is left), and only then the filter rules, so each reset goes
        out and each reply written before it reaches its client (RFC 1047's race, closed:
        docs/reliability.md, flapping). With `blackhole` the rules go in first: the
        resets are dropped and the far ends time out, as over a dead line."""
        self.links[network] = state
        self.closing.discard(network)
        if state != LinkState.DOWN:
            await self.apply_links()
            return 0
        address = self.addresses.get(network)
        refuse = self.when_down.get(network, "refuse") == "refuse"
        if not refuse:
            await self.apply_links()
        killed = 0
        if address is not None:
            killed = await kill_connections(src=address, served=True)
            killed += await kill_connections(src=address, served=False)
        cut = self.cut(network)  # the agent's own: gone already, their transports closed
        if refuse:
            await self.apply_links()
        return max(killed, cut)

    async def hold_new(self, network: str) -> None:
        """The link on `network` is about to drop: new TCP connections across it are
        refused from now on (a SYN either way is answered with a reset), so none starts
        while the far ends and then this host cut the open ones (set_link)."""
        if self.links.get(network) == LinkState.UP:
            self.closing.add(network)
            await self.apply_links()

    def rules(self) -> list[str]:
        """iptables-restore input: the filter rules of the links that are down (and of
        those about to drop: new connections refused)."""
        rules = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for network in sorted(self.closing):
            iface = self.interfaces[network]
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                rules.append(
                    f"-A {chain} {flag} {iface} -p tcp --syn -j REJECT --reject-with tcp-reset"
                )
        for network, state in self.links.items():
            if state == LinkState.UP:
                continue
            iface = self.interfaces[network]
            refuse = self.when_down.get(network, "refuse") == "refuse"
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                if refuse:
                    if chain == "OUTPUT":  # the refusals themselves go out
                        rules += [
                            f"-A OUTPUT -o {iface} -p tcp --tcp-flags RST RST -j ACCEPT",
                            f"-A OUTPUT -o {iface} -p icmp --icmp-type destination-unreachable"
                            " -j ACCEPT",
                        ]
                    rules += [
                        f"-A {chain} {flag} {iface} -p tcp -j REJECT --reject-with tcp-reset",
                        f"-A {chain} {flag} {iface} -p udp -j REJECT"
                        " --reject-with icmp-port-unreachable",
                    ]
                rules.append(f"-A {chain} {flag} {iface} -j DROP")
        rules.append("COMMIT")
        return rules

    async def apply_links(self) -> None:
        """Make the interfaces' filter rules those of the links' present states."""
        proc = await asyncio.create_subprocess_exec(
            "iptables-restore",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(("\n".join(self.rules()) + "\n").encode())
        if proc.returncode != 0:
            raise LabError(f"iptables-restore failed: {out.decode(errors='replace').strip()}")

    def cut(self, network: str) -> int:
        """Close every open connection of the interface on `network` (its link went down)."""
        address = self.addresses.get(network)
        cut = [(k, v) for k, v in self.open.items() if v[0] == address and v[2]()]
        for key, (_, close, _) in cut:
            self.open.pop(key, None)
            close()
        return len(cut)

    def watch_bytes(self, network: str, limit: int | None, hang_up: Callable[[], object]) -> None:
        """The interface's byte counters (both ways, headers included), read every
        WATCH_EVERY seconds: the hang-up comes within that much of `limit`. On a network
        paced on the lab clock, the bytes of this host's connections as they arrive,
        exactly, as in process."""
        old = self.watchers.pop(network, None)
        if old is not None:
            old.cancel()
        self.budgets.pop(network, None)
        if limit is None:
            return
        if network in self.on_clock:
            self.budgets[network] = ([limit], hang_up)
            return
        stats = Path("/sys/class/net") / self.interfaces.get(network, network) / "statistics"

        def counted() -> int:
            return sum(int((stats / f"{way}_bytes").read_text()) for way in ("rx", "tx"))

        async def watch() -> None:
            start = counted()
            while counted() - start < limit:
                await asyncio.sleep(WATCH_EVERY)
            self.watchers.pop(network, None)
            hang_up()

        self.watchers[network] = asyncio.get_running_loop().create_task(watch())

    def _route_to_dns(self) -> str | None:
        """The network this host reaches the DNS server through, if it is one of the lab's."""
        import ipaddress

        if self.dns_server is None:
            return None
        target = ipaddress.ip_address(self.dns_server)
        for network, subnet in self.subnets.items():
            with contextlib.suppress(ValueError):
                if target in ipaddress.ip_network(subnet, strict=False):
                    return network
        return None

    async def dns_query(self, query: dns.message.Message, *, timeout: float) -> dns.message.Message:
        if self.dns_server is None:
            raise Unreachable("this lab has no DNS server")
        network = self._route_to_dns()
        refused = (
            network is not None
            and self.link_state(network) == LinkState.DOWN
            and self.when_down.get(network, "refuse") == "refuse"
        )
        if refused:
            raise Unreachable(
                f"DNS server {self.dns_server} unreachable: the link to {network} is down"
            )
        return await self.dns.query(query, self.dns_server, 53, timeout=timeout)

    async def close(self) -> None:
        for watcher in self.watchers.values():
            watcher.cancel()
        self.dns.close()
        for server in self.servers:
            server.close()
        for transport in self.datagram_transports:
            transport.close()
        for _, close, alive in list(self.open.values()):
            if alive():
                close()
        for _ in range(3):
            await asyncio.sleep(0)


async def kill_connections(*, src: str | None = None, dst: str | None = None, served: bool) -> int:
    """Destroy this host's established TCP connections from local address `src` (or to
    peer `dst`) with `ss -K`: those it serves (its local port is one it listens on) or
    the others. Each end destroyed sends its peer a reset; what the socket had received
    stays readable before the error. Returns how many were destroyed."""
    listening = await _run_ss(["-ltnH"])
    ports = sorted({line.split()[3].rsplit(":", 1)[1] for line in listening if line.split()})
    if served and not ports:
        return 0
    where = ["src", src] if src is not None else ["dst", str(dst)]
    expr: list[str] = []
    if ports:
        ors = " or ".join(f"sport = :{port}" for port in ports)
        expr = [f"( {ors} )" if served else f"! ( {ors} )"]
    return len(await _run_ss(["-K", "-tnH", "state", "established", *where, *expr]))


async def _run_ss(args: list[str]) -> list[str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ss",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:  # no iproute2: the agent's own cut still closes its own
        return []
    out, _ = await proc.communicate()
    return [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
