"""Masquerading: how local addresses look when mail leaves the host.

As sendmail's MASQUERADE_AS with MASQUERADE_DOMAIN, FEATURE(masquerade_entire_domain),
FEATURE(allmasquerade) and FEATURE(masquerade_envelope): header From/Sender/Reply-To,
recipients' To/Cc and the envelope sender are each rewritten only when switched on.
`as` may also be a whole address (exim's return_path = "joe.bloggs@isp.com").

Header rewriting touches only the fields it rewrites; the rest of the message, body
included, stays byte for byte as it was.
"""

from __future__ import annotations

import re
from email.utils import formataddr, getaddresses

from lab.protocols.smtp import split_address
from lab.topology.model import Masquerade

SENDER_HEADERS = ("from", "sender", "reply-to")
RECIPIENT_HEADERS = ("to", "cc")
_FIELD = re.compile(rb"^([!-9;-~]+):", re.ASCII)


def masquerade_address(address: str, m: Masquerade, local_domains: list[str]) -> str:
    if not address or address == "<>":
        return address
    local, domain = split_address(address)
    domains = [d.lower() for d in (m.domains or local_domains)]
    hit = (
        domain == ""
        or domain in domains
        or (m.entire_domain and any(domain.endswith("." + d) for d in domains))
    )
    if not hit:
        return address
    if "@" in m.as_:
        return m.as_
    return f"{local}@{m.as_}"


def _rewrite_value(value: str, m: Masquerade, local_domains: list[str]) -> str:
    pairs = getaddresses([value])
    if not pairs or any("@" not in addr for _, addr in pairs):
        return value  # not a list of addresses we can rewrite safely ("Your Dad")
    rewritten = [(name, masquerade_address(addr, m, local_domains)) for name, addr in pairs]
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
