"""Delivery: what happens to a queued message after the 250.

- `start` hands over a newly accepted message (with its content, so the first run need
  not read it); up to `hop_sessions` runs go at once, each taking what arrived meanwhile.
- `run` attempts the pending recipients of some messages: local ones go to Maildirs,
  remote ones are grouped by next hop (nexthop.py) and sent over a few parallel SMTP
  sessions per hop (outbound.py), sessions left open by earlier runs first (the session
  cache); a session about to end takes what was accepted meanwhile for the same hop.
- Every reply is recorded (`_attempt`, `_result`): the recipient moves by the table of
  transitions.py to delivered, deferred or failed.
- `finish` ends an attempt: what has waited past `give_up_after` expires, what failed or
  expired is bounced and a delay warning goes out after `warn_after` (dsn.py: each DSN
  is on disk before the original's state changes), what is still pending is scheduled
  on the retry schedule, and a message with nothing pending leaves the queue. Each
  message is finished as soon as its last recipient of the run has its reply, not when
  the whole run ends: its removal goes to the disk right after the next hop's 250, so
  a crash in the middle of a long flush sends again only what was in flight.
- `flush` runs every queued message now (sendmail -q).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from typing import Any

from lab.protocols.smtp import Reply, split_address
from lab.runtime.clock import Timer
from lab.services.diskio import DiskWorker
from lab.services.host import Host, Unreachable
from lab.services.maildir import MailStore
from lab.services.mta.nexthop import Hop, hop_key, loops_back, resolve_hop
from lab.services.mta.outbound import (
    OutboundSession,
    SessionCache,
    SessionError,
    TransactionResult,
)
from lab.services.mta.parts import Bouncer
from lab.services.mta.queue import Attempt, Queue, QueuedMessage, Recipient
from lab.services.mta.rewrite import masquerade_address, rewrite_headers
from lab.services.mta.runs import Run, Work
from lab.services.mta.transitions import (
    ACCEPTED,
    GIVE_UP,
    OWED_DSN,
    PERMFAIL,
    TEMPFAIL,
    move,
)
from lab.services.resolver import Resolver

_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9]+)|id=([A-Za-z0-9-]+)|([A-Z0-9]{8,})")


class Delivery:
    bounces: Bouncer  # set by MtaService: a bounce goes back through acceptance

    def __init__(
        self,
        host: Host,
        resolver: Resolver,
        queue: Queue,
        store: MailStore,
        disk: DiskWorker,
        *,
        connect_timeout: float,
        smtp_timeout: float,
        max_sessions: int,
        hop_sessions: int,
    ):
        self.host = host
        self.node = host.node
        self.resolver = resolver
        self.queue = queue
        self.store = store
        self.disk = disk
        self.connect_timeout = connect_timeout
        self.smtp_timeout = smtp_timeout
        self.timers: dict[str, Timer] = {}
        self.running: set[str] = set()
        self.fresh: dict[str, bytes] = {}  # accepted, not yet read by a run: their contents
        self._due: list[str] = []  # accepted, waiting for the delivery runner
        self._runners: set[asyncio.Task[None]] = set()
        self.outbound = asyncio.Semaphore(max_sessions)
        self.hop_sessions = hop_sessions
        self.idle = SessionCache(per_server=hop_sessions)

    # starting ---------------------------------------------------------------------------

    def start(self, message: QueuedMessage, content: bytes) -> None:
        """Deliver a message now in the queue, from the content in memory. Up to
        `hop_sessions` delivery runs go at once, so a message need not wait for a slow
        one to end; messages that arrive while all are busy wait for the first to finish
        and go together, over one session per next hop, as a real MTA's queue manager
        batches them."""
        self.fresh[message.id] = content
        self._due.append(message.id)
        self._runners = {r for r in self._runners if not r.done()}
        if len(self._runners) < self.hop_sessions:
            self._runners.add(self.host.spawn(self._drain(), "deliver"))

    async def _drain(self) -> None:
        while self._due:
            batch, self._due = self._due, []
            await self.run(batch)

    async def flush(self) -> int:
        """Attempt every queued message now (sendmail -q). Returns how many were tried."""
        ids = [m.id for m in self.queue.list()]
        self.host.emit("queue.flush", count=len(ids))
        await self.run(ids)
        return len(ids)

    # running the queue ------------------------------------------------------------------

    async def run(self, ids: Iterable[str]) -> None:
        work: list[Work] = []
        for message_id in ids:
            message = self.queue.messages.get(message_id)
            if message is None or message_id in self.running:
                continue
            if not message.pending and not any(r.state in OWED_DSN for r in message.recipients):
                continue  # (one whose DSN could not be written is finished again)
            work.append(self._take(message))
        if not work:
            return
        run = Run(work, self._claim, self.finish, self.running)
        try:
            await self._deliver(work, run)
        finally:
            for item in run.work:  # (what an error left unfinished)
                run.finish(item)
            if run.notifying:
                await asyncio.gather(*run.notifying)

    def _take(self, message: QueuedMessage) -> Work:
        """Mark a message as being delivered (its retry timer off) and get its content."""
        self.running.add(message.id)
        timer = self.timers.pop(message.id, None)
        if timer:
            timer.cancel()
        content = self.fresh.pop(message.id, None)
        if content is None:
            content = self.queue.content(message.id)
        return Work(message, content, message.pending)

    def _claim(self, key: str) -> list[tuple[Work, list[Recipient]]]:
        """Newly accepted messages that go wholly to next hop `key`, for a session to it
        that is about to end: it carries them too, as an MTA reuses a connection."""
        taken: list[tuple[Work, list[Recipient]]] = []
        kept: list[str] = []
        node = self.node
        for message_id in self._due:
            message = self.queue.messages.get(message_id)
            pending = message.pending if message is not None else []
            if (
                message is None
                or not pending
                or message_id in self.running
                or any(r.local for r in pending)
                or any(hop_key(node, r.address) != key for r in pending)
            ):
                kept.append(message_id)
                continue
            item = self._take(message)
            taken.append((item, item.recipients))
        self._due = kept
        return taken

    async def _deliver(self, work: list[Work], run: Run) -> None:
        groups: dict[str, list[tuple[Work, list[Recipient]]]] = defaultdict(list)
        node = self.node
        for item in list(work):
            remote: list[Recipient] = []
            for rcpt in item.recipients:
                if rcpt.local:
                    await self.deliver_local(item.message, item.content, rcpt)
                else:
                    remote.append(rcpt)
            by_key: dict[str, list[Recipient]] = defaultdict(list)
            for rcpt in remote:
                by_key[hop_key(node, rcpt.address)].append(rcpt)
            item.parts = len(by_key)
            for key, rcpts in by_key.items():
                groups[key].append((item, rcpts))
            if not by_key:  # local only: done now
                run.finish(item)
        await asyncio.gather(*(self._deliver_hop(key, items, run) for key, items in groups.items()))

    async def deliver_local(self, message: QueuedMessage, content: bytes, rcpt: Recipient) -> None:
        """Into the recipient's Maildir (durably, by the disk worker)."""
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
        move(rcpt, ACCEPTED)
        rcpt.reply, rcpt.status = "250 2.0.0 delivered to mailbox", "2.0.0"
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

    async def _deliver_hop(
        self, key: str, items: list[tuple[Work, list[Recipient]]], run: Run
    ) -> None:
        mine = {str(a) for a in self.host.addresses.values()}
        hop = await resolve_hop(key, self.resolver, self.host.topology, mine)
        if hop.error:
            for item, rcpts in items:
                self._attempt(item.message, key, hop.error, rcpts)
                for rcpt in rcpts:
                    self._result(item.message, rcpt, hop.error, "")
                run.done(item)
            return
        # Up to `hop_sessions` sessions in parallel to one next hop, each with its share
        # of the messages (Postfix's destination concurrency), so that one slow disk or
        # round trip does not hold up the rest.
        sessions = max(1, min(self.hop_sessions, len(items) // 8 or 1))
        slices = [items[i::sessions] for i in range(sessions)]
        await asyncio.gather(*(self._deliver_slice(key, hop, part, run) for part in slices))

    async def _deliver_slice(
        self, key: str, hop: Hop, items: list[tuple[Work, list[Recipient]]], run: Run
    ) -> None:
        mine = {str(a) for a in self.host.addresses.values()}
        remaining = list(items)
        last_error = Reply(451, "4.4.1 no answer from any mail exchanger")
        for name, address, port in hop.candidates:
            if not remaining:
                break
            if address in mine:
                last_error = loops_back(key.partition(":")[2])
                break
            async with self.outbound:
                last_error = await self._session(
                    key, name, address, port, remaining, last_error, run
                )
            if last_error.permanent and last_error.status == "5.4.6":
                break
        for item, rcpts in remaining:
            self._attempt(item.message, key, last_error, rcpts)
            for rcpt in rcpts:
                if rcpt.pending:
                    self._result(item.message, rcpt, last_error, "")
            run.done(item)

    # SMTP sessions ----------------------------------------------------------------------

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
        remaining: list[tuple[Work, list[Recipient]]],
        last_error: Reply,
        run: Run,
    ) -> Reply:
        """One SMTP session to one server, for as many of `remaining` as it takes, and
        for what arrives for the same next hop meanwhile (`run.claim`); each message is
        finished (`run.done`) as soon as its replies are in. The session is one
        left open by an earlier run if there is one, and is left open for the next."""
        session = self.idle.take(address, port, self.host.clock.time())
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
                    remaining.extend(run.claim(key))  # what came meanwhile for this hop
                    if not remaining:
                        break
                if len(remaining) == 1:
                    remaining.extend(run.claim(key))
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
                        transfer=result,
                    )
                remaining.pop(0)
                run.done(item)
            healthy = True
        except SessionError as exc:
            last_error = exc.reply
            self.host.emit("delivery.session_failed", hop=key, host=name, reply=str(exc.reply))
        finally:
            if not (healthy and self.idle.keep(session, address, port, self.host.clock.time())):
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
        item: Work,
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
        start = self.host.clock.time()
        result = await session.send(envelope_from, [r.address for r in rcpts], content, then=then)
        result.size, result.took = len(content), self.host.clock.time() - start
        return result

    # results ----------------------------------------------------------------------------

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
        transfer: TransactionResult | None = None,
    ) -> None:
        rcpt.reply = str(reply)
        rcpt.status = reply.status
        rcpt.remote_mta = server or rcpt.remote_mta
        extra: dict[str, Any] = {}
        if reply.code < 400:
            move(rcpt, ACCEPTED)
            result = "delivered"
            match = _QUEUED_AS.search(reply.text)
            extra = {
                "remote_id": next((g for g in match.groups() if g), "") if match else "",
                "tls": tls,
            }
        elif reply.code >= 500:
            move(rcpt, PERMFAIL)
            result = "failed"
        else:
            move(rcpt, TEMPFAIL)
            result = "deferred"
        if transfer is not None:  # bytes and lab seconds on the wire, per hop
            extra.update(bytes=transfer.size, duration=round(transfer.took, 3))
        self.host.emit(
            "delivery.result",
            id=message.id,
            rcpt=rcpt.address,
            result=result,
            reply=str(reply),
            server=server,
            **extra,
        )

    # after an attempt ---------------------------------------------------------------

    def finish(self, message: QueuedMessage, content: bytes) -> Awaitable[None] | None:
        """After an attempt: expire what has waited too long, then bounce what failed or
        expired and warn of what is late (DSNs), schedule what is pending, or let go.
        Returns None when that is done; when a DSN is to be written first, an awaitable
        that does it all, and lets the message go from `running` when it is done."""
        now = self.host.clock.time()
        retry = self.node.retry
        owed = [r for r in message.recipients if r.state in OWED_DSN]
        pending = message.pending
        if pending and now - message.received >= retry.give_up_after:
            for rcpt in pending:
                move(rcpt, GIVE_UP)
                rcpt.reply = f"delivery time expired; last error: {rcpt.reply or 'none'}"
                rcpt.status = "4.4.7"
                owed.append(rcpt)
            self.host.emit("queue.expired", id=message.id)
            pending = []
        warn = retry.warn_after
        late = bool(
            pending
            and warn is not None
            and not message.warned
            and message.envelope_from
            and now - message.received >= warn
        )
        if owed or late:
            return self._notify(message, content, owed, late, now)
        self._settle(message, now)
        return None

    async def _notify(
        self,
        message: QueuedMessage,
        content: bytes,
        owed: list[Recipient],
        late: bool,
        now: float,
    ) -> None:
        """The DSNs, each durable in the queue before the message's state is saved or
        its files removed; then the rest of `finish`."""
        self.running.add(message.id)  # no other run takes it meanwhile
        try:
            if owed:
                await self.bounces.bounce(message, content, owed)
            if late:
                await self.bounces.warn(message, content, message.pending)
                message.warned = True
        except OSError as exc:  # the DSN is not on disk: keep all, and try again later
            self.host.emit("queue.write_failed", id=message.id, error=str(exc))
            later = now + self.node.retry.intervals[0]  # (not at once: the disk is full)
            self.schedule(message, max(self._next_time(message, now), later))
            self.queue.save(message)
            return
        finally:
            self.running.discard(message.id)
        self._settle(message, now)

    def _settle(self, message: QueuedMessage, now: float) -> None:
        """Schedule what is pending and record it, or let the message go."""
        if message.pending:
            self.schedule(message, self._next_time(message, now))
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
            self.fresh.pop(message.id, None)
            self.host.emit("queue.removed", id=message.id)

    # the retry schedule -----------------------------------------------------------------

    def _next_time(self, message: QueuedMessage, now: float) -> float:
        retry = self.node.retry
        tries = sum(1 for a in message.attempts if a.hop != "local")
        interval = retry.intervals[min(max(tries - 1, 0), len(retry.intervals) - 1)]
        candidates = [now + interval, message.received + retry.give_up_after]
        if retry.warn_after is not None and not message.warned and message.envelope_from:
            candidates.append(message.received + retry.warn_after)
        return max(now, min(candidates))

    def reset(self) -> None:
        """Forget every retry timer and run (`Lab.reset()`: their tasks are cancelled)."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.running.clear()
        self.fresh.clear()
        self._due.clear()
        self._runners.clear()

    def schedule(self, message: QueuedMessage, when: float) -> None:
        """Attempt `message` at lab time `when` (its retry timer)."""
        message.next_attempt = when
        old = self.timers.pop(message.id, None)
        if old:
            old.cancel()
        self.timers[message.id] = self.host.call_at(
            when, lambda: self.run([message.id]), f"retry:{message.id}"
        )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, Unreachable | ConnectionRefusedError):
        return f"connection refused ({exc})"
    return str(exc) or type(exc).__name__
