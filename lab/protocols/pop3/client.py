"""The client side of a POP3 session (`Pop3Client`): commands in, bytes out; replies out
as `Greeting` / `Ok` / `Err` events; and helpers that read the common replies."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from lab.protocols.pop3.common import (
    MAX_COMMAND,
    NEED_DATA,
    ConnectionLost,
    Pop3UsageError,
    Signal,
    State,
    apop_digest,
    unstuff,
)

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
