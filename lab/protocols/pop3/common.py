"""What both sides of a POP3 session share: limits, response codes, states, signals, the
maildrop a server session serves, and the byte-level helpers (CRLF, byte-stuffing, TOP,
UIDL unique-ids, APOP digests)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

POP3_PORT = 110
MAX_COMMAND = 255  # RFC 2449 section 4: a command line, CRLF included
MAX_ARGUMENT = 40  # RFC 2449 section 4: one argument
MAX_UID = 70  # RFC 1939 section 7: a unique-id is 1 to 70 characters 0x21..0x7E

# Extended response codes (RFC 2449 section 8, RFC 3206).
IN_USE = "IN-USE"
LOGIN_DELAY = "LOGIN-DELAY"
SYS_TEMP = "SYS/TEMP"
SYS_PERM = "SYS/PERM"
AUTH = "AUTH"


class State(Enum):
    """The states of a POP3 session (RFC 1939 section 3), and CLOSED after it."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Signal(Enum):
    """What `next_event` returns when it has no event."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data
    PAUSED = "PAUSED"  # answer the last request event first


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class Pop3UsageError(Exception):
    """The application called the core out of turn (a bug in the shell, not the peer)."""


@dataclass(frozen=True)
class ConnectionLost:
    """The peer went away before QUIT: nothing was removed."""

    state: State
    marked: int  # messages marked deleted and left in place


# ---------------------------------------------------------------------------------------
# Messages and maildrops


@dataclass(frozen=True)
class MessageInfo:
    """One message of a maildrop as the session sees it."""

    uid: str  # stable across sessions
    size: int  # octets with CRLF line ends
    key: str = ""  # the store's name for it (a Maildir key)


class Maildrop(Protocol):
    """What the server core needs of a maildrop: a listing fixed at login, and contents."""

    def messages(self) -> Sequence[MessageInfo]: ...

    def read(self, message: MessageInfo) -> bytes: ...


class MemoryMaildrop:
    """A maildrop held in memory (tests, and anything that is not a Maildir)."""

    def __init__(self, contents: Sequence[bytes], uids: Sequence[str] | None = None):
        uids = list(uids) if uids is not None else [f"m{i}" for i in range(1, len(contents) + 1)]
        self.contents = {uid: data for uid, data in zip(uids, contents, strict=True)}
        self._infos = [
            MessageInfo(uid, len(to_crlf(data)), uid) for uid, data in self.contents.items()
        ]

    def messages(self) -> Sequence[MessageInfo]:
        return list(self._infos)

    def read(self, message: MessageInfo) -> bytes:
        return self.contents[message.key]


_LINE_END = re.compile(rb"\r\n|\r|\n")
_STUFF = re.compile(rb"(?m)^\.")
_UID_OK = re.compile(r"^[\x21-\x7e]{1,70}$")


def to_crlf(data: bytes) -> bytes:
    """The message as POP3 sends it: every line ending in CRLF, the last one too."""
    data = _LINE_END.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def stuff(data: bytes) -> bytes:
    """Multi-line reply data: byte-stuffed and terminated (data must be CRLF-ended)."""
    return _STUFF.sub(b"..", data) + b".\r\n"


def unstuff(data: bytes) -> bytes:
    return _STUFF.sub(b"", data)


def uid_for_key(key: str) -> str:
    """A UIDL unique-id from a Maildir key: the key itself when it fits, else its digest."""
    base = key.split(":", 1)[0]
    if _UID_OK.match(base):
        return base
    return hashlib.md5(base.encode("utf-8", "surrogateescape")).hexdigest()


def apop_digest(timestamp: str, secret: str) -> str:
    """MD5 of the banner's timestamp (angle brackets included) and the shared secret."""
    return hashlib.md5((timestamp + secret).encode("utf-8")).hexdigest()


def top(data: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` lines of the body (CRLF data)."""
    split = data.find(b"\r\n\r\n")
    if split < 0:
        return data
    head, body = data[: split + 4], data[split + 4 :]
    if lines == 0 or not body:
        return head
    kept = body[:-2].split(b"\r\n", lines)[:lines]  # body ends with CRLF (to_crlf)
    return head + b"\r\n".join(kept) + b"\r\n"
