"""The SMTP front of the built-in MTA: aiosmtpd speaks the protocol, our handler decides.

What it adds to aiosmtpd: the lab's view of the peer (virtual addresses), the dialogue
of the seed articles (a `214` HELP, VRFY 252 / EXPN 502 by default, ESMTP extensions
ENHANCEDSTATUSCODES, PIPELINING, DSN, STARTTLS with the lab CA), every policy with the
reply code real MTAs use, scripted faults, and 250 after DATA only once the message is
durably queued. Every command and reply is an event.

What it relies on of aiosmtpd beyond its public API is in one class under `LabSMTP`,
`AiosmtpdOverrides` (aiosmtpd is pinned below 1.5). The handler and the policies see
the MTA as `frontend.Mta`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
from collections.abc import Callable
from typing import Any, ClassVar

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from lab.protocols import smtp as codes
from lab.protocols.smtp import split_address
from lab.services.mta import policy
from lab.services.mta.faulting import Strike, pick_fault
from lab.services.mta.frontend import Mta
from lab.services.mta.replies import enhance
from lab.services.mta.smtpdata import read_data
from lab.services.resolver import DnsNotFound, DnsTemporaryError
from lab.topology.model import StartTls

HELP_LINES = [
    "214-2.0.0 Commands supported:",
    "214-2.0.0     HELO EHLO MAIL RCPT DATA",
    "214-2.0.0     RSET NOOP QUIT HELP VRFY",
    "214 2.0.0     EXPN STARTTLS",
]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a bare CR, NUL, ...: not TAB
_SIMPLE_ADDR = re.compile(r"^\s*<([A-Za-z0-9._+=-]+@[A-Za-z0-9.-]+)>(\s.*)?$")
_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


def _take_params(arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
    """Remove ESMTP parameters aiosmtpd does not know (DSN's) from a MAIL/RCPT argument."""
    if not arg:
        return arg, {}
    parts = arg.split(" ")
    kept, taken = [], {}
    for i, part in enumerate(parts):
        key, eq, value = part.partition("=")
        if i > 0 and eq and key.upper() in names:
            taken[key.upper()] = value
        else:
            kept.append(part)
    return " ".join(kept), taken


# RFC 5321 section 4.5.3.1.6: a text line is at most 1000 octets with its CRLF. (aiosmtpd's
# own default, 1001, lets one more through.) A longer DATA line earns a 500 once the data
# has ended, and a command line longer than this is cut short as aiosmtpd does.
LINE_LENGTH_LIMIT = 1000
HELO_REFUSED = "501 5.5.2 Helo command rejected: invalid host name"
_SEND_AT_ONCE = {"220", "221", "354", "421"}


class AiosmtpdOverrides(SMTP):
    """aiosmtpd's SMTP server where the lab goes beyond aiosmtpd's public API: every
    override of, or reliance on, its private methods and attributes (and the peek into
    asyncio's StreamReader buffer) is here, so a new aiosmtpd breaks one class; the
    test test_aiosmtpd_overrides.py names any aiosmtpd original that changed.

    - Hook discovery: `SMTP.__init__` finds the server's smtp_*/auth_* and the
      handler's handle_*/auth_* methods with dir() and inspect.getmembers() for every
      connection; answering dir() with just those names (`hook_names`, listed once per
      class; the handler's `__dir__` asks it too) keeps a connection's setup cheap.
    - `_getaddr`: aiosmtpd's address parser, with a fast path for <local@domain>, and a
      syntax error (not aiosmtpd's "500 Error: (IndexError)") for a lone "<".
    - `smtp_DATA`: aiosmtpd's DATA reading whole buffered blocks (`read_data`), with
      `_reader`, `_writer`, `_call_handler_hook` and `_set_post_data_state`.
    - `input_waiting`: whether a pipelined command is already buffered (`_reader`).
    - `_unsent`: whether a reply went out, from the transports (`_original_transport`,
      the socket's, under STARTTLS).
    - `_reset_timeout`: aiosmtpd moves its idle timeout after every command by
      cancelling its timer (`_timeout_handle`) and making another, a dozen a message;
      here the deadline moves and one timer, when it fires early, waits for the rest
      (`_timeout_cb` closes the connection once the deadline has passed).
    """

    _idle_deadline = 0.0  # loop time after which an idle connection is closed

    HOOK_PREFIXES = ("smtp_", "auth_", "handle_")
    _hook_names: ClassVar[dict[type, list[str]]] = {}  # class -> its hooks' names

    @staticmethod
    def hook_names(cls: type) -> list[str]:
        """The names aiosmtpd looks for hooks among, of class `cls` (server or handler)."""
        names = AiosmtpdOverrides._hook_names.get(cls)
        if names is None:
            names = [n for n in dir(cls) if n.startswith(AiosmtpdOverrides.HOOK_PREFIXES)]
            AiosmtpdOverrides._hook_names[cls] = names
        return names

    def __dir__(self) -> list[str]:
        return AiosmtpdOverrides.hook_names(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a fast path for the common <local@domain>."""
        match = _SIMPLE_ADDR.match(arg)
        if match:
            return match.group(1), (match.group(2) or "").strip()
        try:
            return super()._getaddr(arg)
        except IndexError:  # a lone "<": the stdlib's parser runs off its end
            return None, None

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_deadline:  # a command came since it was set
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)
        else:
            self._timeout_cb()

    def input_waiting(self) -> bool:
        """A whole command line is already buffered (the client pipelines)."""
        buffered: bytearray | None = getattr(self._reader, "_buffer", None)  # StreamReader's
        return buffered is not None and b"\n" in buffered

    def _unsent(self) -> int:
        """Bytes written and not yet handed to the kernel, or -1 when the connection is
        gone (its transport closing). After STARTTLS both transports count: the socket's
        is cut (and closes) before the TLS one above it hears of it."""
        unsent = 0
        for transport in (self.transport, self._original_transport):
            if transport is None:
                continue
            if transport.is_closing() or not isinstance(transport, asyncio.WriteTransport):
                return -1
            unsent += transport.get_write_buffer_size()
        return unsent if self.transport is not None else -1

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA: the same limits, end of data and replies, read by blocks."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, error = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:  # the connection was lost during DATA
            self._writer.close()
            raise
        if error is not None:
            await self.push(error)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


_SESSIONS = itertools.count(1)  # numbers the connections of this process


class LabSMTP(AiosmtpdOverrides):
    """aiosmtpd's SMTP with the lab's peer mapping, HELP, EXPN, DSN parameters and faults;
    its smtp.* events carry `session`, so a trace can tell one message's dialogue."""

    line_length_limit = LINE_LENGTH_LIMIT

    def __init__(self, handler: Handler, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.lab = handler
        self.session_no = next(_SESSIONS)
        self.lab_peer: tuple[str, int] | None = None
        self.lab_local = ""
        self.rdns: str | None = None
        self.rcpt_params: dict[str, str] = {}  # RCPT's DSN parameters
        self._reply_lines: list[str] = []
        self._held: list[str] = []  # replies to pipelined commands, not yet sent
        # set while a queued message waits for its 250: resolved once the reply is
        # written, True when it went out (acceptance delivers it or withdraws it)
        self.replied: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.lab_peer is None:
            peer, port, local = self.lab.mta.host.net.accepted(transport)
            if transport.is_closing():  # refused by the lab's network: no session
                return
            self.lab_peer, self.lab_local = (peer, port), local
            strike = self.lab.fault("connect", None, peer)
            if strike is not None:
                reply = strike.reply or "disconnect"
                self.lab.emit("smtp.connect", peer=peer, fault=reply, session=self.session_no)
                if strike.reply:
                    assert isinstance(transport, asyncio.WriteTransport)
                    transport.write(f"{strike.reply}\r\n".encode())
                transport.close()
                return
            self.lab.emit("smtp.connect", peer=peer, local=local, session=self.session_no)
        super().connection_made(transport)
        assert self.session is not None
        # aiosmtpd annotates Session.peer as `str | None` but keeps the peername tuple there
        self.session.peer = self.lab_peer  # type: ignore[assignment]

    def connection_lost(self, error: Exception | None) -> None:
        self._replied(False)
        if self.session is None:  # turned away by a connect fault: aiosmtpd never started
            return
        super().connection_lost(error)

    def _replied(self, went: bool) -> None:
        replied, self.replied = self.replied, None
        if replied is not None and not replied.done():
            replied.set_result(went)

    async def _reply_for(self, data: str) -> None:
        """A queued message's reply: written, then `replied` says whether it went out. A
        send the kernel refused (the connection was reset: the link dropped) closes the
        transport at once; what it took goes out, and the client reads it even if the
        connection is cut right after (docs/reliability.md, flapping)."""
        went = False
        try:
            self._writer.write(data.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n")
            if self._unsent() > 0:
                await self._writer.drain()  # not all taken at once: wait until it is
            went = self._unsent() == 0
        except ConnectionError:
            pass
        finally:
            self._replied(went)
        await self._writer.drain()

    async def push(self, status: Any) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        text, stage = enhance(str(status))
        if stage is not None:
            self.lab.emit("policy.reject", stage=stage, reply=text)
        if text[3:4] == "-":
            # a multi-line reply is one event and one write, when its last line comes
            # (as real MTAs send it: an EHLO reply line by line costs a segment each)
            self._reply_lines.append(text)
            return
        lines = [*self._reply_lines, text]
        self._reply_lines = []
        self.lab.emit(
            "smtp.reply",
            peer=self.lab_peer[0] if self.lab_peer else "?",
            session=self.session_no,
            reply=lines[0] if len(lines) == 1 else "\n".join(lines),
        )
        # PIPELINING (RFC 2920): while the client's next commands are already here, hold
        # the replies and send them together when the input runs dry; a reply after
        # which the connection changes (220 to STARTTLS, 221, 421) or data follows (354)
        # goes at once, with what was held, and so does a message's 250 (RFC 1047).
        if text[:3] not in _SEND_AT_ONCE and self.input_waiting() and "for delivery" not in text:
            self._held.extend(lines)
            return
        if self._held:
            lines = [*self._held, *lines]
            self._held = []
        if self.replied is not None:
            await self._reply_for("\r\n".join(lines))
            return
        await super().push("\r\n".join(lines))

    async def smtp_HELP(self, arg: str) -> None:
        for line in HELP_LINES:
            await self.push(line)

    async def smtp_EXPN(self, arg: str) -> None:
        self.lab.command("EXPN", arg, self.session_no)
        if self.lab.policy.expn == 502 or not arg:
            await self.push(codes.EXPN_DISABLED if arg else "501 5.5.4 Syntax: EXPN <list>")
            return
        name = arg.strip("<> ")
        book = self.lab.mta.book
        if name.split("@")[0].lower() not in book.aliases:
            await self.push(f"550 5.1.1 {name}... User unknown")
            return
        members = book.expand(name)
        for i, dest in enumerate(members):
            sep = " " if i == len(members) - 1 else "-"
            await self.push(f"250{sep}2.1.5 <{dest.address}>")

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.lab.command("MAIL", arg, self.session_no)
        if arg and _CONTROL_IN_LINE.search(arg):  # aiosmtpd's parser would fold a CR away
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        arg, params = _take_params(arg, _DSN_MAIL)
        if self.envelope is not None:
            self.envelope.dsn = params  # type: ignore[attr-defined]
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.lab.command("RCPT", arg, self.session_no)
        if arg and _CONTROL_IN_LINE.search(arg):
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        arg, self.rcpt_params = _take_params(arg, _DSN_RCPT)
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self.lab.command("DATA", arg, self.session_no)
        await super().smtp_DATA(arg)

    async def smtp_HELO(self, hostname: str) -> None:
        self.lab.command("HELO", hostname, self.session_no)
        if hostname and _CONTROL.search(hostname):  # it would go into Received: as it is
            await self.push(HELO_REFUSED)
            return
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        self.lab.command("EHLO", hostname, self.session_no)
        if hostname and _CONTROL.search(hostname):
            await self.push(HELO_REFUSED)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_VRFY(self, arg: str) -> None:
        self.lab.command("VRFY", arg, self.session_no)
        await super().smtp_VRFY(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self.lab.command("QUIT", arg, self.session_no)
        await super().smtp_QUIT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.lab.command("RSET", arg, self.session_no)
        await super().smtp_RSET(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self.lab.command("STARTTLS", arg, self.session_no)
        await super().smtp_STARTTLS(arg)


class Handler:
    """aiosmtpd handler hooks: the built-in MTA's policies."""

    def __init__(self, mta: Mta):
        self.mta = mta
        self.policy = mta.node.policy

    def __dir__(self) -> list[str]:
        # aiosmtpd scans the handler for hooks as it scans the server: AiosmtpdOverrides
        return AiosmtpdOverrides.hook_names(type(self))

    def emit(self, kind: str, **data: Any) -> None:
        self.mta.host.emit(kind, **data)

    def command(self, verb: str, arg: str | None, session: int = 0) -> None:
        self.emit("smtp.command", command=verb, arg=arg or "", session=session)

    def fault(self, stage: str, address: str | None, client: str) -> Strike | None:
        return pick_fault(self.mta, stage, address, client)

    async def _apply_fault(self, server: LabSMTP, stage: str, address: str | None) -> str | None:
        strike = self.fault(stage, address, server.lab_peer[0] if server.lab_peer else "")
        if strike is None:
            return None
        fault = strike.fault
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.disconnect:
            if server.transport is not None:
                server.transport.close()
            return "421 4.4.2 connection dropped (lab fault)"
        return strike.reply

    # HELO / EHLO --------------------------------------------------------------------

    async def _helo_check(self, server: LabSMTP, hostname: str) -> str | None:
        peer = server.lab_peer[0] if server.lab_peer else ""
        if server.rdns is None:
            try:
                names = await self.mta.resolver.ptr(peer)
                server.rdns = names[0] if names else ""
            except (DnsNotFound, DnsTemporaryError, ValueError):
                server.rdns = ""
        if self.policy.helo_rdns.value == "off":
            return None
        if hostname.lower().rstrip(".") != (server.rdns or "").lower():
            self.emit("policy.helo_mismatch", helo=hostname, rdns=server.rdns or "", peer=peer)
            if self.policy.helo_rdns.value == "reject":
                return codes.HELO_MISMATCH.format(helo=hostname, rdns=server.rdns or "(none)")
        return None

    async def handle_HELO(
        self, server: LabSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if (reply := await self._apply_fault(server, "helo", None)) is not None:
            return reply
        if (reply := await self._helo_check(server, hostname)) is not None:
            return reply
        session.host_name = hostname
        return (
            f"250 {self.mta.host.hostname} Hello {hostname} [{policy.peer_address(session)}],"
            " pleased to meet you"
        )

    async def handle_EHLO(
        self,
        server: LabSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if (reply := await self._apply_fault(server, "helo", None)) is not None:
            return [reply]
        if (reply := await self._helo_check(server, hostname)) is not None:
            return [reply]
        session.host_name = hostname
        lines = [
            f"250-{self.mta.host.hostname} Hello {hostname} [{policy.peer_address(session)}],"
            " pleased to meet you"
        ]
        for line in responses[1:-1]:
            if line.startswith("250-AUTH"):
                continue
            lines.append(line)
        lines += ["250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-DSN", "250 HELP"]
        return lines

    # MAIL ---------------------------------------------------------------------------

    # aiosmtpd reads handle_EHLO's signature at every connection: computed once here
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)  # type: ignore[attr-defined]

    async def handle_MAIL(
        self,
        server: LabSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.policy.starttls is StartTls.require and not session.ssl:
            return codes.TLS_FIRST
        if _CONTROL.search(address):
            return "501 5.1.7 Bad sender address syntax"
        if (reply := await self._apply_fault(server, "mail", address)) is not None:
            return reply
        sender = "" if address == "<>" else address
        if sender and "@" not in sender:
            sender = self.mta.book.qualify(sender)
        reply = await policy.check_sender(self.mta, session, sender)
        if reply is not None:
            self.emit("policy.reject", stage="mail", address=address, reply=reply)
            return reply
        envelope.mail_from = sender or "<>"
        envelope.mail_options.extend(mail_options)
        return f"250 2.1.0 <{sender}>... Sender ok"

    # RCPT ---------------------------------------------------------------------------

    async def handle_RCPT(
        self,
        server: LabSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if _CONTROL.search(address):
            return "501 5.1.3 Bad recipient address syntax"
        if (reply := await self._apply_fault(server, "rcpt", address)) is not None:
            return reply
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return codes.TOO_MANY_RECIPIENTS
        reply = await policy.check_recipient(self.mta, session, envelope, address)
        if reply is not None:
            self.emit("policy.reject", stage="rcpt", address=address, reply=reply)
            return reply
        envelope.rcpt_tos.append(address)
        notify = server.rcpt_params.get("NOTIFY", "")
        options = getattr(envelope, "rcpt_notify", [])
        options.append([n.upper() for n in notify.split(",") if n])
        envelope.rcpt_notify = options  # type: ignore[attr-defined]
        return f"250 2.1.5 <{address}>... Recipient ok"

    async def handle_VRFY(
        self, server: LabSMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        if self.policy.vrfy == 502:
            return codes.VRFY_DISABLED
        if self.policy.vrfy == 252:
            return codes.VRFY_CANNOT
        local, domain = split_address(address)
        book = self.mta.book
        if book.is_local_domain(domain) and book.knows(address):
            return f"250 2.1.5 <{book.qualify(local) if not domain else address}>"
        return f"550 5.1.1 <{address}>... User unknown"

    # DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: LabSMTP, session: Session, envelope: Envelope) -> str:
        if (reply := await self._apply_fault(server, "data", None)) is not None:
            return reply
        content = envelope.original_content or b""
        if isinstance(content, str):  # pragma: no cover - decode_data is off
            content = content.encode()
        reply = policy.check_content(self.mta, envelope, content)
        if reply is not None:
            self.emit("policy.reject", stage="data", reply=reply)
            return reply
        if (reply := await self._apply_fault(server, "dot", None)) is not None:
            return reply
        notify = getattr(envelope, "rcpt_notify", [[] for _ in envelope.rcpt_tos])
        dsn = getattr(envelope, "dsn", {})
        server.replied = asyncio.get_running_loop().create_future()
        try:
            message = await self.mta.accept(
                content,
                envelope_from="" if envelope.mail_from == "<>" else (envelope.mail_from or ""),
                recipients=list(zip(envelope.rcpt_tos, notify, strict=False)),
                client=policy.peer_address(session),
                helo=session.host_name or "",
                rdns=server.rdns,
                protocol="ESMTPS"
                if session.ssl
                else ("ESMTP" if session.extended_smtp else "SMTP"),
                tls=_tls_text(session),
                dsn_ret=dsn.get("RET", ""),
                envid=dsn.get("ENVID", ""),
                replied=server.replied,
            )
        except OSError as exc:
            server.replied = None  # no message waits for this reply
            self.emit("queue.write_failed", error=str(exc))
            return "451 4.3.0 Error: queue file write error"
        return f"250 2.0.0 {message.id} Message accepted for delivery"


def _tls_text(session: Session) -> str | None:
    if not session.ssl:
        return None
    cipher = session.ssl.get("cipher") if isinstance(session.ssl, dict) else None
    if cipher:
        return f"{cipher[1]} with cipher {cipher[0]} ({cipher[2]}/{cipher[2]} bits)"
    return "TLS"


def make_smtp_factory(mta: Mta) -> Callable[[], LabSMTP]:
    handler = Handler(mta)
    node = mta.node
    tls = mta.host.tls if node.policy.starttls is not StartTls.off else None  # cert: 1st connect

    def factory() -> LabSMTP:
        return LabSMTP(
            handler,
            hostname=mta.host.hostname,
            data_size_limit=node.policy.max_size,
            tls_context=None if tls is None else tls.server_context(mta.host.hostname),
            require_starttls=False,
            decode_data=False,
            enable_SMTPUTF8=False,
            ident="ESMTP maillab",
            loop=asyncio.get_running_loop(),
        )

    return factory
