"""The built-in MTA: accept, queue, route, deliver, retry, bounce.

The same code is the LAN hub, the ISP smarthost and a remote mail server; the node's
topology settings make the difference. The SMTP front is aiosmtpd (smtpd.py); this
module is what stands behind it:

- `accept` turns a finished DATA into a queued message (durably, see queue.py) and
  starts a delivery attempt at once, as sendmail does.
- `run` attempts the pending recipients of some messages: local ones go to Maildirs,
  remote ones are grouped by next hop (the smarthost, or the domain's MX hosts in
  preference order, or its A record as an implicit MX) and sent over one SMTP session
  per hop. Each recipient ends delivered, failed (a DSN goes back to the sender) or
  deferred (retried on the lab clock; a delay DSN after `warn_after`; failed after
  `give_up_after`).
- `flush` runs every queued message now (sendmail -q).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lab.protocols.smtp import Reply, split_address
from lab.runtime.clock import Timer
from lab.services.diskio import DiskWorker
from lab.services.host import Host, Unreachable
from lab.services.maildir import MailStore
from lab.services.mta.dsn import build_dsn
from lab.services.mta.outbound import (
    OutboundSession,
    SessionCache,
    SessionError,
    TransactionResult,
)
from lab.services.mta.queue import (
    DELIVERED,
    FAILED,
    PENDING,
    Attempt,
    Queue,
    QueuedMessage,
    Recipient,
    new_id,
)
from lab.services.mta.rewrite import masquerade_address, rewrite_headers
from lab.services.mta.routing import AddressBook, AliasLoop
from lab.services.resolver import DnsNotFound, DnsTemporaryError, Resolver
from lab.topology.addressing import hostname_of

SMTP_PORT = 25
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9]+)|id=([A-Za-z0-9-]+)|([A-Z0-9]{8,})")


@dataclass
class Hop:
    """Where a group of recipients goes next."""

    key: str  # "smarthost:HOST" or "mx:DOMAIN"
    candidates: list[tuple[str, str, int]] = field(default_factory=list)  # (name, address, port)
    error: Reply | None = None  # set when the hop cannot be resolved


@dataclass
class _Work:
    message: QueuedMessage
    content: bytes
    recipients: list[Recipient]


Claim = Callable[[str], list[tuple[_Work, list[Recipient]]]]


class MtaService:
    def __init__(
        self,
        host: Host,
        resolver: Resolver,
        *,
        connect_timeout: float = 5.0,
        smtp_timeout: float = 30.0,
        durable: bool = True,
        max_sessions: int = 20,
        hop_sessions: int = 4,
    ):
        self.host = host
        self.node = host.node
        self.resolver = resolver
        self.book = AddressBook(host.node, host.hostname)
        self.disk = DiskWorker(host.name)  # queue files, mailboxes: in order, in groups
        self.queue = Queue(host.state_dir / "queue", durable=durable, disk=self.disk)
        self.store = MailStore(host.state_dir / "mail", durable=durable)
        self.connect_timeout = connect_timeout
        self.smtp_timeout = smtp_timeout
        self.timers: dict[str, Timer] = {}
        self.running: set[str] = set()
        self.greylist: dict[tuple[str, str, str], float] = {}
        self.fault_hits: dict[int, int] = defaultdict(int)
        self.runtime_faults: list[Any] = []
        self.probing = False  # set while a backend checks that the service answers
        self.server: Any = None
        self._due: list[str] = []  # accepted, waiting for the delivery runner
        self._fresh: dict[str, bytes] = {}  # their contents, so the first run need not read
        self._runners: set[asyncio.Task[None]] = set()
        self.outbound = asyncio.Semaphore(max_sessions)
        self.hop_sessions = hop_sessions
        self._idle = SessionCache(per_server=hop_sessions)

    # lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        from lab.services.mta.smtpd import make_smtp_factory

        for message in self.queue.load():
            self.host.emit(
                "queue.loaded", id=message.id, recipients=[r.address for r in message.pending]
            )
            self._schedule(message, max(message.next_attempt, self.host.clock.time()))
        await self.host.net.listen(SMTP_PORT, make_smtp_factory(self))

    async def close_sessions(self) -> None:
        """End the outbound sessions left open for more mail."""
        await self._idle.close()

    # accepting ------------------------------------------------------------------------

    def received_header(
        self,
        *,
        helo: str,
        client: str,
        rdns: str | None,
        queue_id: str,
        rcpt: list[str],
        protocol: str,
        tls: str | None,
    ) -> bytes:
        """A Received: line in the form sendmail writes (seed nelug's headers)."""
        shown = f"{rdns} [{client}]" if rdns else f"[{client}]"
        when = _date(int(self.host.clock.time()))
        lines = [
            f"Received: from {helo or 'unknown'} ({shown})",
            f"\tby {self.host.hostname} (maillab) with {protocol} id {queue_id}",
        ]
        if tls:
            lines.append(f"\t(using {tls})")
        lines.append(f"\tfor <{rcpt[0]}>; {when}" if len(rcpt) == 1 else f"\t; {when}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def _prepare(
        self,
        content: bytes,
        *,
        envelope_from: str,
        recipients: list[tuple[str, list[str]]],
        client: str,
        helo: str,
        rdns: str | None,
        protocol: str = "ESMTP",
        tls: str | None = None,
        dsn_ret: str = "",
        envid: str = "",
    ) -> tuple[QueuedMessage, bytes, list[Recipient]]:
        queue_id = new_id()
        rcpts: list[Recipient] = []
        failed: list[Recipient] = []
        for address, notify in recipients:
            try:
                for dest in self.book.expand(address):
                    rcpts.append(
                        Recipient(dest.address, address, dest.kind, dest.target, notify=notify)
                    )
            except AliasLoop:
                failed.append(
                    Recipient(
                        address,
                        address,
                        "local",
                        state=FAILED,
                        reply="554 5.4.6 alias loop",
                        status="5.4.6",
                        notify=notify,
                        dsn_sent=False,
                    )
                )
        header = self.received_header(
            helo=helo,
            client=client,
            rdns=rdns,
            queue_id=queue_id,
            rcpt=[a for a, _ in recipients],
            protocol=protocol,
            tls=tls,
        )
        content = header + content
        now = self.host.clock.time()
        message = QueuedMessage(
            queue_id,
            "" if envelope_from in ("", "<>") else envelope_from,
            rcpts + failed,
            now,
            client=client,
            helo=helo,
            size=len(content),
            next_attempt=now,
            dsn_ret=dsn_ret,
            envid=envid,
            message_id=_message_id(content),
        )
        return message, content, failed

    def _commit(
        self, message: QueuedMessage, content: bytes, failed: list[Recipient], original: list[str]
    ) -> None:
        """After the message is on disk: record it, and start delivering it."""
        self.queue.messages[message.id] = message
        self._accepted(message, content, original)
        if failed:
            self._bounce(message, content, failed)
        if message.done:  # every recipient failed at once (an alias loop): nothing to run
            self._finish(message)
        else:
            self._start(message, content)

    def _start(self, message: QueuedMessage, content: bytes) -> None:
        """Deliver a message now in the queue, from the content in memory."""
        self._fresh[message.id] = content
        self._kick(message.id)

    def _accepted(self, message: QueuedMessage, content: bytes, original: list[str]) -> None:
        self.host.emit(
            "queue.queued",
            id=message.id,
            envelope_from=message.envelope_from,
            recipients=[r.address for r in message.recipients],
            original_recipients=original,
            client=message.client,
            size=len(content),
            message_id=message.message_id,
        )

    def accept(self, content: bytes, **envelope: Any) -> QueuedMessage:
        """Queue a message durably and start delivering it. Returns it with its id.
        `envelope` is what `_prepare` takes: envelope_from, recipients, client, helo, ..."""
        message, content, failed = self._prepare(content, **envelope)
        self.queue.put(content, message)
        self._commit(message, content, failed, [a for a, _ in envelope["recipients"]])
        return message

    async def accept_async(self, content: bytes, **envelope: Any) -> QueuedMessage:
        """`accept` for the SMTP server: the disk write and its fsyncs run in the disk
        thread, so other sessions go on while this one waits for the disk."""
        message, content, failed = self._prepare(content, **envelope)
        original = [a for a, _ in envelope["recipients"]]
        # Once the message goes to the disk it is seen through, even if the client hangs
        # up meanwhile (it has no 250 then, and may send it again: RFC 1047's race).
        await asyncio.shield(
            self.host.spawn(self._store(message, content, failed, original), "accept")
        )
        return message

    async def _store(
        self, message: QueuedMessage, content: bytes, failed: list[Recipient], original: list[str]
    ) -> None:
        if message.recipients and not failed and all(r.local for r in message.recipients):
            await self._accept_local(message, content, original)
            return
        await self.queue.put_async(content, message)
        self._commit(message, content, failed, original)

    async def _accept_local(
        self, message: QueuedMessage, content: bytes, original: list[str]
    ) -> None:
        """Mail for local mailboxes only goes into them before the 250, as an LMTP server
        delivers: each mailbox file is on disk (fsync'd, and its directory) when this
        returns, so the message needs no queue file of its own. A mailbox that cannot be
        written leaves its recipient to the queue, and the message is queued for it."""
        self._fresh[message.id] = content  # its content, for whoever sees it accepted
        self._accepted(message, content, original)
        try:
            await asyncio.gather(
                *(self._deliver_local(message, content, r) for r in message.recipients)
            )
        finally:
            self._fresh.pop(message.id, None)
        if message.pending:
            await self.queue.put_async(content, message)
            self.queue.messages[message.id] = message
            self._start(message, content)
        else:
            self.host.emit("queue.removed", id=message.id)

    def content(self, queue_id: str) -> bytes:
        """A message's content: from memory while it is being accepted, else its file."""
        fresh = self._fresh.get(queue_id)
        return fresh if fresh is not None else self.queue.content(queue_id)

    def _kick(self, queue_id: str) -> None:
        """Deliver a newly accepted message soon. Up to `hop_sessions` delivery runs go
        at once, so a message need not wait for a slow one to end; messages that arrive
        while all are busy wait for the first to finish and go together, over one
        session per next hop, as a real MTA's queue manager batches them."""
        self._due.append(queue_id)
        self._runners = {r for r in self._runners if not r.done()}
        if len(self._runners) < self.hop_sessions:
            self._runners.add(self.host.spawn(self._drain(), "deliver"))

    async def _drain(self) -> None:
        while self._due:
            batch, self._due = self._due, []
            await self.run(batch)

    # running the queue ----------------------------------------------------------------

    async def flush(self) -> int:
        """Attempt every queued message now (sendmail -q). Returns how many were tried."""
        ids = [m.id for m in self.queue.list()]
        self.host.emit("queue.flush", count=len(ids))
        await self.run(ids)
        return len(ids)

    async def run(self, ids: Iterable[str]) -> None:
        work: list[_Work] = []
        for message_id in ids:
            message = self.queue.messages.get(message_id)
            if message is None or message_id in self.running or not message.pending:
                continue
            work.append(self._take(message))
        if not work:
            return

        def claim(key: str) -> list[tuple[_Work, list[Recipient]]]:
            taken = self._claim(key)
            work.extend(item for item, _ in taken)  # finished below with the rest
            return taken

        try:
            await self._deliver(work, claim)
        finally:
            for item in work:
                self.running.discard(item.message.id)
                self._finish(item.message, item.content)

    def _take(self, message: QueuedMessage) -> _Work:
        """Mark a message as being delivered (its retry timer off) and get its content."""
        self.running.add(message.id)
        timer = self.timers.pop(message.id, None)
        if timer:
            timer.cancel()
        content = self._fresh.pop(message.id, None)
        if content is None:
            content = self.queue.content(message.id)
        return _Work(message, content, message.pending)

    def _claim(self, key: str) -> list[tuple[_Work, list[Recipient]]]:
        """Newly accepted messages that go wholly to next hop `key`, for a session to it
        that is about to end: it carries them too, as an MTA reuses a connection."""
        taken: list[tuple[_Work, list[Recipient]]] = []
        kept: list[str] = []
        for message_id in self._due:
            message = self.queue.messages.get(message_id)
            pending = message.pending if message is not None else []
            if (
                message is None
                or not pending
                or message_id in self.running
                or any(r.local for r in pending)
                or any(self._hop_key(r.address) != key for r in pending)
            ):
                kept.append(message_id)
                continue
            item = self._take(message)
            taken.append((item, item.recipients))
        self._due = kept
        return taken

    async def _deliver(self, work: list[_Work], claim: Claim) -> None:
        groups: dict[str, list[tuple[_Work, list[Recipient]]]] = defaultdict(list)
        for item in work:
            remote: list[Recipient] = []
            for rcpt in item.recipients:
                if rcpt.local:
                    await self._deliver_local(item.message, item.content, rcpt)
                else:
                    remote.append(rcpt)
            by_key: dict[str, list[Recipient]] = defaultdict(list)
            for rcpt in remote:
                by_key[self._hop_key(rcpt.address)].append(rcpt)
            for key, rcpts in by_key.items():
                groups[key].append((item, rcpts))
        await asyncio.gather(
            *(self._deliver_hop(key, items, claim) for key, items in groups.items())
        )

    async def _deliver_local(self, message: QueuedMessage, content: bytes, rcpt: Recipient) -> None:
        user = rcpt.target or split_address(rcpt.address)[0]
        head = (
            f"Return-Path: <{message.envelope_from}>\r\n"
            f"Delivered-To: {rcpt.original if rcpt.kind == 'mailbox' else rcpt.address}\r\n"
        )
        try:
            key = await self.store.deliver_async(self.disk, user, head.encode() + content)
        except OSError as exc:
            self._result(message, rcpt, Reply(451, f"4.3.0 local delivery failed: {exc}"), "local")
            return
        rcpt.state, rcpt.reply, rcpt.status = DELIVERED, "250 2.0.0 delivered to mailbox", "2.0.0"
        message.attempts.append(
            Attempt(self.host.clock.time(), "local", "delivered", rcpt.reply, [rcpt.address])
        )
        self.host.emit(
            "mailbox.delivered",
            id=message.id,
            user=user,
            rcpt=rcpt.original,
            address=rcpt.address,
            envelope_from=message.envelope_from,
            key=key,
            message_id=message.message_id,
            maildrop=rcpt.kind == "mailbox",
        )

    def _hop_key(self, address: str) -> str:
        if self.node.smarthost:
            return f"smarthost:{self.node.smarthost}"
        return f"mx:{split_address(address)[1]}"

    async def _resolve_hop(self, key: str) -> Hop:
        hop = Hop(key)
        kind, _, target = key.partition(":")
        try:
            if kind == "smarthost":
                name, port = _host_port(target)
                if name in self.host.topology.nodes:
                    name = hostname_of(self.host.topology, name)
                addresses = await self.resolver.addresses(name)
                if not addresses:
                    hop.error = Reply(550, f"5.1.2 smarthost {name} has no address")
                hop.candidates = [(name, a, port) for a in addresses]
                return hop
            mx = await self.resolver.mx(target)
            if len(mx) == 1 and mx[0].host == ".":
                hop.error = Reply(556, f"5.1.10 {target} does not accept mail (null MX)")
                return hop
            names = [m.host for m in mx] if mx else [target]
            unresolved: list[str] = []
            for name in names:
                try:
                    for address in await self.resolver.addresses(name):
                        hop.candidates.append((name, address, SMTP_PORT))
                except DnsNotFound:
                    unresolved.append(name)
            if not hop.candidates:
                hop.error = Reply(
                    550,
                    f"5.1.2 Host or domain name not found: {target}"
                    + (" (no MX, no A)" if not mx else ""),
                )
        except DnsNotFound as exc:
            hop.error = Reply(550, f"5.1.2 Host or domain name not found. {exc}")
        except DnsTemporaryError as exc:
            hop.error = Reply(451, f"4.4.3 Host name lookup failure: {exc}")
        return hop

    async def _deliver_hop(
        self, key: str, items: list[tuple[_Work, list[Recipient]]], claim: Claim
    ) -> None:
        hop = await self._resolve_hop(key)
        if hop.error:
            for item, rcpts in items:
                self._attempt(item.message, key, hop.error, rcpts)
                for rcpt in rcpts:
                    self._result(item.message, rcpt, hop.error, "")
            return
        # Up to `hop_sessions` sessions in parallel to one next hop, each with its share
        # of the messages (Postfix's destination concurrency), so that one slow disk or
        # round trip does not hold up the rest.
        sessions = max(1, min(self.hop_sessions, len(items) // 8 or 1))
        slices = [items[i::sessions] for i in range(sessions)]
        await asyncio.gather(*(self._deliver_slice(key, hop, part, claim) for part in slices))

    async def _deliver_slice(
        self, key: str, hop: Hop, items: list[tuple[_Work, list[Recipient]]], claim: Claim
    ) -> None:
        mine = {str(a) for a in self.host.addresses.values()}
        remaining = list(items)
        last_error = Reply(451, "4.4.1 no answer from any mail exchanger")
        for name, address, port in hop.candidates:
            if not remaining:
                break
            if address in mine:
                last_error = Reply(
                    554, f"5.4.6 mail for {key.partition(':')[2]} loops back to myself"
                )
                break
            async with self.outbound:
                last_error = await self._session(
                    key, name, address, port, remaining, last_error, claim
                )
            if last_error.permanent and last_error.status == "5.4.6":
                break
        for item, rcpts in remaining:
            self._attempt(item.message, key, last_error, rcpts)
            for rcpt in rcpts:
                if rcpt.pending:
                    self._result(item.message, rcpt, last_error, "")

    async def _connect(
        self, key: str, name: str, address: str, port: int
    ) -> tuple[OutboundSession | None, Reply | None]:
        """A new session with the server, greeted and (if offered) under TLS."""
        self.host.emit("delivery.connect", hop=key, host=name, address=address, port=port)
        try:
            sock = await self.host.net.connect(address, port, timeout=self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            error = Reply(451, f"4.4.1 connect to {name}[{address}]:{port}: {_why(exc)}")
            self.host.emit(
                "delivery.connect_failed", hop=key, host=name, address=address, reason=error.text
            )
            return None, error
        session = OutboundSession(
            sock,
            server_name=name,
            local_name=self.host.hostname,
            tls_context=self.host.tls.client_context() if self.host.tls else None,
            tls=self.node.policy.tls_outbound,
            timeout=self.smtp_timeout,
        )
        try:
            await session.open()
        except SessionError as exc:
            self.host.emit("delivery.session_failed", hop=key, host=name, reply=str(exc.reply))
            await session.close()
            return None, exc.reply
        return session, None

    async def _session(
        self,
        key: str,
        name: str,
        address: str,
        port: int,
        remaining: list[tuple[_Work, list[Recipient]]],
        last_error: Reply,
        claim: Claim,
    ) -> Reply:
        """One SMTP session to one server, for as many of `remaining` as it takes, and
        for what arrives for the same next hop meanwhile (`claim`). The session is one
        left open by an earlier run if there is one, and is left open for the next."""
        session = self._idle.take(address, port, self.host.clock.time())
        if session is not None:
            self.host.emit("delivery.reuse", hop=key, host=name, address=address, port=port)
        else:
            session, error = await self._connect(key, name, address, port)
            if session is None:
                assert error is not None
                return error
        untried = session.reused  # it may have gone stale while it waited
        healthy = False
        try:
            while True:
                if not remaining:
                    remaining.extend(claim(key))  # what came meanwhile for this hop
                    if not remaining:
                        break
                if len(remaining) == 1:
                    remaining.extend(claim(key))
                item, rcpts = remaining[0]
                then = None
                if len(remaining) > 1:  # its envelope goes out behind this message
                    following, then_rcpts = remaining[1]
                    then = (
                        self._envelope_from(following.message),
                        [r.address for r in then_rcpts],
                    )
                heard = session.replies
                try:
                    result = await self._transaction(session, item, rcpts, name, then)
                except SessionError as exc:
                    if not (untried and session.replies == heard):
                        raise
                    # the server had closed the waiting connection: nothing was said in
                    # this one, so the message goes over a new one
                    self.host.emit("delivery.stale", hop=key, host=name, reason=str(exc.reply))
                    await session.close()
                    fresh, error = await self._connect(key, name, address, port)
                    if fresh is None:
                        assert error is not None
                        return error  # (closing the stale one again below is harmless)
                    session, untried = fresh, False
                    continue
                untried = False
                self._attempt(item.message, f"{name}[{address}]", None, rcpts, result)
                for rcpt in rcpts:
                    self._result(
                        item.message,
                        rcpt,
                        result.final(rcpt.address),
                        name,
                        tls=session.used_tls,
                    )
                remaining.pop(0)
            healthy = True
        except SessionError as exc:
            last_error = exc.reply
            self.host.emit("delivery.session_failed", hop=key, host=name, reply=str(exc.reply))
        finally:
            if not (healthy and self._idle.keep(session, address, port, self.host.clock.time())):
                await session.close()
        return last_error

    def _envelope_from(self, message: QueuedMessage) -> str:
        """The envelope sender as it goes out: masqueraded if the node says so."""
        m = self.node.masquerade
        if m is not None and m.envelope and message.envelope_from:
            return masquerade_address(message.envelope_from, m, self.node.local_domains)
        return message.envelope_from

    async def _transaction(
        self,
        session: OutboundSession,
        item: _Work,
        rcpts: list[Recipient],
        server: str,
        then: tuple[str, list[str]] | None,
    ) -> TransactionResult:
        message = item.message
        envelope_from = self._envelope_from(message)
        content = item.content
        m = self.node.masquerade
        if m is not None:
            content = rewrite_headers(content, m, self.node.local_domains)
        self.host.emit(
            "delivery.attempt",
            id=message.id,
            server=server,
            envelope_from=envelope_from,
            recipients=[r.address for r in rcpts],
            message_id=message.message_id,
        )
        return await session.send(envelope_from, [r.address for r in rcpts], content, then=then)

    # results ---------------------------------------------------------------------------

    def _attempt(
        self,
        message: QueuedMessage,
        hop: str,
        error: Reply | None,
        rcpts: list[Recipient],
        result: TransactionResult | None = None,
    ) -> None:
        if result is not None:
            outcome = {result.final(r.address).code // 100 for r in rcpts}
            summary = (
                "delivered"
                if outcome == {2}
                else "failed"
                if outcome == {5}
                else "deferred"
                if outcome == {4}
                else "mixed"
            )
            finals = [result.final(r.address) for r in rcpts]
            worst = next((f for f in finals if f.code >= 400), None)
            reply = str(worst or result.data_reply or result.mail_reply or "")
        else:
            summary = "failed" if error and error.permanent else "deferred"
            reply = str(error)
        message.attempts.append(
            Attempt(self.host.clock.time(), hop, summary, reply, [r.address for r in rcpts])
        )

    def _result(
        self,
        message: QueuedMessage,
        rcpt: Recipient,
        reply: Reply,
        server: str,
        *,
        tls: bool = False,
    ) -> None:
        rcpt.reply = str(reply)
        rcpt.status = reply.status
        rcpt.remote_mta = server or rcpt.remote_mta
        extra: dict[str, Any] = {}
        if reply.code < 400:
            rcpt.state, result = DELIVERED, "delivered"
            match = _QUEUED_AS.search(reply.text)
            extra = {
                "remote_id": next((g for g in match.groups() if g), "") if match else "",
                "tls": tls,
            }
        elif reply.code >= 500:
            rcpt.state, result = FAILED, "failed"
        else:
            result = "deferred"
        self.host.emit(
            "delivery.result",
            id=message.id,
            rcpt=rcpt.address,
            result=result,
            reply=str(reply),
            server=server,
            **extra,
        )

    def _finish(self, message: QueuedMessage, content: bytes | None = None) -> None:
        """After an attempt: bounce what failed, schedule what is pending, or let go."""
        if content is None:
            content = self.queue.content(message.id)
        newly_failed = [r for r in message.recipients if r.state == FAILED and not r.dsn_sent]
        now = self.host.clock.time()
        if message.pending and now - message.received >= self.node.retry.give_up_after:
            for rcpt in message.pending:
                rcpt.state = FAILED
                rcpt.reply = f"delivery time expired; last error: {rcpt.reply or 'none'}"
                rcpt.status = "4.4.7"
                newly_failed.append(rcpt)
            self.host.emit("queue.expired", id=message.id)
        if newly_failed:
            self._bounce(message, content, newly_failed)
        if message.pending:
            warn = self.node.retry.warn_after
            if (
                warn is not None
                and not message.warned
                and message.envelope_from
                and now - message.received >= warn
            ):
                message.warned = True
                self._send_dsn(message, content, message.pending, "delayed")
            self._schedule(message, self._next_time(message, now))
            self.queue.save(message)
            self.host.emit(
                "queue.deferred",
                id=message.id,
                next_attempt=message.next_attempt,
                recipients=[r.address for r in message.pending],
                reply=message.pending[0].reply,
            )
        else:
            self.queue.remove(message.id)
            self._fresh.pop(message.id, None)
            self.host.emit("queue.removed", id=message.id)

    def _next_time(self, message: QueuedMessage, now: float) -> float:
        retry = self.node.retry
        tries = sum(1 for a in message.attempts if a.hop != "local")
        interval = retry.intervals[min(max(tries - 1, 0), len(retry.intervals) - 1)]
        candidates = [now + interval, message.received + retry.give_up_after]
        if retry.warn_after is not None and not message.warned and message.envelope_from:
            candidates.append(message.received + retry.warn_after)
        return max(now, min(candidates))

    def _schedule(self, message: QueuedMessage, when: float) -> None:
        message.next_attempt = when
        old = self.timers.pop(message.id, None)
        if old:
            old.cancel()
        self.timers[message.id] = self.host.call_at(
            when, lambda: self.run([message.id]), f"retry:{message.id}"
        )

    # bounces ---------------------------------------------------------------------------

    def _bounce(self, message: QueuedMessage, content: bytes, failed: list[Recipient]) -> None:
        for rcpt in failed:
            self.host.emit(
                "queue.bounced",
                id=message.id,
                rcpt=rcpt.address,
                status=rcpt.status,
                reply=rcpt.reply,
                envelope_from=message.envelope_from,
            )
        notify = [r for r in failed if "NEVER" not in r.notify]
        if notify:
            self._send_dsn(message, content, notify, "failed")
        for rcpt in failed:
            rcpt.status = rcpt.status or "5.0.0"
            rcpt.dsn_sent = True
        self.queue.save(message)

    def _send_dsn(
        self, message: QueuedMessage, content: bytes, rcpts: list[Recipient], action: str
    ) -> None:
        now = self.host.clock.time()
        if message.envelope_from:
            to = message.envelope_from
            dsn = build_dsn(
                hostname=self.host.hostname,
                message=message,
                content=content,
                recipients=rcpts,
                action=action,
                now=now,
                to=to,
            )
            queued = self._queue_own(dsn, to)
            self.host.emit(
                "dsn.sent",
                id=queued.id,
                original_id=message.id,
                to=to,
                action=action,
                recipients=[r.address for r in rcpts],
                status=[r.status for r in rcpts],
            )
        elif action == "failed":
            # A bounce that cannot be delivered is not bounced again (RFC 3461 section 4.4):
            # the local postmaster gets it.
            dsn = build_dsn(
                hostname=self.host.hostname,
                message=message,
                content=content,
                recipients=rcpts,
                action=action,
                now=now,
                to=self.book.qualify("postmaster"),
                subject="Postmaster notify: undeliverable bounce",
            )
            queued = self._queue_own(dsn, "postmaster")
            self.host.emit(
                "dsn.double_bounce",
                id=queued.id,
                original_id=message.id,
                recipients=[r.address for r in rcpts],
            )

    def _queue_own(self, content: bytes, rcpt: str) -> QueuedMessage:
        """Queue a message this host writes itself (a DSN), from the null sender."""
        return self.accept(
            content,
            envelope_from="",
            recipients=[(rcpt, [])],
            client="127.0.0.1",
            helo=self.host.hostname,
            rdns="localhost",
            protocol="local",
        )

    # views -----------------------------------------------------------------------------

    def list_queue(self) -> list[dict[str, Any]]:
        return [m.summary() for m in self.queue.list()]

    def mailbox(self, user: str) -> list[dict[str, Any]]:
        out = []
        for key in self.store.keys(user):
            raw = self.store.read(user, key)
            out.append(
                {
                    "id": key,
                    "envelope_from": _return_path(raw),
                    "raw": raw.decode("utf-8", "surrogateescape"),
                }
            )
        return out


@functools.lru_cache(maxsize=64)
def _date(seconds: int) -> str:
    """An RFC 5322 date for a Received: line (the same second comes up many times)."""
    return email.utils.formatdate(seconds, localtime=True)


def _return_path(raw: bytes) -> str:
    match = re.match(rb"Return-Path: <([^>]*)>", raw)
    return match.group(1).decode() if match else ""


def _message_id(content: bytes) -> str:
    match = re.search(
        rb"(?im)^Message-ID:\s*(<[^>\r\n]*>)", content[: content.find(b"\r\n\r\n") + 2 or None]
    )
    return match.group(1).decode("utf-8", "replace") if match else ""


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return target, SMTP_PORT


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, Unreachable | ConnectionRefusedError):
        return f"connection refused ({exc})"
    return str(exc) or type(exc).__name__


__all__ = ["PENDING", "MtaService"]
