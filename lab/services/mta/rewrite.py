"""Masquerading: how local addresses look when mail leaves the host.

As sendmail's MASQUERADE_AS with MASQUERADE_DOMAIN, FEATURE(masquerade_entire_domain),
FEATURE(allmasquerade) and FEATURE(masquerade_envelope): header From/Sender/Reply-To,
recipients' To/Cc and the envelope sender are each rewritten only when switched on.
`as` may also be a whole address (exim's return_path = "joe.bloggs@isp.com").

Header rewriting touches only the fields it rewrites; the rest of the message, body
included, stays byte for byte as it was.
"""

from __future__ import annotations

import functools
import re
from email.utils import formataddr, getaddresses

from lab.protocols.smtp import split_address
from lab.topology.model import Masquerade

SENDER_HEADERS = ("from", "sender", "reply-to")
RECIPIENT_HEADERS = ("to", "cc")
_FIELD = re.compile(rb"^([!-9;-~]+):", re.ASCII)


def masquerade_address(address: str, m: Masquerade, local_domains: list[str]) -> str:
    return _masquerade(address, m.as_, tuple(m.domains or local_domains), m.entire_domain)


def _masquerade(address: str, as_: str, domains: tuple[str, ...], entire_domain: bool) -> str:
    if not address or address == "<>":
        return address
    local, domain = split_address(address)
    lowered = [d.lower() for d in domains]
    hit = (
        domain == ""
        or domain in lowered
        or (entire_domain and any(domain.endswith("." + d) for d in lowered))
    )
    if not hit:
        return address
    if "@" in as_:
        return as_
    return f"{local}@{as_}"


def _rewrite_value(value: str, m: Masquerade, local_domains: list[str]) -> str:
    return _rewrite_cached(value, m.as_, tuple(m.domains or local_domains), m.entire_domain)


@functools.lru_cache(maxsize=256)  # the same From: line goes by again and again
def _rewrite_cached(value: str, as_: str, domains: tuple[str, ...], entire_domain: bool) -> str:
    pairs = getaddresses([value])
    if not pairs or any("@" not in addr for _, addr in pairs):
        return value  # not a list of addresses we can rewrite safely ("Your Dad")
    rewritten = [(name, _masquerade(addr, as_, domains, entire_domain)) for name, addr in pairs]
    if rewritten == pairs:
        return value
    return ", ".join(formataddr(p) for p in rewritten)


def rewrite_headers(content: bytes, m: Masquerade, local_domains: list[str]) -> bytes:
    names: set[str] = set()
    if m.header:
        names.update(SENDER_HEADERS)
    if m.recipients:
        names.update(RECIPIENT_HEADERS)
    if not names:
        return content
    end = content.find(b"\r\n\r\n")
    head, body = (content, b"") if end < 0 else (content[: end + 2], content[end + 2 :])
    lines = head.split(b"\r\n")
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    out = []
    for field in fields:
        match = _FIELD.match(field[0])
        if match and match.group(1).decode().lower() in names:
            name = match.group(1).decode()
            value = b"\r\n".join(field)[len(name) + 1 :].decode("utf-8", "surrogateescape")
            unfolded = re.sub(r"\r\n[ \t]", " ", value).strip()
            new = _rewrite_value(unfolded, m, local_domains)
            if new != unfolded:
                new = new.replace("\r", "").replace("\n", "")
                out.append(f"{name}: {new}".encode("utf-8", "surrogateescape"))
                continue
        out.extend(field)
    return b"\r\n".join(out) + body
