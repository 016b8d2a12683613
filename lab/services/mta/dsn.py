"""Delivery status notifications (RFC 3464): the bounce, and the delay warning.

A DSN is a multipart/report message from the null sender <> to the envelope sender:
a human-readable part, a message/delivery-status part with a block per recipient
(Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code), and the returned
headers (text/rfc822-headers). The MTA queues it like any other message, through the
same way in as mail from a client (acceptance.py): written and fsync'd by the host's
disk worker, with its directory. `Bounces` waits for that before a recipient counts as
told (transitions.py: DSN sent), so the original's state is saved, or its files
removed, only after its DSN is durable. A DSN that cannot be delivered is not bounced
again but goes to the local postmaster.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from lab.services.host import Host
from lab.services.mta.parts import Accepts
from lab.services.mta.queue import Queue, QueuedMessage, Recipient
from lab.services.mta.routing import AddressBook
from lab.services.mta.transitions import NOTIFIED, move


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _headers_of(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def build_dsn(
    *,
    hostname: str,
    message: QueuedMessage,
    content: bytes,
    recipients: list[Recipient],
    action: str,
    now: float,
    to: str,
    subject: str | None = None,
) -> bytes:
    """The DSN as bytes with CRLF line ends, ready to queue."""
    boundary = f"maillab-dsn-{message.id}-{int(now)}"
    failed = action == "failed"
    subject = subject or (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    human = []
    if failed:
        human.append(f"This is the mail system at host {hostname}.")
        human.append("")
        human.append("I'm sorry to have to inform you that your message could not")
        human.append("be delivered to one or more recipients.")
    else:
        human.append(f"This is the mail system at host {hostname}.")
        human.append("")
        human.append("Your message could not be delivered yet; the mail system will keep")
        human.append("trying. You do not need to send it again.")
    human.append("")
    for r in recipients:
        human.append(f"<{r.original or r.address}>: {r.reply or r.status}")
    status = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Maillab-Queue-ID: {message.id}",
        f"Arrival-Date: {_date(message.received)}",
    ]
    if message.envid:
        status.insert(0, f"Original-Envelope-Id: {message.envid}")
    blocks = ["\r\n".join(status)]
    for r in recipients:
        block = [f"Final-Recipient: rfc822; {r.address}"]
        if r.original and r.original != r.address:
            block.append(f"Original-Recipient: rfc822; {r.original}")
        block.append(f"Action: {action}")
        block.append(f"Status: {r.status or ('5.0.0' if failed else '4.0.0')}")
        if r.remote_mta:
            block.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.reply:
            block.append(f"Diagnostic-Code: smtp; {r.reply}")
        block.append(f"Last-Attempt-Date: {_date(now)}")
        blocks.append("\r\n".join(block))
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "\r\n".join(human),
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "\r\n\r\n".join(blocks),
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(parts).encode()
    returned = _headers_of(content)
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\r\n" + returned + tail


class Bounces:
    """Tells the sender: a bounce for recipients that failed or expired, a warning for
    those still waiting after `warn_after`. Each DSN is queued from the null sender."""

    def __init__(self, host: Host, book: AddressBook, queue: Queue, acceptance: Accepts):
        self.host = host
        self.book = book
        self.queue = queue
        self.acceptance = acceptance

    async def bounce(self, message: QueuedMessage, content: bytes, failed: list[Recipient]) -> None:
        """A DSN for `failed` (unless they asked for none), durable when this returns;
        then they are final, and the message's new state is saved."""
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
            await self._send(message, content, notify, "failed")
        for rcpt in failed:
            rcpt.status = rcpt.status or "5.0.0"
            move(rcpt, NOTIFIED)
        self.queue.save(message)

    async def warn(self, message: QueuedMessage, content: bytes, late: list[Recipient]) -> None:
        """A delay warning for `late` (still being tried), durable when this returns."""
        await self._send(message, content, late, "delayed")

    async def _send(
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
            queued = await self._queue_own(dsn, to)
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
            queued = await self._queue_own(dsn, "postmaster")
            self.host.emit(
                "dsn.double_bounce",
                id=queued.id,
                original_id=message.id,
                recipients=[r.address for r in rcpts],
            )

    async def _queue_own(self, content: bytes, rcpt: str) -> QueuedMessage:
        """Queue a message this host writes itself (a DSN), from the null sender."""
        return await self.acceptance.accept(
            content,
            envelope_from="",
            recipients=[(rcpt, [])],
            client="127.0.0.1",
            helo=self.host.hostname,
            rdns="localhost",
            protocol="local",
            tls=None,
            dsn_ret="",
            envid="",
            at_once=False,
        )
