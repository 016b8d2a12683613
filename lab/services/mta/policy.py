"""What the built-in MTA refuses, and with which reply (the codes real MTAs use).

- relay control: a recipient outside the local domains is accepted only from a client
  in `relay_from` (550 5.7.1 Relaying denied), or in one of `relay_domains` from anyone
  (a backup MX), unless its local part routes further (`%`, `!`, `@`: Postfix's
  allow_untrusted_routing = no); the classic address tricks (percent hack, quoted local
  parts, source routes, bang paths) are refused for not naming a local user (550 5.1.1),
  never relayed;
- unknown local user: 550 5.1.1;
- sender domain verification: no MX and no A -> 553 5.1.8; DNS failure -> 451 4.1.8;
- SPF on the envelope sender (spf.py): fail -> 550 5.7.23; temporary error -> 451 4.7.24;
- greylisting: 451 4.7.1 for a new (client, sender, recipient) until the delay passed;
- content: a message over `max_size` (552 5.3.4), bare CR or LF (550 5.5.2),
  8-bit data without BODY=8BITMIME (554 5.6.1), too many Received: lines (554 5.4.6).
"""

from __future__ import annotations

import ipaddress
import re
from typing import cast

from aiosmtpd.smtp import Envelope, Session

from lab.protocols import smtp as codes
from lab.protocols.smtp import split_address
from lab.services.mta.frontend import Mta
from lab.services.resolver import DnsTemporaryError

_RECEIVED = re.compile(rb"(?im)^Received:")
_ROUTING = re.compile(r"[%!@]")  # sender-specified routing in a local part


def peer_address(session: Session) -> str:
    """The client's lab address.

    aiosmtpd annotates `Session.peer` as `str | None`, but stores the socket's peername
    there, a (host, port) tuple; the lab's SMTP server puts the (lab address, port) of
    the client there before the session starts.
    """
    return cast("tuple[str, int]", session.peer)[0]


def client_may_relay(mta: Mta, client: str) -> bool:
    try:
        address = ipaddress.IPv4Address(client)
    except ValueError:
        return False
    if client in mta.host.addresses.values() or address.is_loopback:
        return True  # the host's own programs (sendmail relays for localhost)
    topology = mta.host.topology
    for item in mta.node.relay_from:
        if item in topology.networks:
            if address in topology.networks[item].subnet:
                return True
        elif address in ipaddress.IPv4Network(item, strict=False):
            return True
    return False


async def check_sender(mta: Mta, session: Session, sender: str) -> str | None:
    if not sender:
        return None  # the null sender is always accepted (RFC 5321 section 4.5.5)
    _, domain = split_address(sender)
    book = mta.book
    if mta.node.policy.verify_sender_domain and domain and not book.is_local_domain(domain):
        try:
            exists = await mta.resolver.domain_exists(domain)
        except DnsTemporaryError:
            return codes.SENDER_DOMAIN_TEMPFAIL.format(addr=f"<{sender}>")
        if not exists:
            return codes.SENDER_DOMAIN_UNKNOWN.format(addr=f"<{sender}>")
    spf_mode = mta.node.policy.spf.value
    if spf_mode != "off" and domain:
        from lab.services.mta.spf import check_spf

        client = peer_address(session)
        result, why = await check_spf(mta.resolver, client, domain)
        mta.host.emit("policy.spf", sender=sender, client=client, result=result, reason=why)
        if spf_mode == "reject" and result == "fail":
            return codes.SPF_FAIL.format(addr=f"<{sender}>", ip=client, domain=domain)
        if spf_mode == "reject" and result == "temperror":
            return codes.SPF_TEMPFAIL.format(domain=domain)
    return None


async def check_recipient(
    mta: Mta, session: Session, envelope: Envelope, address: str
) -> str | None:
    local, domain = split_address(address)
    book = mta.book
    client = peer_address(session)
    if book.is_local_domain(domain) or (not domain and local.lower() == "postmaster"):
        if local.lower() == "postmaster" or book.knows(address):
            return _greylist(mta, client, envelope, address)
        return f"550 5.1.1 <{address}>... User unknown"
    if domain in book.relay_domains and not _ROUTING.search(local):
        return _greylist(mta, client, envelope, address)
    if not client_may_relay(mta, client):
        return f"550 5.7.1 <{address}>... Relaying denied"
    return _greylist(mta, client, envelope, address)


def _greylist(mta: Mta, client: str, envelope: Envelope, address: str) -> str | None:
    grey = mta.node.policy.greylist
    if grey is None or not grey.enabled:
        return None
    key = (client, envelope.mail_from or "", address.lower())
    now = mta.host.clock.time()
    first = mta.greylist.setdefault(key, now)
    if now - first < grey.delay:
        mta.host.emit(
            "policy.greylisted",
            client=client,
            sender=key[1],
            rcpt=address,
            retry_after=first + grey.delay,
        )
        return codes.GREYLISTED
    return None


def has_bare_newline(content: bytes) -> bool:
    """A CR or LF that is not part of a CRLF pair (counted: far quicker than a search)."""
    pairs = content.count(b"\r\n")
    return content.count(b"\r") != pairs or content.count(b"\n") != pairs


def check_content(mta: Mta, envelope: Envelope, content: bytes) -> str | None:
    policy = mta.node.policy
    if len(content) > policy.max_size:
        return codes.MESSAGE_TOO_BIG
    if has_bare_newline(content):
        return codes.BARE_NEWLINE
    declared_8bit = any(o.upper() == "BODY=8BITMIME" for o in envelope.mail_options)
    if not declared_8bit and not content.isascii():
        return codes.EIGHT_BIT_WITHOUT_8BITMIME
    head_end = content.find(b"\r\n\r\n")
    head = content if head_end < 0 else content[:head_end]
    if len(_RECEIVED.findall(head)) >= policy.max_received:
        return codes.LOOP_DETECTED
    return None
