"""Handing mail to the next host over SMTP, one session for many messages.

A session says EHLO (HELO if EHLO is refused), upgrades with STARTTLS when the server
offers it (verified against the lab CA), then runs one transaction per message:
MAIL FROM, RCPT TO for each recipient, DATA when at least one was accepted. Each
recipient gets its own result: accepted recipients are delivered, a 4xx is retried,
a 5xx bounced.

When the server offers PIPELINING (RFC 2920), as Postfix and Exim do, MAIL, the RCPTs
and DATA go out in one write and their replies are read in order; the message follows
only if DATA was answered 354. When the caller names the envelope of the transaction
that comes next, its MAIL, RCPTs and DATA go out behind the message's final dot, in the
same write (RFC 2920 section 3.1 lets a client pipeline past the end of data); the
server answers the message and the next envelope together. A relay hop then costs one
round trip per message instead of three plus one per recipient. This is the one SMTP
client the lab writes itself: the library clients wait for each reply before the next
command. Client submissions (lab.services.client) keep aiosmtplib.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from dataclasses import dataclass, field

from lab.protocols.smtp import Reply

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_REPLY_LINES = 100  # a server that goes on longer is not speaking SMTP


@dataclass
class TransactionResult:
    """What the server said to one message: a reply per recipient."""

    mail_reply: Reply | None = None
    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_reply: Reply | None = None
    size: int = 0  # the message's bytes, and the lab seconds from MAIL to the last reply
    took: float = 0.0

    def final(self, rcpt: str) -> Reply:
        """The reply that decides this recipient's fate."""
        if self.mail_reply is not None and self.mail_reply.code >= 400:
            return self.mail_reply
        reply = self.rcpt_replies.get(rcpt)
        if reply is None:
            return Reply(451, "4.4.2 connection lost before RCPT")
        if reply.code >= 400:
            return reply
        return self.data_reply or Reply(451, "4.4.2 connection lost during DATA")


class SessionError(Exception):
    """The session failed as a whole (connect, greeting, EHLO, TLS, lost connection)."""

    def __init__(self, reply: Reply, *, stage: str):
        super().__init__(str(reply))
        self.reply = reply
        self.stage = stage


class _Lost(Exception):
    """The server closed the connection or went silent."""


def dot_stuff(content: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, the final
    dot line added."""
    pairs = content.count(b"\r\n")
    if content.count(b"\r") == pairs and content.count(b"\n") == pairs:
        data = content  # CRLF line ends already, as the queue keeps them
    else:
        data = _LINE_ENDS.sub(b"\r\n", content)
    data = data.replace(b"\r\n.", b"\r\n..")
    if data[:1] == b".":
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _path(address: str) -> bytes:
    inner = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    return f"<{inner}>".encode("utf-8", "surrogateescape")


class OutboundSession:
    def __init__(
        self,
        sock: socket.socket,
        *,
        server_name: str,
        local_name: str,
        tls_context: ssl.SSLContext | None,
        tls: str,
        timeout: float,
    ):
        self.sock = sock
        self.server_name = server_name
        self.local_name = local_name
        self.tls_context = tls_context
        self.tls_mode = tls
        self.timeout = timeout
        self.used_tls = False
        self.extensions: set[str] = set()
        self.transcript: list[str] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # the envelope whose MAIL/RCPT/DATA went out behind the last message, replies unread
        self._announced: tuple[str, tuple[str, ...]] | None = None
        self.replies = 0  # replies read so far
        self.reused = False  # taken from the cache of open sessions

    # the wire -----------------------------------------------------------------------

    async def _reply(self) -> Reply:
        assert self.reader is not None
        lines: list[bytes] = []
        try:
            # (a timeout scope, not wait_for: a reply already buffered, as pipelined
            # replies are, is read without a task and a turn of the loop per line)
            async with asyncio.timeout(self.timeout):
                while True:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise _Lost("connection closed by the server")
                    lines.append(line.rstrip(b"\r\n"))
                    if line[3:4] != b"-" or len(lines) >= MAX_REPLY_LINES:
                        break
        except TimeoutError as exc:
            raise _Lost(f"no reply within {self.timeout:g} s") from exc
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc
        self.replies += 1
        try:
            code = int(lines[0][:3])
        except ValueError:
            raise _Lost(f"not an SMTP reply: {lines[0][:80]!r}") from None
        text = "\n".join(line[4:].decode("utf-8", "replace").strip() for line in lines)
        return Reply(code, text)

    def _write(self, data: bytes) -> None:
        assert self.writer is not None
        if self.writer.is_closing():
            raise _Lost("connection closed")
        self.writer.write(data)

    async def _command(self, line: bytes) -> Reply:
        self._write(line + b"\r\n")
        return await self._reply()

    # the session ----------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
            greeting = await self._reply()
            self.transcript.append(f"<<< {greeting}")
            if greeting.code != 220:
                raise SessionError(greeting, stage="greeting")
            await self._ehlo()
            if self.tls_mode != "off" and "STARTTLS" in self.extensions:
                reply = await self._command(b"STARTTLS")
                if reply.code != 220:
                    raise SessionError(reply, stage="starttls")
                assert self.writer is not None
                await asyncio.wait_for(
                    self.writer.start_tls(
                        self.tls_context or ssl.create_default_context(),
                        server_hostname=self.server_name,
                    ),
                    self.timeout,
                )
                self.used_tls = True
                self.transcript.append("<<< 220 STARTTLS done")
                await self._ehlo()
            elif self.tls_mode == "require":
                raise SessionError(
                    Reply(530, "5.7.10 server does not offer STARTTLS"), stage="starttls"
                )
        except _Lost as exc:
            raise SessionError(
                Reply(421, f"4.4.2 connection lost: {exc}"), stage="greeting"
            ) from exc
        except (ssl.SSLError, ssl.CertificateError, TimeoutError, OSError) as exc:
            raise SessionError(
                Reply(421, f"4.7.5 session failed: {exc}"), stage="greeting"
            ) from exc

    async def _ehlo(self) -> None:
        reply = await self._command(b"EHLO " + self.local_name.encode())
        if reply.code >= 500:  # an old server: HELO, and no extensions
            reply = await self._command(b"HELO " + self.local_name.encode())
            self.extensions = set()
        elif reply.code == 250:
            self.extensions = {
                line.split(" ", 1)[0].upper() for line in reply.text.splitlines()[1:] if line
            }
        self.transcript.append(f"<<< {reply.code} {reply.text.splitlines()[0]}")
        if reply.code != 250:
            raise SessionError(reply, stage="greeting")

    async def send(
        self,
        envelope_from: str,
        recipients: list[str],
        content: bytes,
        *,
        mail_options: list[str] | None = None,
        then: tuple[str, list[str]] | None = None,
    ) -> TransactionResult:
        """One transaction. `then` is the envelope (sender, recipients) of the one the
        caller sends next on this session: with PIPELINING its commands go out behind
        this message, and that next `send` must be for exactly that envelope."""
        result = TransactionResult()
        announced, self._announced = self._announced, None
        if announced is not None and announced != (envelope_from, tuple(recipients)):
            raise SessionError(
                Reply(421, "4.3.0 internal error: not the transaction announced"),
                stage="transaction",
            )
        mail, rcpts = self._envelope(result, envelope_from, recipients, mail_options)
        if mail is None:
            return result
        try:
            if "PIPELINING" in self.extensions:
                following = None
                if then is not None:
                    then_mail, then_rcpts = self._envelope(TransactionResult(), *then, None)
                    if then_mail is not None and then_rcpts:
                        following = (then[0], tuple(then[1])), then_mail, then_rcpts
                await self._pipelined(
                    result, mail, rcpts, content, announced is not None, following
                )
            else:
                await self._one_by_one(result, mail, rcpts, content)
        except _Lost as exc:
            raise SessionError(
                Reply(421, f"4.4.2 connection lost: {exc}"), stage="transaction"
            ) from exc
        return result

    @staticmethod
    def _envelope(
        result: TransactionResult,
        envelope_from: str,
        recipients: list[str],
        mail_options: list[str] | None,
    ) -> tuple[bytes | None, list[str]]:
        """The MAIL command and the recipients fit for the wire; a control character in an
        address is refused here (553) and never sent."""
        if _CONTROL.search(envelope_from):
            result.mail_reply = Reply(553, "5.1.7 control character in the sender address")
            return None, []
        mail = b"MAIL FROM:" + _path(envelope_from)
        if mail_options:
            mail += b" " + " ".join(mail_options).encode()
        rcpts = [r for r in recipients if not _CONTROL.search(r)]
        for rcpt in recipients:
            if rcpt not in rcpts:
                result.rcpt_replies[rcpt] = Reply(553, "5.1.3 control character in the address")
        return mail, rcpts

    @staticmethod
    def _commands(mail: bytes, rcpts: list[str]) -> bytes:
        return b"\r\n".join([mail, *(b"RCPT TO:" + _path(r) for r in rcpts), b"DATA"]) + b"\r\n"

    async def _pipelined(
        self,
        result: TransactionResult,
        mail: bytes,
        rcpts: list[str],
        content: bytes,
        sent: bool,
        following: tuple[tuple[str, tuple[str, ...]], bytes, list[str]] | None,
    ) -> None:
        if not sent:
            self._write(self._commands(mail, rcpts))
        result.mail_reply = await self._reply()
        for rcpt in rcpts:
            result.rcpt_replies[rcpt] = await self._reply()
        go_ahead = await self._reply()
        accepted = result.mail_reply.code < 400 and any(
            result.rcpt_replies[r].code < 400 for r in rcpts
        )
        if go_ahead.code == 354:
            if accepted:
                data = dot_stuff(content)
                if following is not None:
                    envelope, then_mail, then_rcpts = following
                    data += self._commands(then_mail, then_rcpts)
                    self._announced = envelope
                await self._content(data)
                result.data_reply = await self._reply()
                return
            # a server that said 354 with nobody to deliver to: end the empty message
            await self._command(b".")
        elif accepted:
            result.data_reply = go_ahead
            return
        if result.mail_reply.code < 400:  # the transaction is open: close it
            await self._rset()

    async def _one_by_one(
        self, result: TransactionResult, mail: bytes, rcpts: list[str], content: bytes
    ) -> None:
        result.mail_reply = await self._command(mail)
        if result.mail_reply.code >= 400:
            return
        for rcpt in rcpts:
            result.rcpt_replies[rcpt] = await self._command(b"RCPT TO:" + _path(rcpt))
        if not any(result.rcpt_replies[r].code < 400 for r in rcpts):
            await self._rset()
            return
        go_ahead = await self._command(b"DATA")
        if go_ahead.code != 354:
            result.data_reply = go_ahead
            return
        await self._content(dot_stuff(content))
        result.data_reply = await self._reply()

    async def _content(self, data: bytes) -> None:
        self._write(data)
        assert self.writer is not None
        try:
            await self.writer.drain()  # a big message: wait while the server reads
        except (ConnectionError, OSError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc

    async def _rset(self) -> None:
        reply = await self._command(b"RSET")
        if reply.code >= 400:
            raise _Lost(f"RSET refused: {reply}")

    def idle(self) -> bool:
        """Open, between transactions, and with nothing unread from the server."""
        return (
            self.writer is not None
            and not self.writer.is_closing()
            and self.reader is not None
            and not self.reader.at_eof()
            and not getattr(self.reader, "_buffer", b"")  # StreamReader's: a 421 waiting
            and self._announced is None
        )

    async def close(self) -> None:
        if self.writer is None:
            self.sock.close()
            return
        # the other end may have gone already; closing is all that is left then
        # (not while an announced transaction is open: QUIT would be read as its data)
        with contextlib.suppress(_Lost, OSError, ssl.SSLError):
            if not self.writer.is_closing() and self._announced is None:
                await self._command(b"QUIT")
        self.writer.close()
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


IDLE_LIMIT = 2.0  # seconds an open session waits for more mail (Postfix's cache time limit)


class SessionCache:
    """Sessions left open after their run, for the next run to the same server to use
    instead of connecting, greeting and negotiating TLS again, as Postfix's connection
    cache does. A session waits at most IDLE_LIMIT seconds, in real time and in lab time
    (a clock advanced past it finds none), then says QUIT; at most `per_server` wait
    for one server."""

    def __init__(self, per_server: int):
        self.per_server = per_server
        self._waiting: dict[tuple[str, int], list[tuple[OutboundSession, float]]] = {}
        self._timers: dict[OutboundSession, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, address: str, port: int, now: float) -> OutboundSession | None:
        waiting = self._waiting.get((address, port), [])
        while waiting:
            session, since = waiting.pop()
            self._timers.pop(session).cancel()
            if session.idle() and now - since <= IDLE_LIMIT:
                session.reused = True
                return session
            self._quit(session)
        return None

    def keep(self, session: OutboundSession, address: str, port: int, now: float) -> bool:
        """Leave `session` open for the next run; False when it cannot or need not be."""
        waiting = self._waiting.setdefault((address, port), [])
        if not session.idle() or len(waiting) >= self.per_server:
            return False
        waiting.append((session, now))
        loop = asyncio.get_running_loop()
        self._timers[session] = loop.call_later(IDLE_LIMIT, self._expire, address, port, session)
        return True

    def _expire(self, address: str, port: int, session: OutboundSession) -> None:
        waiting = self._waiting.get((address, port), [])
        waiting[:] = [(s, t) for s, t in waiting if s is not session]
        self._timers.pop(session, None)
        self._quit(session)

    def _quit(self, session: OutboundSession) -> None:
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Say QUIT on every waiting session (when the host stops)."""
        for waiting in self._waiting.values():
            for session, _ in waiting:
                self._timers.pop(session).cancel()
                self._quit(session)
        self._waiting.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=2.0)
