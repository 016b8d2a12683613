"""Name lookups for services, through the lab DNS (dnspython builds and reads messages).

Answers are sorted into what mail routing needs: records, "does not exist" (NXDOMAIN or
no data: permanent), or "cannot tell now" (SERVFAIL, REFUSED, timeout, link down:
temporary). Every lookup goes over the host's network, so a hub whose dial-up link is
down cannot resolve, as on a real machine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from lab.services.host import HostNet


class DnsTemporaryError(Exception):
    """SERVFAIL, REFUSED, timeout or no route to the DNS server: try again later."""


class DnsNotFound(Exception):
    """NXDOMAIN: the name does not exist."""


@dataclass(frozen=True)
class MxHost:
    preference: int
    host: str


class DnsCache:
    """A host's cache of positive answers, as the caching resolver an MTA sits behind:
    each kept for its TTL on the lab clock (advancing the clock expires it). Emptied
    when the lab's DNS data is edited (`version` changes) and when one of the host's
    links goes up or down, so an edit or a fault shows at once and a hub whose link is
    down cannot resolve. Failures and "no such name" are not kept."""

    def __init__(self, now: Callable[[], float], version: Callable[[], int]):
        self._now = now
        self._version = version
        self._seen = version()
        self._answers: dict[tuple[str, str], tuple[float, list[str]]] = {}

    def get(self, name: str, rtype: str) -> list[str] | None:
        if self._version() != self._seen:
            self.clear()
        hit = self._answers.get((name.lower(), rtype))
        if hit is None:
            return None
        if hit[0] <= self._now():
            del self._answers[(name.lower(), rtype)]
            return None
        return list(hit[1])

    def put(self, name: str, rtype: str, texts: list[str], ttl: int) -> None:
        if texts and ttl > 0:
            self._answers[(name.lower(), rtype)] = (self._now() + ttl, list(texts))

    def clear(self) -> None:
        self._answers.clear()
        self._seen = self._version()


class Resolver:
    def __init__(self, net: HostNet, *, timeout: float = 2.0, cache: DnsCache | None = None):
        self.net = net
        self.timeout = timeout
        self.cache = cache

    async def query(self, name: str, rtype: str) -> list[str]:
        """Record texts of one type (through CNAMEs); [] for no data; raises for failures."""
        if self.cache is not None and (hit := self.cache.get(name, rtype)) is not None:
            return hit
        import dns.exception  # (dnspython: loaded at a host's first lookup, not at its start)
        import dns.message
        import dns.rcode
        import dns.rdatatype

        q = dns.message.make_query(name, rtype)
        try:
            response = await self.net.dns_query(q, timeout=self.timeout)
        except (TimeoutError, dns.exception.Timeout) as exc:
            raise DnsTemporaryError(f"timeout looking up {name} {rtype}") from exc
        except OSError as exc:
            raise DnsTemporaryError(
                f"cannot reach the DNS server for {name} {rtype}: {exc}"
            ) from exc
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            raise DnsNotFound(f"{name}: no such domain (NXDOMAIN)")
        if rcode != dns.rcode.NOERROR:
            raise DnsTemporaryError(f"{name} {rtype}: {dns.rcode.to_text(rcode)}")
        want = dns.rdatatype.from_text(rtype)
        texts = [rd.to_text() for rrset in response.answer if rrset.rdtype == want for rd in rrset]
        if self.cache is not None and response.answer:
            self.cache.put(name, rtype, texts, min(rrset.ttl for rrset in response.answer))
        return texts

    async def addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.IPv4Address(host))]
        except ValueError:
            pass
        return await self.query(host, "A")

    async def mx(self, domain: str) -> list[MxHost]:
        """MX hosts in preference order ([] when the domain has none)."""
        hosts = []
        for text in await self.query(domain, "MX"):
            pref, _, exchange = text.partition(" ")
            hosts.append(MxHost(int(pref), exchange.rstrip(".").lower() or "."))
        return sorted(hosts, key=lambda m: m.preference)

    async def txt(self, name: str) -> list[str]:
        texts = await self.query(name, "TXT")
        return ["".join(part.strip('"') for part in t.split('" "')) for t in texts]

    async def ptr(self, address: str) -> list[str]:
        import dns.reversename

        name = dns.reversename.from_address(address).to_text()
        return [t.rstrip(".").lower() for t in await self.query(name, "PTR")]

    async def domain_exists(self, domain: str) -> bool:
        """True when the domain has an MX or an A record (mail can be sent back to it)."""
        try:
            if await self.mx(domain):
                return True
        except DnsNotFound:
            return False
        return bool(await self.addresses(domain))
