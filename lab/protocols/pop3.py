"""POP3 as a sans-IO state machine: the server and the client, no sockets.

RFC 1939 (with CAPA and response codes from RFC 2449, the AUTH code from RFC 3206 and
STLS from RFC 2595), in the manner of h11: bytes in, events out, bytes to send.

The server core (`Pop3Server`) answers almost everything itself from the maildrop it is
given at login. It stops and hands an event to the application only for what it cannot
decide: a login (`LoginRequest` -> `accept_login` / `reject_login`), the switch to TLS
(`StartTls` -> `tls_started`) and the UPDATE state's deletions (`UpdateRequest` ->
`update_done`). It also reports what happened (`MessageRetrieved`, `MessageDeleted`,
`CommandRefused`, `Closed`, `ConnectionLost`) so the shell can log it. Its three states
and the commands each one accepts are the table `TRANSITIONS`.

The client core (`Pop3Client`) is the mirror image: commands in, bytes out; replies
(single-line, or multi-line for CAPA, LIST, UIDL, RETR and TOP) out as `Ok` / `Err`
events, multi-line data with the byte-stuffing undone.

Rules kept here, so every shell gets them:
- DELE only marks; marked messages are removed in the UPDATE state, after QUIT. A
  session that ends any other way (`receive_data(b"")`) removes nothing.
- A marked message is refused by RETR, TOP, LIST n, UIDL n and DELE.
- Sizes count CRLF line ends (messages are sent with CRLF whatever they are stored with).
- Lines starting with "." are byte-stuffed; a multi-line reply ends with ".".
- A command line longer than 255 octets is answered -ERR and skipped, whatever its
  length; so is an unknown command, a command in the wrong state, or a bad argument.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import deque
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

# Replies the server gives, named for what they mean.
OK_USER = "+OK send PASS"
OK_STLS = "+OK Begin TLS negotiation now"
OK_CAPA = "+OK Capability list follows"
OK_NOOP = "+OK"
OK_TOP = "+OK top of message follows"
OK_UIDL = "+OK unique-id listing follows"
OK_BYE = "+OK maillab POP3 server signing off"
ERR_UNKNOWN = "-ERR unknown command"
ERR_EMPTY = "-ERR empty command line"
ERR_TOO_LONG = "-ERR command line too long (more than 255 octets)"
ERR_WRONG_STATE = "-ERR {command} is not valid in the {state} state"
ERR_USAGE = "-ERR usage: {usage}"
ERR_ARG_TOO_LONG = "-ERR argument too long (more than 40 octets)"
ERR_BAD_NUMBER = "-ERR invalid message number {arg!r}"
ERR_NO_MESSAGE = "-ERR no such message, only {count} messages in maildrop"
ERR_DELETED = "-ERR message {number} already deleted"
ERR_BAD_LINES = "-ERR invalid number of lines {arg!r}"
ERR_PASS_FIRST = "-ERR give USER first"
ERR_BAD_DIGEST = "-ERR an APOP digest is 32 hexadecimal digits"
ERR_NO_STLS = "-ERR STLS not available"
ERR_TLS_ACTIVE = "-ERR command not permitted when TLS active"
ERR_STLS_AFTER_USER = "-ERR STLS is not permitted after USER"
ERR_READ = f"-ERR [{SYS_TEMP}] cannot read message {{number}}"
ERR_NOT_REMOVED = f"-ERR [{SYS_TEMP}] some deleted messages were not removed"

USAGE = {
    "USER": "USER name",
    "PASS": "PASS string",
    "APOP": "APOP name digest",
    "STAT": "STAT",
    "LIST": "LIST [msg]",
    "RETR": "RETR msg",
    "DELE": "DELE msg",
    "NOOP": "NOOP",
    "RSET": "RSET",
    "QUIT": "QUIT",
    "TOP": "TOP msg n",
    "UIDL": "UIDL [msg]",
    "CAPA": "CAPA",
    "STLS": "STLS",
}
# (fewest, most) arguments; PASS takes the rest of the line (a password may hold spaces).
ARITY = {
    "USER": (1, 1),
    "APOP": (2, 2),
    "STAT": (0, 0),
    "LIST": (0, 1),
    "RETR": (1, 1),
    "DELE": (1, 1),
    "NOOP": (0, 0),
    "RSET": (0, 0),
    "QUIT": (0, 0),
    "TOP": (2, 2),
    "UIDL": (0, 1),
    "CAPA": (0, 0),
    "STLS": (0, 0),
}
COMMANDS = frozenset(USAGE)


class State(Enum):
    """The states of a POP3 session (RFC 1939 section 3), and CLOSED after it."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


# Triggers that are not commands: the application's answers, and the connection dropping.
LOGIN_ACCEPTED = "login-accepted"
UPDATE_DONE = "update-done"
DROPPED = "dropped"

# state -> trigger (a command, or one of the above) -> next state. A command missing from
# a state's row is refused there with -ERR; a missing trigger is a bug in the caller.
TRANSITIONS: dict[State, dict[str, State]] = {
    State.AUTHORIZATION: {
        "USER": State.AUTHORIZATION,
        "PASS": State.AUTHORIZATION,  # TRANSACTION once the application accepts the login
        "APOP": State.AUTHORIZATION,
        "STLS": State.AUTHORIZATION,
        "CAPA": State.AUTHORIZATION,
        "QUIT": State.CLOSED,
        LOGIN_ACCEPTED: State.TRANSACTION,
        DROPPED: State.CLOSED,
    },
    State.TRANSACTION: {
        "STAT": State.TRANSACTION,
        "LIST": State.TRANSACTION,
        "RETR": State.TRANSACTION,
        "DELE": State.TRANSACTION,
        "NOOP": State.TRANSACTION,
        "RSET": State.TRANSACTION,
        "TOP": State.TRANSACTION,
        "UIDL": State.TRANSACTION,
        "CAPA": State.TRANSACTION,
        "QUIT": State.UPDATE,
        DROPPED: State.CLOSED,
    },
    State.UPDATE: {UPDATE_DONE: State.CLOSED, DROPPED: State.CLOSED},
    State.CLOSED: {DROPPED: State.CLOSED},
}


class Signal(Enum):
    """What `next_event` returns when it has no event."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data
    PAUSED = "PAUSED"  # answer the last request event first


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class Pop3UsageError(Exception):
    """The application called the core out of turn (a bug in the shell, not the peer)."""


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


# ---------------------------------------------------------------------------------------
# Server events (to the application)


@dataclass(frozen=True)
class LoginRequest:
    """USER/PASS or APOP: the application checks it and calls accept_ or reject_login."""

    user: str
    password: str | None = None
    digest: str | None = None
    timestamp: str = ""

    @property
    def mechanism(self) -> str:
        return "APOP" if self.digest is not None else "USER"

    def verify(self, secret: str) -> bool:
        """True when the password (or the APOP digest) matches `secret`."""
        if self.digest is not None:
            return hmac.compare_digest(self.digest, apop_digest(self.timestamp, secret))
        return hmac.compare_digest((self.password or "").encode(), secret.encode())


@dataclass(frozen=True)
class StartTls:
    """STLS accepted: send what is pending, start TLS, then call tls_started()."""


@dataclass(frozen=True)
class MessageRetrieved:
    number: int
    uid: str
    size: int
    lines: int | None = None  # TOP's line count; None for RETR


@dataclass(frozen=True)
class MessageDeleted:
    number: int
    uid: str


@dataclass(frozen=True)
class UpdateRequest:
    """QUIT in the TRANSACTION state: remove these, then call update_done()."""

    deleted: tuple[MessageInfo, ...]


@dataclass(frozen=True)
class CommandRefused:
    command: str  # the verb as received ("" for an empty or overlong line)
    reply: str


@dataclass(frozen=True)
class Closed:
    """The session ended with QUIT; `deleted` messages were removed."""

    deleted: int


@dataclass(frozen=True)
class ConnectionLost:
    """The peer went away before QUIT: nothing was removed."""

    state: State
    marked: int  # messages marked deleted and left in place


ServerEvent = (
    LoginRequest
    | StartTls
    | MessageRetrieved
    | MessageDeleted
    | UpdateRequest
    | CommandRefused
    | Closed
    | ConnectionLost
)


# ---------------------------------------------------------------------------------------
# The server


class Pop3Server:
    """One server-side POP3 session."""

    def __init__(
        self,
        hostname: str,
        *,
        timestamp: str,
        stls: bool = False,
        implementation: str = "maillab",
        banner: str = "maillab POP3 ready",
    ):
        self.hostname = hostname
        self.timestamp = timestamp
        self.stls_available = stls
        self.implementation = implementation
        self.state = State.AUTHORIZATION
        self.tls_active = False
        self.user: str | None = None  # once logged in
        self._pending_user: str | None = None  # after USER, before PASS
        self._buffer = bytearray()
        self._overlong = False
        self._eof = False
        self._out = bytearray()
        self._events: deque[ServerEvent] = deque()
        self._waiting: str | None = None  # "login" | "tls" | "update"
        self._login_user = ""
        self._maildrop: Maildrop | None = None
        self._messages: list[MessageInfo] = []
        self._deleted: set[int] = set()  # message numbers marked (1-based)
        self._reply(f"+OK {timestamp} {banner}")

    # application side -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" when the connection has closed."""
        if not data:
            self._eof = True
            return
        if self.state is State.CLOSED or self._eof:
            return
        self._buffer += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ServerEvent | Signal:
        while True:
            if self._events:
                return self._events.popleft()
            if self._waiting is not None:
                return PAUSED
            if self.state is State.CLOSED:
                return NEED_DATA
            line, overlong = self._next_line()
            if line is None:
                if self._eof:
                    self._lost()
                    continue
                return NEED_DATA
            if overlong:
                self._refuse("", ERR_TOO_LONG)
            else:
                self._handle(line)

    def accept_login(self, maildrop: Maildrop) -> None:
        self._expect("login")
        self._messages = list(maildrop.messages())
        self._maildrop = maildrop
        self._deleted.clear()
        self.user = self._login_user
        self._transition(LOGIN_ACCEPTED)
        count, size = self._totals()
        self._reply(f"+OK {self.user}'s maildrop has {count} messages ({size} octets)")

    def reject_login(self, text: str = "invalid user name or password", code: str = AUTH) -> None:
        """Refuse a login (code AUTH) or the maildrop (code IN-USE, SYS/TEMP)."""
        self._expect("login")
        self._pending_user = None
        self._reply(f"-ERR [{code}] {text}" if code else f"-ERR {text}")

    def tls_started(self) -> None:
        self._expect("tls")
        self.tls_active = True
        self._pending_user = None

    def update_done(self, removed: int, failed: int = 0) -> None:
        """The marked messages were removed (`failed` of them could not be)."""
        self._expect("update")
        self._transition(UPDATE_DONE)
        if failed:
            self._reply(ERR_NOT_REMOVED)
        else:
            self._reply(f"{OK_BYE} ({removed} messages deleted)")
        self._events.append(Closed(removed))

    @property
    def marked(self) -> tuple[MessageInfo, ...]:
        return tuple(self._messages[n - 1] for n in sorted(self._deleted))

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.state is State.AUTHORIZATION and self.stls_available and not self.tls_active:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return caps

    # input ----------------------------------------------------------------------------

    def _next_line(self) -> tuple[bytes | None, bool]:
        """(the next command line without its line end, or None; whether it was too long)."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_COMMAND:
                self._overlong = True  # keep discarding until the line ends
                self._buffer.clear()
            return None, False
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        if self._overlong or len(line) > MAX_COMMAND:
            self._overlong = False
            return b"", True
        return line.rstrip(b"\r\n"), False

    def _handle(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        verb, _, rest = text.partition(" ")
        verb = verb.strip().upper()
        if not verb:
            self._refuse("", ERR_EMPTY)
            return
        if verb not in COMMANDS:
            self._refuse(verb[:8], ERR_UNKNOWN)
            return
        if verb not in TRANSITIONS[self.state]:
            self._refuse(verb, ERR_WRONG_STATE.format(command=verb, state=self.state.value))
            return
        if verb == "PASS":
            self._cmd_pass(rest)
            return
        args = rest.split()
        fewest, most = ARITY[verb]
        if not fewest <= len(args) <= most:
            self._refuse(verb, ERR_USAGE.format(usage=USAGE[verb]))
            return
        if any(len(a.encode()) > MAX_ARGUMENT for a in args):
            self._refuse(verb, ERR_ARG_TOO_LONG)
            return
        getattr(self, f"_cmd_{verb.lower()}")(*args)

    # AUTHORIZATION --------------------------------------------------------------------

    def _cmd_user(self, name: str) -> None:
        # Any name gets +OK: PASS says whether the pair is right (no user enumeration).
        self._pending_user = name
        self._reply(OK_USER)

    def _cmd_pass(self, password: str) -> None:
        if self._pending_user is None:
            self._refuse("PASS", ERR_PASS_FIRST)
            return
        if not password:
            self._refuse("PASS", ERR_USAGE.format(usage=USAGE["PASS"]))
            return
        self._login_user = self._pending_user
        self._pending_user = None
        self._wait("login")
        self._events.append(LoginRequest(self._login_user, password=password))

    def _cmd_apop(self, name: str, digest: str) -> None:
        self._pending_user = None
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", digest):
            self._refuse("APOP", ERR_BAD_DIGEST)
            return
        self._login_user = name
        self._wait("login")
        self._events.append(LoginRequest(name, digest=digest.lower(), timestamp=self.timestamp))

    def _cmd_stls(self) -> None:
        if self.tls_active:
            self._refuse("STLS", ERR_TLS_ACTIVE)
            return
        if not self.stls_available:
            self._refuse("STLS", ERR_NO_STLS)
            return
        if self._pending_user is not None:
            self._refuse("STLS", ERR_STLS_AFTER_USER)
            return
        self._reply(OK_STLS)
        # Anything pipelined after STLS arrived in clear text: it must not be obeyed.
        self._buffer.clear()
        self._wait("tls")
        self._events.append(StartTls())

    def _cmd_capa(self) -> None:
        self._reply(OK_CAPA)
        self._out += stuff("".join(f"{c}\r\n" for c in self.capabilities()).encode())

    def _cmd_quit(self) -> None:
        if self.state is State.AUTHORIZATION:
            self._transition("QUIT")
            self._reply(OK_BYE)
            self._events.append(Closed(0))
            return
        self._transition("QUIT")  # to UPDATE
        self._wait("update")
        self._events.append(UpdateRequest(self.marked))

    # TRANSACTION ----------------------------------------------------------------------

    def _totals(self) -> tuple[int, int]:
        live = [m for n, m in enumerate(self._messages, 1) if n not in self._deleted]
        return len(live), sum(m.size for m in live)

    def _number(self, command: str, arg: str) -> int | None:
        """A message number that names a message not marked deleted, or None (refused)."""
        if not arg.isascii() or not arg.isdigit():
            self._refuse(command, ERR_BAD_NUMBER.format(arg=arg))
            return None
        number = int(arg)
        if not 1 <= number <= len(self._messages):
            self._refuse(command, ERR_NO_MESSAGE.format(count=len(self._messages)))
            return None
        if number in self._deleted:
            self._refuse(command, ERR_DELETED.format(number=number))
            return None
        return number

    def _cmd_stat(self) -> None:
        count, size = self._totals()
        self._reply(f"+OK {count} {size}")

    def _cmd_list(self, arg: str | None = None) -> None:
        if arg is not None:
            number = self._number("LIST", arg)
            if number is not None:
                self._reply(f"+OK {number} {self._messages[number - 1].size}")
            return
        count, size = self._totals()
        self._reply(f"+OK {count} messages ({size} octets)")
        listing = "".join(
            f"{n} {m.size}\r\n" for n, m in enumerate(self._messages, 1) if n not in self._deleted
        )
        self._out += stuff(listing.encode())

    def _cmd_uidl(self, arg: str | None = None) -> None:
        if arg is not None:
            number = self._number("UIDL", arg)
            if number is not None:
                self._reply(f"+OK {number} {self._messages[number - 1].uid}")
            return
        self._reply(OK_UIDL)
        listing = "".join(
            f"{n} {m.uid}\r\n" for n, m in enumerate(self._messages, 1) if n not in self._deleted
        )
        self._out += stuff(listing.encode())

    def _read(self, command: str, number: int) -> bytes | None:
        assert self._maildrop is not None
        try:
            return to_crlf(self._maildrop.read(self._messages[number - 1]))
        except (OSError, LookupError):
            self._refuse(command, ERR_READ.format(number=number))
            return None

    def _cmd_retr(self, arg: str) -> None:
        number = self._number("RETR", arg)
        if number is None:
            return
        data = self._read("RETR", number)
        if data is None:
            return
        info = self._messages[number - 1]
        self._reply(f"+OK {len(data)} octets")
        self._out += stuff(data)
        self._events.append(MessageRetrieved(number, info.uid, len(data)))

    def _cmd_top(self, arg: str, lines_arg: str) -> None:
        number = self._number("TOP", arg)
        if number is None:
            return
        if not lines_arg.isascii() or not lines_arg.isdigit():
            self._refuse("TOP", ERR_BAD_LINES.format(arg=lines_arg))
            return
        data = self._read("TOP", number)
        if data is None:
            return
        info = self._messages[number - 1]
        self._reply(OK_TOP)
        self._out += stuff(top(data, int(lines_arg)))
        self._events.append(MessageRetrieved(number, info.uid, info.size, int(lines_arg)))

    def _cmd_dele(self, arg: str) -> None:
        number = self._number("DELE", arg)
        if number is None:
            return
        self._deleted.add(number)
        self._reply(f"+OK message {number} deleted")
        self._events.append(MessageDeleted(number, self._messages[number - 1].uid))

    def _cmd_noop(self) -> None:
        self._reply(OK_NOOP)

    def _cmd_rset(self) -> None:
        self._deleted.clear()
        count, size = self._totals()
        self._reply(f"+OK maildrop has {count} messages ({size} octets)")

    # plumbing -------------------------------------------------------------------------

    def _reply(self, line: str) -> None:
        self._out += line.encode("utf-8") + b"\r\n"

    def _refuse(self, command: str, reply: str) -> None:
        self._reply(reply)
        self._events.append(CommandRefused(command, reply))

    def _wait(self, what: str) -> None:
        self._waiting = what

    def _expect(self, what: str) -> None:
        if self._waiting != what:
            raise Pop3UsageError(
                f"not waiting for {what} (waiting for {self._waiting or 'nothing'})"
            )
        self._waiting = None

    def _transition(self, trigger: str) -> None:
        row = TRANSITIONS[self.state]
        if trigger not in row:
            raise Pop3UsageError(f"{trigger} is not possible in the {self.state.value} state")
        self.state = row[trigger]

    def _lost(self) -> None:
        state = self.state
        marked = len(self._deleted)
        self._waiting = None
        self._transition(DROPPED)
        self._events.append(ConnectionLost(state, marked))


# ---------------------------------------------------------------------------------------
# Client events


@dataclass(frozen=True)
class Greeting:
    text: str
    timestamp: str | None  # the APOP timestamp <...@...>, if the banner has one


@dataclass(frozen=True)
class Ok:
    command: str
    text: str
    data: bytes | None = None  # a multi-line reply's data, un-stuffed, CRLF line ends

    @property
    def lines(self) -> list[bytes]:
        if not self.data:
            return []
        return self.data[:-2].split(b"\r\n") if self.data.endswith(b"\r\n") else [self.data]


@dataclass(frozen=True)
class Err:
    command: str
    text: str
    code: str | None = None  # an extended response code: IN-USE, AUTH, SYS/TEMP ...


ClientEvent = Greeting | Ok | Err | ConnectionLost

_TIMESTAMP = re.compile(r"<[^<>\s]*@[^<>\s]*>")
_CODE = re.compile(r"^\[([A-Za-z0-9/-]+)\]\s*")


# ---------------------------------------------------------------------------------------
# The client


class Pop3Client:
    """One client-side POP3 session: `send` commands, feed replies, read events."""

    def __init__(self) -> None:
        self.state = State.AUTHORIZATION
        self.timestamp: str | None = None
        self._buffer = bytearray()
        self._eof = False
        self._expect: deque[tuple[str, bool]] = deque([("GREETING", False)])
        self._status: str | None = None  # the +OK line of a multi-line reply being read
        self._data_start = 0
        self._scan = 0

    def send(self, command: str, *args: str | int) -> bytes:
        verb = command.upper()
        words = [verb, *(str(a) for a in args)]
        line = " ".join(words)
        if "\r" in line or "\n" in line:
            raise Pop3UsageError("a POP3 command cannot contain CR or LF")
        data = line.encode("utf-8") + b"\r\n"
        if len(data) > MAX_COMMAND:
            raise Pop3UsageError(f"{verb}: command line longer than {MAX_COMMAND} octets")
        multiline = verb in ("CAPA", "RETR", "TOP") or (verb in ("LIST", "UIDL") and not args)
        self._expect.append((verb, multiline))
        return data

    def apop(self, user: str, secret: str) -> bytes:
        if self.timestamp is None:
            raise Pop3UsageError("the server's banner has no APOP timestamp")
        return self.send("APOP", user, apop_digest(self.timestamp, secret))

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        self._buffer += data

    @property
    def waiting(self) -> int:
        """Replies still expected."""
        return len(self._expect)

    def next_event(self) -> ClientEvent | Signal:
        if not self._expect:
            if self._eof and self.state is not State.CLOSED:
                state, self.state = self.state, State.CLOSED
                return ConnectionLost(state, 0)
            return NEED_DATA
        command, multiline = self._expect[0]
        if self._status is None:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if self._eof:
                    return self._lose()
                return NEED_DATA
            status = bytes(self._buffer[:end]).decode("utf-8", "replace")
            if not status.startswith("+OK") or not multiline:
                del self._buffer[: end + 2]
                self._expect.popleft()
                return self._single(command, status)
            self._status = status
            self._data_start = end + 2
            self._scan = end  # the terminator may start with this line's CRLF
        # multi-line data: ends at CRLF "." CRLF (the status line's CRLF counts)
        found = self._buffer.find(b"\r\n.\r\n", self._scan)
        if found < 0:
            self._scan = max(self._scan, len(self._buffer) - 4)
            if self._eof:
                return self._lose()
            return NEED_DATA
        start = self._data_start
        data = unstuff(bytes(self._buffer[start : found + 2])) if found + 2 > start else b""
        del self._buffer[: found + 5]
        status, self._status = self._status, None
        self._expect.popleft()
        return Ok(command, status[3:].strip(), data)

    def _lose(self) -> ConnectionLost:
        state, self.state = self.state, State.CLOSED
        self._expect.clear()
        return ConnectionLost(state, 0)

    def _single(self, command: str, status: str) -> Greeting | Ok | Err:
        ok = status.startswith("+OK")
        text = status[3:].strip() if ok else status[4:].strip()
        if command == "GREETING":
            if not ok:
                return Err(command, _CODE.sub("", text), _code(text))
            match = _TIMESTAMP.search(text)
            self.timestamp = match.group(0) if match else None
            return Greeting(text, self.timestamp)
        if not ok:
            return Err(command, _CODE.sub("", text), _code(text))
        if command in ("PASS", "APOP"):
            self.state = State.TRANSACTION
        elif command == "QUIT":
            self.state = State.CLOSED
        elif command == "STLS":
            # what came after +OK arrived in clear text: it is not the server speaking
            self._buffer.clear()
        return Ok(command, text)


def _code(text: str) -> str | None:
    match = _CODE.match(text)
    return match.group(1).upper() if match else None


# ---------------------------------------------------------------------------------------
# Reading replies


def parse_stat(reply: Ok) -> tuple[int, int]:
    """(messages, octets) from a STAT reply."""
    count, size = reply.text.split()[:2]
    return int(count), int(size)


def parse_listing(reply: Ok) -> dict[int, str]:
    """message number -> the rest of the line, from LIST or UIDL (multi-line or one)."""
    lines = [line.decode("utf-8", "replace") for line in reply.lines] if reply.data else []
    if reply.data is None:
        lines = [reply.text]
    result: dict[int, str] = {}
    for line in lines:
        number, _, rest = line.strip().partition(" ")
        if number.isdigit():
            result[int(number)] = rest.strip().split(" ")[0]
    return result
