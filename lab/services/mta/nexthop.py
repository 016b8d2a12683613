"""Where a remote recipient goes next: the smarthost, or the domain's mail exchangers.

A next hop has a key: `smarthost:HOST[:PORT]` when the node relays everything through
one host, else `mx:DOMAIN` (always for the node's relay_domains: a backup MX passes their
mail to their MX hosts). Resolving it gives the servers to try in order: the smarthost's
addresses, or the MX hosts in preference order with their addresses (the domain's own A
record as an implicit MX when it has none), or the error that ends the attempt (a null
MX, a name that does not exist: 5xx; a DNS failure: 4xx).

A host that finds itself among a domain's MX hosts tries only those preferred over it
(RFC 5321 section 5.1): a backup MX hands mail to the primary and, while the primary
does not answer, keeps it queued; the most preferred one has nowhere to send it (a loop).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from lab.protocols.smtp import Reply, split_address
from lab.services.resolver import DnsNotFound, DnsTemporaryError, Resolver
from lab.topology.addressing import hostname_of
from lab.topology.model import Node, Topology

SMTP_PORT = 25


@dataclass
class Hop:
    """Where a group of recipients goes next."""

    key: str  # "smarthost:HOST" or "mx:DOMAIN"
    candidates: list[tuple[str, str, int]] = field(default_factory=list)  # (name, address, port)
    error: Reply | None = None  # set when the hop cannot be resolved


def hop_key(node: Node, address: str) -> str:
    domain = split_address(address)[1]
    if node.smarthost and domain not in node.relay_domains:
        return f"smarthost:{node.smarthost}"
    return f"mx:{domain}"


def loops_back(domain: str) -> Reply:
    return Reply(554, f"5.4.6 mail for {domain} loops back to myself")


async def resolve_hop(
    key: str, resolver: Resolver, topology: Topology, mine: Collection[str] = ()
) -> Hop:
    """The servers for next hop `key`; `mine` are the host's own addresses."""
    hop = Hop(key)
    kind, _, target = key.partition(":")
    try:
        if kind == "smarthost":
            name, port = _host_port(target)
            if name in topology.nodes:
                name = hostname_of(topology, name)
            addresses = await resolver.addresses(name)
            if not addresses:
                hop.error = Reply(550, f"5.1.2 smarthost {name} has no address")
            hop.candidates = [(name, a, port) for a in addresses]
            return hop
        mx = await resolver.mx(target)
        if len(mx) == 1 and mx[0].host == ".":
            hop.error = Reply(556, f"5.1.10 {target} does not accept mail (null MX)")
            return hop
        names = [(m.preference, m.host) for m in mx] if mx else [(0, target)]
        found: list[tuple[int, str, str]] = []
        for preference, name in names:
            try:
                found += [(preference, name, a) for a in await resolver.addresses(name)]
            except DnsNotFound:
                continue
        own = [preference for preference, _, address in found if address in mine]
        if own:  # only the MX hosts preferred over this one (RFC 5321 section 5.1)
            found = [c for c in found if c[0] < min(own)]
            if not found:
                hop.error = loops_back(target)
                return hop
        hop.candidates = [(name, address, SMTP_PORT) for _, name, address in found]
        if not hop.candidates:
            hop.error = Reply(
                550,
                f"5.1.2 Host or domain name not found: {target}"
                + (" (no MX, no A)" if not mx else ""),
            )
    except DnsNotFound as exc:
        hop.error = Reply(550, f"5.1.2 Host or domain name not found. {exc}")
    except DnsTemporaryError as exc:
        hop.error = Reply(451, f"4.4.3 Host name lookup failure: {exc}")
    return hop


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return target, SMTP_PORT
