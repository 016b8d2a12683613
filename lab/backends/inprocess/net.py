"""The in-process backend's network: lab addresses mapped onto loopback, links enforced.

Every interface of every host (a node's attachment to a network) gets its own loopback
address, 127.A.B.C; Linux binds any of 127/8 without privileges. A service listening on
lab address 10.20.0.25 port 25 really listens on that interface's loopback address at an
ephemeral port; the table here maps one to the other. Outgoing connections are bound to
the sender's interface address, so the receiver can map the peer back to its lab address:
policies and Received headers see 192.168.10.11, not 127.x.

Reachability is checked on every connect: the two hosts must share a network and both
attachments must be up. A link that is down refuses (ECONNREFUSED at once) or blackholes
(the connect hangs until its timeout). Taking a link down cuts every connection that
crosses it, at both ends.

A person on the host machine connects from 127.0.0.1, which no interface uses: the lab
sees them as the operator node (a LAN client, as the topology says). Only through an
interface that is up: while a link is down, the operator's connection to an address of
that interface is reset at once, before any greeting (the real socket still listens, for
the host's own connections to itself), and one open is cut when the link goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.message

from lab.protocols.wire import LinkState
from lab.runtime.clock import LabClock
from lab.services.dnsclient import DnsClient
from lab.services.host import Unreachable
from lab.services.pacing import Pacer, ParkedCount, Relay, relay_pair
from lab.topology.addressing import Addresses
from lab.topology.impair import Impairment, combine
from lab.topology.model import Topology

IfaceKey = tuple[str, str]  # (node, network)


@dataclass
class Interface:
    node: str
    network: str
    lab_address: str
    real_address: str
    up: bool = True
    when_down: str = "refuse"


@dataclass
class Endpoint:
    real_host: str
    real_port: int
    iface: IfaceKey


@dataclass(eq=False)
class _Conn:
    """An open connection across the lab network, for cutting it when a link drops."""

    ends: tuple[IfaceKey, IfaceKey]
    close: Callable[[], None]
    alive: Callable[[], bool] = lambda: True
    paced: bool = False  # relayed on the lab clock (pacing.py)
    server: bool = False  # the accepting end (its close is an abort: a reset)


@dataclass
class VirtualNetwork(ParkedCount):
    topology: Topology
    addresses: Addresses
    operator: str | None
    prefix: int = field(default_factory=lambda: random.randint(16, 250))
    interfaces: dict[IfaceKey, Interface] = field(default_factory=dict)
    by_real: dict[str, Interface] = field(default_factory=dict)
    by_lab: dict[str, Interface] = field(default_factory=dict)
    by_node: dict[str, list[Interface]] = field(default_factory=dict)
    endpoints: dict[tuple[str, int, str], Endpoint] = field(
        default_factory=dict
    )  # (lab ip, port, proto)
    conns: dict[int, _Conn] = field(default_factory=dict)
    clock: LabClock | None = None
    # impairments: of networks, and of links (a host's attachment); see pacing.py
    net_impair: dict[str, Impairment] = field(default_factory=dict)
    link_impair: dict[IfaceKey, Impairment] = field(default_factory=dict)
    # drop_after: attachment -> [bytes left before the hang-up, what hangs it up]
    watches: dict[IfaceKey, tuple[list[int], Callable[[], object]]] = field(default_factory=dict)
    lines: dict[tuple[IfaceKey, IfaceKey], Pacer] = field(default_factory=dict)
    parked: int = 0  # pieces of impaired connections waiting for the lab clock
    progress: int = 0  # grows whenever an impaired connection moves

    _prune_at: int = 256

    def __post_init__(self) -> None:
        index = 0
        for node, nets in self.addresses.items():
            for network, address in nets.items():
                real = f"127.{self.prefix}.{index // 250}.{index % 250 + 1}"
                iface = Interface(node, network, str(address), real)
                self.interfaces[(node, network)] = iface
                self.by_real[real] = iface
                self.by_lab[str(address)] = iface
                self.by_node.setdefault(node, []).append(iface)
                index += 1
        for link in self.topology.links.values():
            iface = self.interfaces[(link.node, link.network)]
            iface.up = link.state == "up"
            iface.when_down = link.when_down.value
        self.rng = random.Random(self.topology.name)  # the same losses and jitter each run
        self.impair_as_declared()

    def impair_as_declared(self) -> None:
        """The impairments the topology declares, and nothing else."""
        self.net_impair.clear()
        self.link_impair.clear()
        for name, net in self.topology.networks.items():
            self.impair(name, None, net.impair)
        for link in self.topology.links.values():
            self.impair(link.network, link.node, link.impair)

    # impairments -----------------------------------------------------------------------

    def pacers(self, src: Interface, dst: Interface) -> tuple[Pacer, Pacer] | None:
        """The two directions' pacers of a connection from `src` to `dst`, or None when
        nothing impairs the path (a plain connection, as fast as loopback)."""
        keys = [(src.node, src.network), (dst.node, dst.network)]
        parts = [self.link_impair[k] for k in keys if k in self.link_impair]
        if src.network in self.net_impair:
            parts.append(self.net_impair[src.network])
        if not parts and not any(k in self.watches for k in keys):
            return None
        shape = combine(parts)
        # one line each way, shared by the connections over it (a modem's speed is shared)
        there = self.lines.setdefault((keys[0], keys[1]), Pacer(**shape, rng=self.rng))
        back = self.lines.setdefault((keys[1], keys[0]), Pacer(**shape, rng=self.rng))
        return there, back

    def impair(self, network: str, node: str | None, impairment: Impairment | None) -> None:
        """Set (None: clear) the impairment of a network, or of a node's attachment."""
        table: dict[Any, Impairment] = self.link_impair if node else self.net_impair
        key = (node, network) if node else network
        table.pop(key, None)
        if impairment is not None and any(
            getattr(impairment, k) for k in ("rate", "delay", "jitter", "loss")
        ):
            table[key] = impairment
        self.lines.clear()

    def watch(self, key: IfaceKey, limit: int | None, hang_up: Callable[[], object]) -> None:
        """Hang the attachment up once `limit` more bytes have crossed it (None: never)."""
        self.watches.pop(key, None)
        if limit is not None:
            self.watches[key] = ([limit], hang_up)

    def crossed(self, keys: list[IfaceKey], size: int) -> int:
        """`size` bytes arrive across `keys`: how many may before a line hangs up."""
        allowed = size
        for key in keys:
            if key in self.watches:
                left, hang_up = self.watches[key]
                if left[0] <= size:
                    allowed = min(allowed, left[0])
                    del self.watches[key]
                    hang_up()
                else:
                    left[0] -= size
        return allowed

    def paced(self) -> bool:
        return bool(self.net_impair or self.link_impair or self.watches or self.parked)

    # addressing ------------------------------------------------------------------------

    def host(self, node: str) -> NodeNet:
        return NodeNet(self, node)

    def endpoint(self, lab_address: str, port: int, proto: str = "tcp") -> Endpoint | None:
        return self.endpoints.get((lab_address, port, proto))

    def operator_address(self, network: str | None = None) -> str:
        """The lab address a person on the host machine appears to come from."""
        if self.operator:
            nets = self.addresses[self.operator]
            if network in nets:
                return str(nets[network])
            if nets:
                return str(next(iter(nets.values())))
        return "127.0.0.1"

    def lab_peer(self, real_host: str, local_network: str | None) -> tuple[str, IfaceKey | None]:
        iface = self.by_real.get(real_host)
        if iface is not None:
            return iface.lab_address, (iface.node, iface.network)
        return self.operator_address(local_network), None

    def route(
        self, src: str, lab_address: str, port: int, proto: str = "tcp"
    ) -> tuple[Interface, Interface]:
        """(source interface, destination interface) or Unreachable/blackhole marker."""
        dst = self.by_lab.get(lab_address)
        if dst is None:
            raise Unreachable(f"{lab_address}: no such host in the lab (no route to host)")
        if dst.node == src:
            return dst, dst
        src_iface = self.interfaces.get((src, dst.network))
        if src_iface is None:
            raise Unreachable(
                f"{src} has no interface on network {dst.network!r} to reach {lab_address}"
            )
        for iface in (src_iface, dst):
            if not iface.up:
                if iface.when_down == "blackhole":
                    raise _Blackholed(f"{iface.node} link to {iface.network} is down (blackhole)")
                raise Unreachable(
                    f"connection refused: {iface.node}'s link to {iface.network} is down"
                )
        if (lab_address, port, proto) not in self.endpoints:
            raise Unreachable(f"connection refused: nothing listens on {lab_address}:{port}")
        return src_iface, dst

    # links -----------------------------------------------------------------------------

    def set_link(self, node: str, network: str, up: bool) -> int:
        """Change an attachment's state; when it goes down, cut what crosses it: the
        servers' ends first (a reset), then the clients'. A server's reply written before
        its end was cut is in the client's socket already and is read before the reset;
        one written after fails, and the server knows it was not sent (RFC 1047's race
        closed: acceptance.py withdraws a message whose 250 did not go out)."""
        key = (node, network)
        self.interfaces[key].up = up
        if up:
            return 0
        cut = [c for c in self.conns.values() if key in c.ends and c.alive()]
        cut.sort(key=lambda c: not c.server)
        self.conns = {k: c for k, c in self.conns.items() if key not in c.ends}
        for conn in cut:
            conn.close()
        return len(cut)

    def track(
        self,
        ends: tuple[IfaceKey, IfaceKey],
        close: Callable[[], None],
        alive: Callable[[], bool] | None = None,
        *,
        server: bool = False,
    ) -> _Conn:
        conn = _Conn(ends, close, alive or (lambda: True), server)
        self.conns[id(conn)] = conn
        if len(self.conns) >= self._prune_at:  # forget connections that ended by themselves
            self.conns = {k: c for k, c in self.conns.items() if c.alive()}
            self._prune_at = max(256, 2 * len(self.conns))
        return conn

    def cut_paced(self) -> None:
        """Cut the connections that wait for the lab clock (it stops: they would wait
        for ever, and a host saying QUIT on them with them)."""
        for key, conn in list(self.conns.items()):
            if conn.paced:
                del self.conns[key]
                conn.close()

    def untrack(self, conn: _Conn) -> None:
        self.conns.pop(id(conn), None)


class _Blackholed(Exception):
    pass


class NodeNet:
    """One host's network (implements lab.services.host.HostNet)."""

    def __init__(self, vnet: VirtualNetwork, node: str):
        self.vnet = vnet
        self.node = node
        self.servers: list[asyncio.AbstractServer] = []
        self.datagram_transports: list[asyncio.BaseTransport] = []
        self.open: set[asyncio.BaseTransport] = set()  # accepted and not yet ended
        self.dns = DnsClient()

    def _ifaces(self) -> list[Interface]:
        return list(self.vnet.by_node.get(self.node, ()))

    async def connect(self, address: str, port: int, *, timeout: float) -> socket.socket:
        try:
            src, dst = self.vnet.route(self.node, address, port)
        except _Blackholed as exc:
            await asyncio.sleep(timeout)
            raise TimeoutError(f"connect to {address}:{port} timed out ({exc})") from None
        endpoint = self.vnet.endpoints[(address, port, "tcp")]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((src.real_address, 0))
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(
                    sock, (endpoint.real_host, endpoint.real_port)
                ),
                timeout,
            )
        except BaseException:
            sock.close()
            raise
        ends = ((src.node, src.network), (dst.node, dst.network))
        pacers = self.vnet.pacers(src, dst)
        if pacers is not None and self.vnet.clock is not None:
            caller, mine = relay_pair()
            relay = Relay(
                self.vnet.clock,
                caller,
                mine,
                sock,
                pacers,
                lambda n: self.vnet.crossed(list(ends), n),
                self.vnet.moved,
            )
            relay.start()
            self.vnet.track(ends, relay.close, alive=relay.alive).paced = True
            return caller

        def close() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self.vnet.track(ends, close, alive=lambda: sock.fileno() != -1)
        return sock

    def _paired(self, iface: Interface, port: int, other: str) -> int:
        """The real port of the other protocol's endpoint at this lab port, or 0 (any)."""
        endpoint = self.vnet.endpoints.get((iface.lab_address, port, other))
        return endpoint.real_port if endpoint is not None else 0

    async def listen(self, port: int, factory: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        for iface in self._ifaces():
            try:  # the same port number as UDP, if that listens already (dig @ADDR -p PORT)
                server = await loop.create_server(
                    factory,
                    host=iface.real_address,
                    port=self._paired(iface, port, "udp"),
                    reuse_address=True,
                )
            except OSError:
                server = await loop.create_server(
                    factory, host=iface.real_address, port=0, reuse_address=True
                )
            real_port = server.sockets[0].getsockname()[1]
            self.vnet.endpoints[(iface.lab_address, port, "tcp")] = Endpoint(
                iface.real_address, real_port, (iface.node, iface.network)
            )
            self.servers.append(server)

    async def listen_udp(self, port: int, factory: Callable[[], asyncio.DatagramProtocol]) -> None:
        loop = asyncio.get_running_loop()
        for iface in self._ifaces():
            try:  # the same port number as TCP, if that listens already
                transport, _ = await loop.create_datagram_endpoint(
                    factory, local_addr=(iface.real_address, self._paired(iface, port, "tcp"))
                )
            except OSError:
                transport, _ = await loop.create_datagram_endpoint(
                    factory, local_addr=(iface.real_address, 0)
                )
            real_port = transport.get_extra_info("sockname")[1]
            self.vnet.endpoints[(iface.lab_address, port, "udp")] = Endpoint(
                iface.real_address, real_port, (iface.node, iface.network)
            )
            self.datagram_transports.append(transport)

    def accepted(self, transport: asyncio.BaseTransport) -> tuple[str, int, str]:
        local_real = transport.get_extra_info("sockname")[0]
        peer_real, peer_port = transport.get_extra_info("peername")[:2]
        local = self.vnet.by_real[local_real]
        peer, peer_key = self.vnet.lab_peer(peer_real, local.network)
        here = (local.node, local.network)

        def cut() -> None:
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()  # RST: the peer's next read fails (ECONNRESET)
            else:
                transport.close()

        if peer_key is None and not local.up:
            # the operator, to an interface whose link is down: it is not there, refused
            # like an internet host's connection (which `route` refuses before the connect);
            # the caller sees the transport closing and serves nothing
            cut()
            return peer, peer_port, local.lab_address
        # the operator's connection too is cut when this interface's link goes down
        conn = self.vnet.track((here, peer_key or here), cut, server=True)
        self.open.add(transport)  # closed by `close` if still open then (the operator's too)
        # forget the connection when it ends by itself
        proto = transport.get_protocol()
        lost = proto.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.open.discard(transport)
            self.vnet.untrack(conn)
            lost(exc)

        proto.connection_lost = connection_lost  # type: ignore[method-assign]
        return peer, peer_port, local.lab_address

    def peer_of(self, sockaddr: tuple[str, int]) -> tuple[str, int]:
        peer, _ = self.vnet.lab_peer(sockaddr[0], None)
        return peer, sockaddr[1]

    def dns_server(self) -> str | None:
        for node, nets in self.vnet.addresses.items():
            if "dns" in {s.value for s in self.vnet.topology.nodes[node].service_set()}:
                mine = set(self.vnet.addresses[self.node])
                shared = [n for n in nets if n in mine]
                return str(nets[shared[0]] if shared else next(iter(nets.values())))
        return None

    async def dns_query(self, query: dns.message.Message, *, timeout: float) -> dns.message.Message:
        server = self.dns_server()
        if server is None:
            raise Unreachable("this lab has no DNS server")
        try:
            src, _ = self.vnet.route(self.node, server, 53, "udp")
        except _Blackholed:
            await asyncio.sleep(timeout)
            raise TimeoutError(f"DNS server {server} unreachable (blackhole)") from None
        endpoint = self.vnet.endpoints[(server, 53, "udp")]
        tcp = self.vnet.endpoints.get((server, 53, "tcp"))
        return await self.dns.query(
            query,
            endpoint.real_host,
            endpoint.real_port,
            source=src.real_address,
            timeout=timeout,
            tcp_port=tcp.real_port if tcp else None,
        )

    def link_state(self, network: str) -> LinkState:
        return LinkState.of(self.vnet.interfaces[(self.node, network)].up)

    async def set_link(self, network: str, state: LinkState) -> int:
        return self.vnet.set_link(self.node, network, state == LinkState.UP)

    def watch_bytes(self, network: str, limit: int | None, hang_up: Callable[[], object]) -> None:
        self.vnet.watch((self.node, network), limit, hang_up)

    async def close(self) -> None:
        self.dns.close()
        for server in self.servers:
            server.close()
        for transport in self.datagram_transports:
            transport.close()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for transport in list(self.open):  # connections still open: the peer sees them end
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
        for _ in range(3):  # let the services' connection handlers see it and finish
            await asyncio.sleep(0)


def _unused(_: ipaddress.IPv4Address) -> None:  # keeps ipaddress imported for type readers
    return None
