"""Acceptance: the one way a message comes into the MTA, from a client or from itself.

`accept` takes a message the SMTP server received (or a DSN this host wrote, dsn.py)
and returns only once it is durably this host's: then the server may say 250.

- A line of the header block that is neither a header field nor a continuation line
  ends the headers: a blank line goes in before it (`end_headers`), as Postfix's
  cleanup does, so text typed without the blank line is body, not header.
- Its recipients are expanded (aliases, maildrops; an alias loop fails its recipient
  at once, and is bounced before the 250) and a Received: line is put on top.
- Mail for local mailboxes only goes into them before the 250, as an LMTP server
  delivers: each mailbox file is on disk (fsync'd, and its directory) when `accept`
  returns, so the message needs no queue file of its own. A mailbox that cannot be
  written leaves its recipient to the queue, and the message is queued for it.
- Anything else is written to the queue (queue.py) by the host's disk worker, with the
  others of its group, and handed to delivery (delivery.py) with its content.

Once the message goes to the disk its acceptance runs to the end, even if the client
hangs up before the reply. A queued message is handed to delivery only once its 250 has
gone out: the SMTP server writes the reply and says whether the kernel took it (a
connection that was reset fails the write). A client that never had the 250 still holds
the message and sends it again, so that copy is withdrawn from the queue rather than
delivered twice (RFC 1047's race, as a dial-up link that drops during the final dot
makes it). A 250 that went out but was lost on the way remains the one window; the
lab's link drop leaves it closed (docs/reliability.md, flapping).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
import time

from lab.services.host import Host
from lab.services.mta.delivery import Delivery
from lab.services.mta.parts import Bouncer
from lab.services.mta.queue import Queue, QueuedMessage, Recipient, new_id
from lab.services.mta.routing import AddressBook, AliasLoop
from lab.services.mta.transitions import PERMFAIL, move


class Acceptance:
    bounces: Bouncer  # set by MtaService: an alias loop is bounced before the 250

    def __init__(self, host: Host, book: AddressBook, queue: Queue, delivery: Delivery):
        self.host = host
        self.book = book
        self.queue = queue
        self.delivery = delivery
        self.accepting: dict[str, bytes] = {}  # going into mailboxes before the 250

    async def accept(
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
        at_once: bool = True,
        replied: asyncio.Future[bool] | None = None,
    ) -> QueuedMessage:
        """Make a message this host's, durably; returns it with its queue id.
        `recipients` are (address, DSN NOTIFY) pairs. `at_once`: mail for local mailboxes
        only goes into them now, before the 250 (a DSN this host writes is queued).
        `replied` (SMTP): resolved by the server once it wrote the 250, True when the
        reply went out; a queued message waits for it before delivery, and is withdrawn
        when it is False."""
        message, content, failed = self._prepare(
            content,
            envelope_from=envelope_from,
            recipients=recipients,
            client=client,
            helo=helo,
            rdns=rdns,
            protocol=protocol,
            tls=tls,
            dsn_ret=dsn_ret,
            envid=envid,
        )
        original = [a for a, _ in recipients]
        # Once the message goes to the disk it is seen through, even if the client hangs
        # up meanwhile (it has no 250 then, and may send it again: RFC 1047's race).
        task = self.host.spawn(self._store(message, content, failed, original, at_once), "accept")
        try:
            queued = await asyncio.shield(task)
        except asyncio.CancelledError:  # the client left: decide once the file is on disk

            def stored(t: asyncio.Task[bool]) -> None:
                if not t.cancelled() and t.exception() is None and t.result():
                    self._hand_over(message, content, original, keep=replied is None)

            task.add_done_callback(stored)
            raise
        if not queued:
            return message
        if replied is None:
            self._hand_over(message, content, original, keep=True)
        else:  # queued now (the 250 names it); delivered only if the 250 went out
            self._accepted(message, content, original)

            def answered(reply: asyncio.Future[bool]) -> None:
                went = not reply.cancelled() and reply.exception() is None and reply.result()
                self._hand_over(message, content, original, keep=went, announced=True)

            replied.add_done_callback(answered)
        return message

    def _hand_over(
        self,
        message: QueuedMessage,
        content: bytes,
        original: list[str],
        *,
        keep: bool,
        announced: bool = False,
    ) -> None:
        """A queued message to delivery; or, when its 250 did not go out, withdrawn: the
        client still has it and sends it again. `announced`: its queue.queued is out."""
        if keep:
            if not announced:
                self._accepted(message, content, original)
            self.delivery.start(message, content)
            return
        self.queue.remove(message.id)
        self.host.emit(
            "queue.withdrawn",
            id=message.id,
            client=message.client,
            reason="the 250 did not go out (the client left): it still has the message",
        )

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

    def missing_headers(self, content: bytes, queue_id: str, now: float) -> bytes:
        """The message with a Message-ID: and a Date: at the end of its header block when
        it has none, as sendmail, Postfix's cleanup and Exim add them at the first MTA: a
        message typed by hand is then followed across hops and dated like any other."""
        end = _header_end(content)
        block = content[:end]
        added = b""
        if not re.search(rb"(?im)^Message-ID[ \t]*:", block):
            when = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
            added += f"Message-ID: <{when}.{queue_id}@{self.host.hostname}>\r\n".encode()
        if not re.search(rb"(?im)^Date[ \t]*:", block):
            added += f"Date: {_date(int(now))}\r\n".encode()
        if not added:
            return content
        if end and not block.endswith(b"\r\n"):  # headers only, the last line unended
            added = b"\r\n" + added
        return content[:end] + added + content[end:]

    def _prepare(
        self,
        content: bytes,
        *,
        envelope_from: str,
        recipients: list[tuple[str, list[str]]],
        client: str,
        helo: str,
        rdns: str | None,
        protocol: str,
        tls: str | None,
        dsn_ret: str,
        envid: str,
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
                rcpt = Recipient(
                    address,
                    address,
                    "local",
                    reply="554 5.4.6 alias loop",
                    status="5.4.6",
                    notify=notify,
                )
                move(rcpt, PERMFAIL)
                failed.append(rcpt)
        header = self.received_header(
            helo=helo,
            client=client,
            rdns=rdns,
            queue_id=queue_id,
            rcpt=[a for a, _ in recipients],
            protocol=protocol,
            tls=tls,
        )
        now = self.host.clock.time()
        content = header + self.missing_headers(end_headers(content), queue_id, now)
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

    async def _store(
        self,
        message: QueuedMessage,
        content: bytes,
        failed: list[Recipient],
        original: list[str],
        at_once: bool,
    ) -> bool:
        """The message on disk; True when it is in the queue waiting for `_hand_over`."""
        if (
            at_once
            and message.recipients
            and not failed
            and all(r.local for r in message.recipients)
        ):
            await self._accept_local(message, content, original)
            return False
        await self.queue.put_async(content, message)
        if not failed:
            return True
        self._accepted(message, content, original)
        if failed:  # an alias loop: bounced now, before the 250
            try:
                await self._bounce(message, content, failed)
            except OSError as exc:  # no DSN on disk: delivery's `finish` tries it again
                self.host.emit("queue.write_failed", id=message.id, error=str(exc))
            else:
                if message.done:  # every recipient failed at once: nothing to deliver
                    notified = self.delivery.finish(message, content)
                    if notified is not None:
                        await notified
                    return False
        self.delivery.start(message, content)
        return False

    async def _bounce(
        self, message: QueuedMessage, content: bytes, failed: list[Recipient]
    ) -> None:
        running = self.delivery.running
        running.add(message.id)  # no flush takes it while its DSN is being written
        try:
            await self.bounces.bounce(message, content, failed)
        finally:
            running.discard(message.id)

    async def _accept_local(
        self, message: QueuedMessage, content: bytes, original: list[str]
    ) -> None:
        """Into the mailboxes before the 250; what cannot be written there is queued."""
        self.accepting[message.id] = content  # its content, for whoever sees it accepted
        self._accepted(message, content, original)
        try:
            await asyncio.gather(
                *(self.delivery.deliver_local(message, content, r) for r in message.recipients)
            )
        finally:
            self.accepting.pop(message.id, None)
        if message.pending:
            await self.queue.put_async(content, message)
            self.delivery.start(message, content)
        else:
            self.host.emit("queue.removed", id=message.id)

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


# A header field's name: printable ASCII but the colon, then the colon (RFC 5322 2.2; like
# Postfix's is_header, spaces and tabs before the colon are allowed).
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")


def end_headers(content: bytes) -> bytes:
    """The message with its header block ended where it ends: at the first line that is
    neither a header field nor the continuation of one, a blank line is put in (Postfix's
    cleanup treats such a line as the body's first, and writes the blank line); a message
    whose headers end with a blank line, or that is only headers, is left as it is."""
    pos = 0
    in_field = False
    while True:
        end = content.find(b"\r\n", pos)
        if end == pos or pos == len(content):
            return content  # the blank line (or the end): the headers end as they should
        if in_field and content[pos : pos + 1] in (b" ", b"\t"):
            pass  # a continuation line
        elif _FIELD_NAME.match(content, pos):
            in_field = True
        else:
            return content[:pos] + b"\r\n" + content[pos:]
        if end < 0:
            return content
        pos = end + 2


@functools.lru_cache(maxsize=64)
def _date(seconds: int) -> str:
    """An RFC 5322 date for a Received: line (the same second comes up many times)."""
    return email.utils.formatdate(seconds, localtime=True)


def _header_end(content: bytes) -> int:
    """Where the header block ends: after the last header line, before the blank line
    (the whole message when it is only headers)."""
    if content.startswith(b"\r\n"):
        return 0
    blank = content.find(b"\r\n\r\n")
    return len(content) if blank < 0 else blank + 2


def _message_id(content: bytes) -> str:
    match = re.search(rb"(?im)^Message-ID:\s*(<[^>\r\n]*>)", content[: _header_end(content)])
    return match.group(1).decode("utf-8", "replace") if match else ""
