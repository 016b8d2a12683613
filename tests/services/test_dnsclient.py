"""A host's DNS client (lab.services.dnsclient): one kept UDP socket, answers matched by id."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import dns.flags
import dns.message
import dns.rrset
import pytest

from lab.services.dnsclient import DnsClient


def _answer(query: dns.message.Message, address: str) -> dns.message.Message:
    response = dns.message.make_response(query)
    name = query.question[0].name
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", address))
    return response


class _Server(asyncio.DatagramProtocol):
    """Holds queries until `release` and answers them in the order it is told."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.held: list[tuple[dns.message.Message, tuple[str, int]]] = []
        self.arrived = asyncio.Event()
        self.sources: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.held.append((dns.message.from_wire(data), addr))
        self.sources.add(addr)
        self.arrived.set()

    def send(self, message: dns.message.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(message.to_wire(), addr)


async def _server() -> tuple[_Server, int]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(_Server, local_addr=("127.0.0.1", 0))
    return server, transport.get_extra_info("sockname")[1]


def _with_server(body: Callable[[_Server, int, DnsClient], Awaitable[None]]) -> None:
    """Run `body` against a fresh held-answer server and a fresh client, then close both."""

    async def run() -> None:
        server, port = await _server()
        client = DnsClient()
        try:
            await body(server, port, client)
        finally:
            client.close()
            assert server.transport is not None
            server.transport.close()

    asyncio.run(run())


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the server never saw the queries")


def test_answers_out_of_order_reach_their_own_queries_over_one_socket() -> None:
    async def body(server: _Server, port: int, client: DnsClient) -> None:
        q1 = dns.message.make_query("one.test", "A")
        q2 = dns.message.make_query("two.test", "A")
        q2.id = (q1.id + 1) % 65536
        t1 = asyncio.ensure_future(client.query(q1, "127.0.0.1", port, timeout=2))
        t2 = asyncio.ensure_future(client.query(q2, "127.0.0.1", port, timeout=2))
        await _until(lambda: len(server.held) == 2)
        # a stray answer for nobody, then the second answer first
        stray = _answer(dns.message.make_query("stray.test", "A"), "10.9.9.9")
        stray.id = (q1.id + 7) % 65536
        server.send(stray, server.held[0][1])
        for query, addr in reversed(server.held):
            name = str(query.question[0].name)
            server.send(_answer(query, "10.0.0.1" if name == "one.test." else "10.0.0.2"), addr)
        r1, r2 = await asyncio.gather(t1, t2)
        assert r1.answer[0][0].to_text() == "10.0.0.1"
        assert r2.answer[0][0].to_text() == "10.0.0.2"
        assert len(server.sources) == 1, "both queries should come from one kept socket"
        # the socket stays for the next query
        t3 = asyncio.ensure_future(client.query(q1, "127.0.0.1", port, timeout=2))
        await _until(lambda: len(server.held) == 3)
        server.send(_answer(server.held[2][0], "10.0.0.3"), server.held[2][1])
        assert (await t3).answer[0][0].to_text() == "10.0.0.3"
        assert len(server.sources) == 1

    _with_server(body)


def test_a_query_with_a_clashing_id_gets_a_new_one() -> None:
    async def body(server: _Server, port: int, client: DnsClient) -> None:
        q1 = dns.message.make_query("one.test", "A")
        q2 = dns.message.make_query("two.test", "A")
        q2.id = q1.id
        t1 = asyncio.ensure_future(client.query(q1, "127.0.0.1", port, timeout=2))
        t2 = asyncio.ensure_future(client.query(q2, "127.0.0.1", port, timeout=2))
        await _until(lambda: len(server.held) == 2)
        assert server.held[0][0].id != server.held[1][0].id
        for query, addr in server.held:
            server.send(_answer(query, "10.0.0.9"), addr)
        answers = await asyncio.gather(t1, t2)
        assert [str(a.question[0].name) for a in answers] == ["one.test.", "two.test."]

    _with_server(body)


def test_silence_is_a_timeout_and_the_socket_serves_on() -> None:
    async def body(server: _Server, port: int, client: DnsClient) -> None:
        with pytest.raises(TimeoutError):
            await client.query(
                dns.message.make_query("quiet.test", "A"), "127.0.0.1", port, timeout=0.2
            )
        q = dns.message.make_query("after.test", "A")
        task = asyncio.ensure_future(client.query(q, "127.0.0.1", port, timeout=2))
        await _until(lambda: len(server.held) == 2)
        server.send(_answer(server.held[1][0], "10.0.0.4"), server.held[1][1])
        assert (await task).answer[0][0].to_text() == "10.0.0.4"

    _with_server(body)


def test_a_closed_port_fails_at_once_not_after_the_timeout() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers port unreachable

    async def run() -> float:
        client = DnsClient()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(OSError):
            await client.query(dns.message.make_query("x.test", "A"), "127.0.0.1", port, timeout=5)
        client.close()
        return loop.time() - start

    assert asyncio.run(run()) < 2


def test_a_truncated_answer_is_asked_again_over_tcp() -> None:
    async def run() -> None:
        server, port = await _server()
        answered_over_tcp: list[str] = []

        async def tcp_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = dns.message.from_wire(await reader.readexactly(size))
            answered_over_tcp.append(str(query.question[0].name))
            wire = _answer(query, "10.0.0.5").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(tcp_handler, "127.0.0.1", 0)
        tcp_port = tcp.sockets[0].getsockname()[1]
        client = DnsClient()
        q = dns.message.make_query("big.test", "A")
        task = asyncio.ensure_future(
            client.query(q, "127.0.0.1", port, timeout=2, tcp_port=tcp_port)
        )
        await _until(lambda: len(server.held) == 1)
        truncated = dns.message.make_response(server.held[0][0])
        truncated.flags |= dns.flags.TC
        server.send(truncated, server.held[0][1])
        response = await task
        assert answered_over_tcp == ["big.test."]
        assert response.answer[0][0].to_text() == "10.0.0.5"
        client.close()
        tcp.close()
        assert server.transport is not None
        server.transport.close()

    asyncio.run(run())
