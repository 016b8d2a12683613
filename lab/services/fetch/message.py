"""Reading and rewriting a fetched message: its envelope sender, the Return-Path taken
off, the multidrop names it was addressed to and their mapping, the Received line."""

from __future__ import annotations

import email.utils
import re
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

ENVELOPE_HEADERS = ("Delivered-To", "X-Envelope-To")
RECIPIENT_HEADERS = ("To", "Cc", "Resent-To", "Resent-Cc")
AGENT = "maillab-fetch"


def _head(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def envelope_sender(content: bytes) -> str:
    """The Return-Path of a message as stored by the POP server ('' for <>), else From."""
    head = BytesHeaderParser(policy=compat32).parsebytes(_head(content))
    path = head.get("Return-Path")
    if path is not None:
        value = str(path).strip()
        if value in ("<>", ""):
            return ""
        return email.utils.parseaddr(value)[1] or value.strip("<>")
    sender = head.get("From")
    return email.utils.parseaddr(str(sender))[1] if sender is not None else ""


_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def strip_return_path(content: bytes) -> bytes:
    """Take the Return-Path lines out of the header: the local MTA writes its own."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return _RETURN_PATH.sub(b"", content)
    return _RETURN_PATH.sub(b"", content[: end + 2]) + content[end + 2 :]


def _addresses(content: bytes, names: tuple[str, ...]) -> list[str]:
    head = BytesHeaderParser(policy=compat32).parsebytes(_head(content))
    values: list[str] = []
    for name in names:
        values += [str(v) for v in head.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def multidrop_names(content: bytes, domains: set[str]) -> list[str]:
    """The local parts this message was addressed to in our domains: from the envelope
    headers if the server wrote any, else from the recipient headers."""
    for headers in (ENVELOPE_HEADERS, RECIPIENT_HEADERS):
        names = []
        for address in _addresses(content, headers):
            local, at, domain = address.rpartition("@")
            if at and local and domain.lower().rstrip(".") in domains:
                names.append(local)
        if names:
            return names
    return []


def map_names(names: list[str], table: dict[str, str | None], postmaster: str) -> list[str]:
    """fetchmail's 'to eddy nelug=eddy ... here': remote name -> local user, unmatched to
    the postmaster; case-insensitive, each local user once, in order."""
    lookup = {remote.lower(): (local or remote) for remote, local in table.items()}
    mapped = [lookup.get(name.lower(), postmaster) for name in names] or [postmaster]
    seen: set[str] = set()
    result = []
    for user in mapped:
        if user.lower() not in seen:
            seen.add(user.lower())
            result.append(user)
    return result


def received_header(*, server: str, by: str, recipient: str, mode: str, when: float) -> bytes:
    date = email.utils.format_datetime(datetime.fromtimestamp(when).astimezone())
    return (
        f"Received: from {server}\r\n"
        f"\tby {by} with POP3 ({AGENT})\r\n"
        f"\tfor {recipient} ({mode}); {date}\r\n"
    ).encode()
