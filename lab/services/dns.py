"""The lab DNS: answers over UDP and TCP from the lab's record table (dnslib on the wire).

Faults are entries of the table: SERVFAIL, REFUSED and NXDOMAIN are answered as such, and
`timeout` is answered with silence. Every query and answer is an event.

What is not a query gets what RFC 1035 says, and never an answer from the table: a
message too short for a header, or a response (QR=1), gets no reply at all (answering
responses lets two servers loop); an opcode other than QUERY gets NOTIMP; a header that
reads but a body that does not, or other than one question, gets FORMERR. Each is a
`dns.malformed` event with the reason.
"""

from __future__ import annotations

import asyncio
import fnmatch
import struct
from typing import Any

from dnslib import (
    CNAME,
    MX,
    NS,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    TXT,
    A,
    DNSBuffer,
    DNSHeader,
    DNSRecord,
)

from lab.services.faultgate import Gates
from lab.services.host import Host
from lab.topology.model import DnsFaultRule
from lab.topology.records import Answer, Rcode, RecordTable

DNS_PORT = 53
HEADER_SIZE = 12

_RDATA = {
    "A": lambda v: A(str(v)),
    "MX": lambda v: MX(v[1] if v[1] != "." else ".", v[0]),
    "CNAME": lambda v: CNAME(v),
    "TXT": lambda v: TXT(_txt_chunks(v)),
    "NS": lambda v: NS(v),
    "PTR": lambda v: PTR(v),
}


def _txt_chunks(text: str) -> list[bytes]:
    raw = text.encode()
    return [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]


class DnsServer:
    """One node's DNS service."""

    def __init__(self, host: Host, table: RecordTable):
        self.host = host
        self.table = table
        self.gates = Gates(host.topology.seed or 0, host.name)
        self._rules: list[DnsFaultRule] = []  # the rules the gates were made for
        self.probing = False  # a readiness probe: fault rules neither strike nor count

    async def start(self) -> None:
        await self.host.net.listen_udp(DNS_PORT, lambda: _Udp(self))
        await self.host.net.listen(DNS_PORT, lambda: _Tcp(self))

    def answer(self, wire: bytes, peer: str, transport: str) -> bytes | None:
        """The reply for one message, or None to stay silent (a timeout fault, a message
        that is not a query)."""
        if len(wire) < HEADER_SIZE:
            self.host.emit("dns.malformed", peer=peer, size=len(wire), reason="no header")
            return None
        header = DNSHeader.parse(DNSBuffer(wire[:HEADER_SIZE]))
        if header.qr:
            self.host.emit("dns.malformed", peer=peer, size=len(wire), reason="a response")
            return None
        if header.opcode != OPCODE.QUERY:
            reason = f"opcode {OPCODE.get(header.opcode)}"
            self.host.emit("dns.malformed", peer=peer, size=len(wire), reason=reason)
            return _error_reply(header, RCODE.NOTIMP)
        try:
            request = DNSRecord.parse(wire)
        except Exception:  # dnslib raises several kinds on garbage
            self.host.emit("dns.malformed", peer=peer, size=len(wire), reason="unreadable")
            return _error_reply(header, RCODE.FORMERR)
        if len(request.questions) != 1:
            reason = f"{len(request.questions)} questions"
            self.host.emit("dns.malformed", peer=peer, size=len(wire), reason=reason)
            return _error_reply(header, RCODE.FORMERR)
        try:
            return self._answer(request, peer, transport)
        except Exception as exc:  # a name the table or dnslib cannot take: not a crash
            self.host.emit(
                "dns.malformed", peer=peer, size=len(wire), reason=f"{type(exc).__name__}"
            )
            return _error_reply(header, RCODE.SERVFAIL)

    def _answer(self, request: DNSRecord, peer: str, transport: str) -> bytes | None:
        reply = DNSRecord(_reply_header(request.header), q=request.q)
        question = request.q
        name = str(question.qname).rstrip(".")
        rtype = QTYPE.get(question.qtype)
        self.host.emit("dns.query", peer=peer, name=name, type=rtype, transport=transport)
        if (rule := self._rule(name, rtype, peer)) is not None:
            result = Answer(Rcode[rule.fault.value])
        elif rtype not in _RDATA and rtype != "ANY":
            result = Answer(Rcode.noerror if self.table.exists(name) else Rcode.nxdomain)
        elif rtype == "ANY":
            result = Answer(Rcode.noerror)
            for kind in _RDATA:
                result.records += self.table.lookup(name, kind).records
        else:
            result = self.table.lookup(name, rtype)
        if result.rcode is Rcode.timeout:
            self.host.emit(
                "dns.answer", peer=peer, name=name, type=rtype, rcode="TIMEOUT", answers=[]
            )
            return None
        reply.header.aa = 1
        reply.header.rcode = getattr(RCODE, result.rcode.value)
        ttl = self.table.ttl
        for owner, kind, data in result.records:
            rec = self.table.names.get(owner)
            reply.add_answer(
                RR(
                    owner + ".",
                    getattr(QTYPE, kind),
                    rdata=_RDATA[kind](data),
                    ttl=rec.ttl if rec and rec.ttl is not None else ttl,
                )
            )
        self.host.emit(
            "dns.answer",
            peer=peer,
            name=name,
            type=rtype,
            rcode=result.rcode.value,
            answers=[_show(k, d) for _, k, d in result.records],
        )
        packed = reply.pack()
        if transport == "udp" and len(packed) > 512:
            reply = DNSRecord(_reply_header(request.header), q=request.q)
            reply.header.tc = 1
            packed = reply.pack()
        return bytes(packed)

    def _rule(self, name: str, rtype: str, peer: str) -> DnsFaultRule | None:
        """The first glob fault rule that strikes for this query now."""
        rules = self.table.fault_rules
        if rules is not self._rules:
            self._rules = rules
            self.gates.clear()
        if self.probing:
            return None
        clock = self.host.clock
        for index, rule in enumerate(rules):
            if not fnmatch.fnmatchcase(name.lower(), rule.name):
                continue
            if rule.type is not None and rule.type != rtype:
                continue
            gate = self.gates.gate(index, rule)
            if gate.strikes(clock.time(), clock.epoch, peer, rule.times)[0]:
                self.host.emit(
                    "fault.triggered",
                    stage="dns",
                    name=name,
                    type=rtype,
                    fault=rule.fault.value,
                    client=peer,
                    index=index,
                    hit=gate.hits,
                )
                return rule
        return None


def _reply_header(request: DNSHeader, rcode: int = RCODE.NOERROR) -> DNSHeader:
    """A reply's header: the request's id, opcode and RD (RFC 1035 4.1.1), nothing else
    of its flags (not its TC, Z or rcode bits)."""
    return DNSHeader(
        id=request.id, qr=1, opcode=request.opcode, rd=request.rd, aa=1, ra=1, rcode=rcode
    )


def _error_reply(request: DNSHeader, rcode: int) -> bytes:
    """A header-only reply (no sections) with this rcode."""
    return bytes(DNSRecord(_reply_header(request, rcode)).pack())


def _show(kind: str, data: Any) -> str:
    if kind == "MX":
        return f"MX {data[0]} {data[1]}"
    return f"{kind} {data}"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer, _ = self.server.host.net.peer_of(addr)
        reply = self.server.answer(data, peer, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer, _, _ = self.server.host.net.accepted(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (size,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + size:
                return
            wire, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            reply = self.server.answer(wire, self.peer, "tcp")
            if reply is not None and self.transport is not None:
                self.transport.write(struct.pack("!H", len(reply)) + reply)
