"""The lab's DNS data as one table, used two ways: the DNS server answers from it, and
validation (and tests) look names up in it directly, without a socket.

Faults (SERVFAIL, timeout, NXDOMAIN, REFUSED) are entries of the table like records are,
so a scenario can make a name fail as easily as it makes it resolve. The table is
editable while a lab runs.

Names outside every lab zone do not exist: the lab is the whole world.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lab.topology.addressing import Addresses, hostname_of
from lab.topology.model import DnsFaultRule, Topology

MAX_CNAME_CHAIN = 8


class Rcode(StrEnum):
    noerror = "NOERROR"
    nxdomain = "NXDOMAIN"
    servfail = "SERVFAIL"
    refused = "REFUSED"
    timeout = "TIMEOUT"  # not an rcode on the wire: the server stays silent


@dataclass
class Records:
    A: list[ipaddress.IPv4Address] = field(default_factory=list)
    MX: list[tuple[int, str]] = field(default_factory=list)
    CNAME: str | None = None
    TXT: list[str] = field(default_factory=list)
    NS: list[str] = field(default_factory=list)
    PTR: list[str] = field(default_factory=list)
    fault: str | None = None
    ttl: int | None = None

    def of(self, rtype: str) -> list[object]:
        if rtype == "CNAME":
            return [self.CNAME] if self.CNAME else []
        return list(getattr(self, rtype, []))


@dataclass
class Answer:
    rcode: Rcode
    records: list[tuple[str, str, object]] = field(default_factory=list)  # (owner, type, data)

    @property
    def ok(self) -> bool:
        return self.rcode is Rcode.noerror and bool(self.records)

    def values(self, rtype: str) -> list[object]:
        return [data for _, kind, data in self.records if kind == rtype]


def normalise(name: str) -> str:
    return name.rstrip(".").lower()


def reverse_name(address: ipaddress.IPv4Address) -> str:
    return normalise(address.reverse_pointer)


class RecordTable:
    """name -> Records for the whole lab."""

    def __init__(self, ttl: int = 300):
        self.names: dict[str, Records] = {}
        self.zones: set[str] = set()
        self.ttl = ttl
        self.version = 0  # goes up with every edit: resolvers' caches are stale then
        # faults by name glob, with a window and a chance: the DNS server applies them
        self.fault_rules: list[DnsFaultRule] = []

    # building -----------------------------------------------------------------------

    @classmethod
    def from_topology(cls, topology: Topology, addresses: Addresses) -> RecordTable:
        table = cls(topology.dns.ttl)
        table.fault_rules = list(topology.dns.faults)
        for zone, entries in topology.dns.zones.items():
            zone = normalise(zone)
            table.zones.add(zone)
            for label, rs in entries.items():
                owner = qualify(label, zone)
                rec = table.names.setdefault(owner, Records())
                rec.A.extend(rs.A)
                rec.MX.extend((mx.preference, normalise(mx.exchange) or ".") for mx in rs.MX)
                rec.CNAME = normalise(rs.CNAME) if rs.CNAME else rec.CNAME
                rec.TXT.extend(rs.TXT)
                rec.NS.extend(normalise(n) for n in rs.NS)
                rec.PTR.extend(normalise(n) for n in rs.PTR)
                rec.fault = rs.fault.value if rs.fault else rec.fault
                rec.ttl = rs.ttl if rs.ttl is not None else rec.ttl
        # A name the zones give an address (A) or an alias (CNAME) keeps it; a node's
        # hostname that has only other records (an MX at the apex, say) still gets its A.
        explicit = {name for name, rec in table.names.items() if rec.A or rec.CNAME}
        if topology.dns.hosts == "auto":
            for node in topology.nodes:
                host = normalise(hostname_of(topology, node))
                if host in explicit:
                    continue
                rec = table.names.setdefault(host, Records())
                for address in addresses.get(node, {}).values():
                    if address not in rec.A:
                        rec.A.append(address)
        if topology.dns.ptr == "auto":
            host_names = [normalise(hostname_of(topology, n)) for n in topology.nodes]
            owners = host_names + [n for n in table.names if n not in host_names]
            for owner in owners:
                owned = table.names.get(owner)
                if owned is None:
                    continue
                for address in owned.A:
                    reverse = table.names.setdefault(reverse_name(address), Records())
                    if not reverse.PTR:
                        reverse.PTR.append(owner)
        return table

    # editing ------------------------------------------------------------------------

    def set(self, name: str, rtype: str, values: list[Any]) -> None:
        self.version += 1
        rec = self.names.setdefault(normalise(name), Records())
        if rtype == "CNAME":
            rec.CNAME = normalise(str(values[0])) if values else None
        elif rtype == "MX":
            rec.MX = [(int(p), normalise(str(h)) or ".") for p, h in values]
        elif rtype == "A":
            rec.A = [ipaddress.IPv4Address(str(v)) for v in values]
        else:
            setattr(rec, rtype, [str(v) for v in values])

    def set_fault(self, name: str, fault: str | None) -> None:
        self.version += 1
        self.names.setdefault(normalise(name), Records()).fault = fault

    def set_fault_rules(self, rules: list[DnsFaultRule]) -> None:
        """Replace the glob fault rules (the DNS server starts their gates afresh)."""
        self.version += 1
        self.fault_rules = list(rules)

    def restore(self, table: RecordTable) -> None:
        """Take `table`'s records as they are (a table built from the topology again:
        `Lab.reset()` undoes every edit); resolvers see an edit."""
        self.names = table.names
        self.zones = table.zones
        self.fault_rules = table.fault_rules
        self.ttl = table.ttl
        self.version += 1

    def remove(self, name: str) -> None:
        self.version += 1
        self.names.pop(normalise(name), None)

    # looking up ---------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """A name exists if it has records, is a zone apex, or has names below it."""
        name = normalise(name)
        if name in self.zones:
            return True
        rec = self.names.get(name)
        if rec and (rec.A or rec.MX or rec.CNAME or rec.TXT or rec.NS or rec.PTR):
            return True
        suffix = "." + name
        return any(other.endswith(suffix) for other in self.names)

    def lookup(self, name: str, rtype: str) -> Answer:
        name = normalise(name)
        answer = Answer(Rcode.noerror)
        for _ in range(MAX_CNAME_CHAIN):
            rec = self.names.get(name)
            if rec and rec.fault:
                return Answer(Rcode(rec.fault.upper()), answer.records)
            if rec and rec.CNAME and rtype != "CNAME":
                answer.records.append((name, "CNAME", rec.CNAME))
                name = rec.CNAME
                continue
            if rec:
                answer.records.extend((name, rtype, value) for value in rec.of(rtype))
            if not answer.records and not self.exists(name):
                answer.rcode = Rcode.nxdomain
            return answer
        return Answer(Rcode.servfail, answer.records)

    def resolves(self, name: str) -> bool:
        """True when the name has an address (A, through CNAMEs) in the table."""
        return bool(self.lookup(name, "A").values("A"))


def qualify(label: str, zone: str) -> str:
    if label == "@":
        return zone
    if label.endswith("."):
        return normalise(label)
    return f"{label.lower()}.{zone}"
