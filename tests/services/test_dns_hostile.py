"""The lab DNS and messages that are not plain queries, over real UDP and TCP sockets to a
running lab: a response (QR=1) gets no reply at all, an opcode other than QUERY gets
NOTIMP, a header that reads with a body that does not (or other than one question) gets
FORMERR, a message too short for a header gets nothing; a reply copies the id, the opcode
and RD, no other flag of the query; and the server answers the next query as before."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from lab.harness import Lab

WORLD = """
name: dnshostile
networks:
  net: {subnet: 10.61.0.0/16}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org"}
      mx: {A: 10.61.0.25}
nodes:
  dns: {role: dns, hostname: ns.lab.test, networks: {net: 10.61.0.53}}
  pc: {role: client, hostname: pc.lab.test, networks: {net: 10.61.9.11}, submit_to: 10.61.0.25}
"""

# In process: the host machine reaches the lab DNS at its printed endpoint.
pytestmark = pytest.mark.lab_backend("inprocess")

SILENCE = 0.5  # how long "no reply" is waited for


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(WORLD)


def endpoint(lab: Lab) -> tuple[str, int]:
    host, _, port = lab.status()["nodes"]["dns"]["endpoints"]["dns"].rpartition(":")
    return host, int(port)


def exchange(lab: Lab, wire: bytes, transport: str) -> bytes | None:
    """Send one message as it is; the reply, or None when none came within SILENCE."""
    address = endpoint(lab)
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SILENCE)
            sock.sendto(wire, address)
            try:
                return sock.recv(65535)
            except TimeoutError:
                return None
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        return read_tcp(sock)


def read_tcp(sock: socket.socket) -> bytes | None:
    sock.settimeout(SILENCE)
    try:
        size = struct.unpack("!H", recv_exactly(sock, 2))[0]
    except TimeoutError:
        return None
    sock.settimeout(5)
    return recv_exactly(sock, size)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def query(name: str = "example.org", rtype: str = "MX", qid: int = 0x1234) -> bytes:
    message = dns.message.make_query(name, rtype)
    message.id = qid
    return message.to_wire()


def with_flags(wire: bytes, flags: int) -> bytes:
    """The message with its second header word (QR, opcode, AA, TC, RD, RA, Z, rcode) set."""
    return wire[:2] + struct.pack("!H", flags) + wire[4:]


def header(reply: bytes) -> tuple[int, int, int, list[int]]:
    """(id, flags, rcode, [QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT]) of a reply."""
    qid, flags, *counts = struct.unpack("!HHHHHH", reply[:12])
    return qid, flags, flags & 0xF, counts


def assert_still_answers(lab: Lab, transport: str) -> None:
    reply = exchange(lab, query(qid=0x4242), transport)
    assert reply is not None, "the server no longer answers a plain query"
    message = dns.message.from_wire(reply)
    assert message.id == 0x4242 and message.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rrset in message.answer for rd in rrset] == ["10 mx.example.org."]


TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])


@TRANSPORTS
def test_a_response_gets_no_reply(lab: Lab, transport: str) -> None:
    """A message with QR=1 is a response: answering it could loop two servers."""
    plain = dns.message.make_query("example.org", "MX")
    response = dns.message.make_response(plain)
    response.id = 0x0BAD
    since = lab.events[-1].seq
    assert exchange(lab, response.to_wire(), transport) is None
    # QR alone set on an otherwise plain query: no reply either
    assert exchange(lab, with_flags(query(), 0x8100), transport) is None
    event = lab.wait_for("dns.malformed", node="dns", since=since)
    assert event.get("reason") == "a response"
    assert not [e for e in lab.events if e.seq > since and e.kind == "dns.answer"]
    assert_still_answers(lab, transport)


@TRANSPORTS
@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 15])
def test_an_unknown_opcode_gets_notimp(lab: Lab, transport: str, opcode: int) -> None:
    wire = with_flags(query(qid=0x0F0F), (opcode << 11) | 0x0100)  # opcode, RD
    reply = exchange(lab, wire, transport)
    assert reply is not None
    qid, flags, rcode, counts = header(reply)
    assert qid == 0x0F0F
    assert flags & 0x8000, "QR must be set in a reply"
    assert (flags >> 11) & 0xF == opcode, "the reply carries the query's opcode"
    assert rcode == dns.rcode.NOTIMP
    assert counts[1:] == [0, 0, 0], "no answer for an opcode the server does not implement"
    assert_still_answers(lab, transport)


@TRANSPORTS
@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(query(qid=0x0E0E)[:15], id="question-cut-short"),
        pytest.param(query(qid=0x0E0E)[:12], id="header-promises-a-question"),
        pytest.param(query(qid=0x0E0E)[:11] + b"\x05" + query()[12:], id="header-promises-records"),
        pytest.param(query(qid=0x0E0E)[:12] + b"\xc0\x0c\x00\x0f\x00\x01", id="name-pointer-loop"),
        pytest.param(
            query(qid=0x0E0E)[:12] + b"\x7fabc\x00\x00\x0f\x00\x01", id="label-past-the-end"
        ),
    ],
)
def test_a_readable_header_with_an_unreadable_body_gets_formerr(
    lab: Lab, transport: str, wire: bytes
) -> None:
    reply = exchange(lab, wire, transport)
    assert reply is not None
    qid, flags, rcode, counts = header(reply)
    assert qid == 0x0E0E
    assert flags & 0x8000
    assert rcode == dns.rcode.FORMERR
    assert counts == [0, 0, 0, 0]
    assert_still_answers(lab, transport)


@TRANSPORTS
@pytest.mark.parametrize("questions", [0, 2])
def test_other_than_one_question_gets_formerr(lab: Lab, transport: str, questions: int) -> None:
    message = dns.message.make_query("example.org", "MX")
    message.id = 0x0D0D
    if questions == 0:
        message.question = []
    else:
        message.question.append(dns.message.make_query("mx.example.org", "A").question[0])
    reply = exchange(lab, message.to_wire(), transport)
    assert reply is not None
    qid, _, rcode, counts = header(reply)
    assert (qid, rcode, counts[1]) == (0x0D0D, dns.rcode.FORMERR, 0)
    assert_still_answers(lab, transport)


@TRANSPORTS
@pytest.mark.parametrize("wire", [b"", b"\x12", b"\x00\x01not dns"], ids=["empty", "1", "11"])
def test_too_short_for_a_header_gets_no_reply(lab: Lab, transport: str, wire: bytes) -> None:
    assert exchange(lab, wire, transport) is None
    assert_still_answers(lab, transport)


@TRANSPORTS
def test_a_reply_copies_id_opcode_and_rd_but_no_other_flag(lab: Lab, transport: str) -> None:
    """A query with TC, Z, AD, CD and rcode bits set gets a clean reply: QR, AA, RD, RA."""
    wire = with_flags(query(qid=0x7777), 0x0100 | 0x0200 | 0x0070 | 0x000F)  # RD TC Z/AD/CD rc
    reply = exchange(lab, wire, transport)
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.id == 0x7777
    assert message.rcode() == dns.rcode.NOERROR
    assert message.flags & ~0xF == dns.flags.QR | dns.flags.AA | dns.flags.RD | dns.flags.RA
    assert [rd.to_text() for rrset in message.answer for rd in rrset] == ["10 mx.example.org."]


def test_tcp_one_connection_many_messages(lab: Lab) -> None:
    """Over one TCP connection: a response (ignored), garbage (FORMERR), NOTIMP, a query:
    each gets what it should, in order, and the connection stays up."""
    response = dns.message.make_response(dns.message.make_query("example.org", "MX"))
    messages = [
        response.to_wire(),
        query(qid=0x0001)[:14],
        with_flags(query(qid=0x0002), 4 << 11),
        query(qid=0x0003),
    ]
    with socket.create_connection(endpoint(lab), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        replies = [read_tcp(sock) for _ in range(3)]
    assert [header(r)[:1] + header(r)[2:3] if r else None for r in replies] == [
        (0x0001, dns.rcode.FORMERR),
        (0x0002, dns.rcode.NOTIMP),
        (0x0003, dns.rcode.NOERROR),
    ]
