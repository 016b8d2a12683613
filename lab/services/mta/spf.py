"""SPF (RFC 7208) for the lab's remote servers: does the client IP match the envelope
sender's domain policy?

The mechanisms the lab's scenarios need are evaluated here against the lab DNS through
the node's resolver: ip4, a, mx, include, redirect= and all, with the +, -, ~ and ?
qualifiers, and a limit of 10 DNS-querying terms. The SPF libraries on PyPI resolve with
the system resolver, which inside the in-process lab is not the lab's DNS, hence this
small evaluator.
"""

from __future__ import annotations

import ipaddress

from lab.services.resolver import DnsNotFound, DnsTemporaryError, Resolver

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MAX_LOOKUPS = 10


class _Limit(Exception):
    pass


async def check_spf(resolver: Resolver, client: str, domain: str) -> tuple[str, str]:
    """(result, explanation): pass, fail, softfail, neutral, none, temperror or permerror."""
    try:
        return await _check(resolver, ipaddress.IPv4Address(client), domain, [0])
    except DnsTemporaryError as exc:
        return "temperror", str(exc)
    except _Limit:
        return "permerror", "too many DNS lookups"
    except ValueError as exc:
        return "permerror", str(exc)


async def _record(resolver: Resolver, domain: str) -> str | None:
    try:
        texts = await resolver.txt(domain)
    except DnsNotFound:
        return None
    records = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(records) > 1:
        raise ValueError(f"{domain} has more than one SPF record")
    return records[0] if records else None


async def _check(
    resolver: Resolver, ip: ipaddress.IPv4Address, domain: str, lookups: list[int]
) -> tuple[str, str]:
    record = await _record(resolver, domain)
    if record is None:
        return "none", f"{domain} has no SPF record"
    redirect = None
    for term in record.split()[1:]:
        if term.lower().startswith("redirect="):
            redirect = term.split("=", 1)[1]
            continue
        if "=" in term:
            continue  # other modifiers (exp=) are ignored
        qualifier = "+"
        if term[0] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        name, _, arg = term.partition(":")
        name, _, cidr = name.partition("/")
        target = arg or domain
        matched = False
        kind = name.lower()
        if kind == "all":
            matched = True
        elif kind == "ip4":
            matched = ip in ipaddress.IPv4Network(arg, strict=False)
        elif kind in ("a", "mx", "include", "exists"):
            lookups[0] += 1
            if lookups[0] > MAX_LOOKUPS:
                raise _Limit
            prefix = int(cidr) if cidr else 32
            if kind == "a":
                matched = await _in_a(resolver, ip, target, prefix)
            elif kind == "mx":
                try:
                    hosts = await resolver.mx(target)
                except DnsNotFound:
                    hosts = []
                for mx in hosts:
                    if await _in_a(resolver, ip, mx.host, prefix):
                        matched = True
                        break
            elif kind == "exists":
                matched = await _in_a(resolver, None, target, 32)
            else:
                result, _ = await _check(resolver, ip, target, lookups)
                if result == "temperror":
                    raise DnsTemporaryError(f"include:{target}")
                if result in ("permerror", "none"):
                    raise ValueError(f"include:{target} gave {result}")
                matched = result == "pass"
        elif kind in ("ip6", "ptr"):
            continue
        else:
            raise ValueError(f"unknown SPF mechanism {name!r} in {domain}")
        if matched:
            return _QUALIFIERS[qualifier], f"matched {qualifier}{term} in {domain}"
    if redirect:
        lookups[0] += 1
        if lookups[0] > MAX_LOOKUPS:
            raise _Limit
        return await _check(resolver, ip, redirect, lookups)
    return "neutral", f"no mechanism of {domain} matched"


async def _in_a(
    resolver: Resolver, ip: ipaddress.IPv4Address | None, host: str, prefix: int
) -> bool:
    try:
        addresses = await resolver.addresses(host)
    except DnsNotFound:
        return False
    if ip is None:
        return bool(addresses)
    return any(ip in ipaddress.IPv4Network(f"{a}/{prefix}", strict=False) for a in addresses)
