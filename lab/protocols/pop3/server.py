"""The server side of a POP3 session (`Pop3Server`): its replies, the state table
`TRANSITIONS`, and the events it hands to the application."""

from __future__ import annotations

import hmac
import re
from collections import deque
from dataclasses import dataclass

from lab.protocols.pop3.common import (
    AUTH,
    MAX_ARGUMENT,
    MAX_COMMAND,
    NEED_DATA,
    PAUSED,
    SYS_TEMP,
    ConnectionLost,
    Maildrop,
    MessageInfo,
    Pop3UsageError,
    Signal,
    State,
    apop_digest,
    stuff,
    to_crlf,
    top,
)

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
