"""Fuzzing the lab DNS (Hypothesis) over real sockets: arbitrary packets over UDP and
arbitrary byte streams over TCP never crash it; after each, it still answers a plain
query; and whatever it sends back obeys the rules of test_dns_hostile.py (no reply to a
response or to less than a header, QR set, the id copied, NOTIMP for another opcode).

One lab for the whole module (Hypothesis runs many examples in one test); the budget is
the Hypothesis profile's (tests/conftest.py): small and fixed in CI, long with `make fuzz`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.harness import Lab
from lab.topology import load_text

pytestmark = [pytest.mark.fuzz, pytest.mark.lab_backend("inprocess")]

WORLD = """
name: dnsfuzz
networks:
  net: {subnet: 10.62.0.0/16}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org", TXT: "v=spf1 -all"}
      mx: {A: 10.62.0.25}
      www: {CNAME: mx.example.org}
      broken: {fault: servfail}
      silent: {fault: timeout}
nodes:
  dns: {role: dns, hostname: ns.lab.test, networks: {net: 10.62.0.53}}
"""

PLAIN_ID = 0xBEEF


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    model = load_text(WORLD, "dnsfuzz.yaml").model
    state: Path = tmp_path_factory.mktemp("dnsfuzz")
    lab = Lab.up(model, backend="inprocess", state_dir=state)
    try:
        host, _, port = lab.status()["nodes"]["dns"]["endpoints"]["dns"].rpartition(":")
        yield host, int(port)
    finally:
        lab.down()


def plain_query() -> bytes:
    message = dns.message.make_query("example.org", "MX")
    message.id = PLAIN_ID
    return message.to_wire()


def is_plain_answer(reply: bytes) -> bool:
    try:
        message = dns.message.from_wire(reply)
    except Exception:
        return False
    return (
        message.id == PLAIN_ID
        and message.rcode() == dns.rcode.NOERROR
        and [str(q.name) for q in message.question] == ["example.org."]
        and [rd.to_text() for rrset in message.answer for rd in rrset] == ["10 mx.example.org."]
    )


def check_reply(sent: bytes, reply: bytes) -> None:
    """What the server may send back for `sent`."""
    assert len(sent) >= 12, f"a reply to {len(sent)} bytes, less than a header"
    sent_id, sent_flags = struct.unpack("!HH", sent[:4])
    assert not sent_flags & 0x8000, "a reply to a response (QR=1)"
    assert len(reply) >= 12
    reply_id, reply_flags = struct.unpack("!HH", reply[:4])
    assert reply_id == sent_id
    assert reply_flags & 0x8000, "a reply without QR"
    opcode = (sent_flags >> 11) & 0xF
    assert (reply_flags >> 11) & 0xF == opcode
    if opcode != 0:
        assert reply_flags & 0xF == dns.rcode.NOTIMP


# A query to start from: names and types the lab knows, and some it does not.
queries = st.builds(
    lambda name, rtype: dns.message.make_query(name, rtype).to_wire(),
    st.sampled_from(
        ["example.org", "mx.example.org", "www.example.org", "broken.example.org", "nope.test"]
    ),
    st.sampled_from(["A", "MX", "TXT", "CNAME", "NS", "PTR", "ANY", "AAAA", "SOA", "TYPE999"]),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real query with some bytes changed, cut short or added to."""
    wire = bytearray(draw(queries))
    for index, value in draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)))):
        if index < len(wire):
            wire[index] = value
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=20))


@st.composite
def with_header(draw: st.DrawFn) -> bytes:
    """A header with chosen flags and counts, then anything."""
    qid = draw(st.integers(0, 0xFFFF))
    flags = draw(st.integers(0, 0xFFFF))
    counts = draw(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
    return struct.pack("!HHHHHH", qid, flags, *counts) + draw(st.binary(max_size=300))


packets = st.one_of(st.binary(max_size=600), mutated(), with_header())
framed = packets.map(lambda packet: struct.pack("!H", len(packet)) + packet)
streams = st.lists(st.one_of(st.binary(max_size=300), framed), max_size=6)


def ask_plain_udp(endpoint: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(plain_query(), endpoint)
        assert is_plain_answer(sock.recv(65535))


@given(packets)
def test_any_udp_packet(endpoint: tuple[str, int], packet: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, endpoint)
        # The server reads its socket in order: once the plain query (sent after) is
        # answered, any reply to the packet has been sent too.
        ask_plain_udp(endpoint)
        sock.setblocking(False)
        replies = []
        while True:
            try:
                replies.append(sock.recv(65535))
            except BlockingIOError:
                break
    assert len(replies) <= 1, f"{len(replies)} replies to one packet"
    for reply in replies:
        check_reply(packet, reply)


@given(streams)
def test_any_tcp_stream(endpoint: tuple[str, int], chunks: list[bytes]) -> None:
    with socket.create_connection(endpoint, timeout=5) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                data = sock.recv(65535)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            received += data
    # The replies are well framed, and each is a reply (QR set).
    while len(received) >= 2:
        (size,) = struct.unpack("!H", received[:2])
        reply, received = received[2 : 2 + size], received[2 + size :]
        assert len(reply) == size
        assert len(reply) >= 12 and struct.unpack("!H", reply[2:4])[0] & 0x8000
    assert received == b""
    with socket.create_connection(endpoint, timeout=5) as sock:
        wire = plain_query()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
        assert is_plain_answer(sock.recv(size, socket.MSG_WAITALL))
    ask_plain_udp(endpoint)
