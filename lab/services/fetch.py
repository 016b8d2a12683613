"""The fetch service: fetchmail for the lab. It collects POP3 maildrops and hands every
message to the host's own MTA over SMTP, as fetchmail does to port 25.

For each job of the node (`fetch:` in the topology, one `poll` line of a .fetchmailrc):

1. resolve the server (a node name, or a name in the lab DNS) and connect to it over
   the host's network; STLS when the job says so; USER/PASS;
2. UIDL and LIST; every message whose UID is not in the job's journal is retrieved;
3. its recipients: single-drop, the job's `to` user; multidrop, the names found in the
   envelope headers (Delivered-To, X-Envelope-To: one per recipient, as the ISP writes
   them) or, when there are none, in To, Cc, Resent-To and Resent-Cc - only addresses in
   the job's `aka` domains or the server's own name count - mapped through the job's
   `multidrop` table (case-insensitive; an unlisted name goes to the job's postmaster);
4. a Received line for the POP3 hop is put on top (seed nelug's "with POP3 (fetchmail)"),
   the Return-Path is taken off and used as the envelope sender, and the message is
   submitted to the local MTA;
5. only when the local MTA said 250 is the UID written to the journal (fsync), and only
   then is the message deleted on the server (DELE, then QUIT) - or, with `keep`, left
   there and never fetched again. A local 4xx leaves the message on the server untouched
   for the next run; a 5xx leaves it too (fetchmail's softbounce).

The journal is STATE/fetch/USER@SERVER.uidl: one UID per line for a message handed over
whole, or "UID ADDRESS" for a recipient that already has it when others were deferred.
Because it is written before DELE, a run that dies between the local 250 and QUIT does
not deliver the message twice: the next run finds the UID, skips the delivery and
deletes it. After a clean QUIT the journal keeps only the UIDs still on the server.

Polling: every job's `poll` interval on the lab clock, while the host's links are up
(fetchmail's daemon mode, started from ip-up). `link_changed()` re-arms or stops it.
Events: fetch.start, fetch.message, fetch.deleted, fetch.kept, fetch.error, fetch.done.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from lab.protocols.pop3 import (
    ConnectionLost,
    Err,
    Greeting,
    Ok,
    Pop3Client,
    Signal,
    parse_listing,
)
from lab.runtime.clock import Timer
from lab.services.client import submit
from lab.services.host import Host, Unreachable
from lab.services.resolver import DnsNotFound, DnsTemporaryError, Resolver
from lab.topology.addressing import hostname_of
from lab.topology.model import FetchJob

SMTP_PORT = 25
READ_SIZE = 65536
ENVELOPE_HEADERS = ("Delivered-To", "X-Envelope-To")
RECIPIENT_HEADERS = ("To", "Cc", "Resent-To", "Resent-Cc")
AGENT = "maillab-fetch"


class PopError(Exception):
    """The POP3 session failed at `stage`."""

    def __init__(self, stage: str, text: str):
        super().__init__(f"{stage}: {text}")
        self.stage, self.text = stage, text


# ---------------------------------------------------------------------------------------
# The POP3 client over asyncio streams


class PopSession:
    """An asyncio shell around lab.protocols.pop3.Pop3Client: one command, one reply."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout: float
    ):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.core = Pop3Client()

    @classmethod
    async def open(cls, sock: socket.socket, *, timeout: float) -> tuple[PopSession, Greeting]:
        reader, writer = await asyncio.open_connection(sock=sock)
        session = cls(reader, writer, timeout=timeout)
        event = await session._event("greeting")
        if not isinstance(event, Greeting):
            await session.close()
            raise PopError("greeting", getattr(event, "text", "the server said no"))
        return session, event

    async def _event(self, stage: str) -> Greeting | Ok | Err:
        while True:
            event = self.core.next_event()
            if isinstance(event, Signal):  # NEED_DATA
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.timeout)
                self.core.receive_data(data)
                continue
            if isinstance(event, ConnectionLost):
                raise PopError(stage, "the server closed the connection")
            return event

    async def call(self, command: str, *args: str | int) -> Ok | Err:
        self.writer.write(self.core.send(command, *args))
        await self.writer.drain()
        event = await self._event(command)
        assert not isinstance(event, Greeting)
        return event

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(context, server_hostname=server_hostname)

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the lab's loop is closing
            self.writer.close()


# ---------------------------------------------------------------------------------------
# Reading and rewriting the fetched message


def _head(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def envelope_sender(content: bytes) -> str:
    """The Return-Path of a message as stored by the POP server ('' for <>), else From."""
    head = BytesHeaderParser(policy=compat32).parsebytes(_head(content))
    path = head.get("Return-Path")
    if path is not None:
        value = str(path).strip()
        if value in ("<>", ""):
            return ""
        return email.utils.parseaddr(value)[1] or value.strip("<>")
    sender = head.get("From")
    return email.utils.parseaddr(str(sender))[1] if sender is not None else ""


_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def strip_return_path(content: bytes) -> bytes:
    """Take the Return-Path lines out of the header: the local MTA writes its own."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return _RETURN_PATH.sub(b"", content)
    return _RETURN_PATH.sub(b"", content[: end + 2]) + content[end + 2 :]


def _addresses(content: bytes, names: tuple[str, ...]) -> list[str]:
    head = BytesHeaderParser(policy=compat32).parsebytes(_head(content))
    values: list[str] = []
    for name in names:
        values += [str(v) for v in head.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def multidrop_names(content: bytes, domains: set[str]) -> list[str]:
    """The local parts this message was addressed to in our domains: from the envelope
    headers if the server wrote any, else from the recipient headers."""
    for headers in (ENVELOPE_HEADERS, RECIPIENT_HEADERS):
        names = []
        for address in _addresses(content, headers):
            local, at, domain = address.rpartition("@")
            if at and local and domain.lower().rstrip(".") in domains:
                names.append(local)
        if names:
            return names
    return []


def map_names(names: list[str], table: dict[str, str | None], postmaster: str) -> list[str]:
    """fetchmail's 'to eddy nelug=eddy ... here': remote name -> local user, unmatched to
    the postmaster; case-insensitive, each local user once, in order."""
    lookup = {remote.lower(): (local or remote) for remote, local in table.items()}
    mapped = [lookup.get(name.lower(), postmaster) for name in names] or [postmaster]
    seen: set[str] = set()
    result = []
    for user in mapped:
        if user.lower() not in seen:
            seen.add(user.lower())
            result.append(user)
    return result


def received_header(*, server: str, by: str, recipient: str, mode: str, when: float) -> bytes:
    date = email.utils.format_datetime(datetime.fromtimestamp(when).astimezone())
    return (
        f"Received: from {server}\r\n"
        f"\tby {by} with POP3 ({AGENT})\r\n"
        f"\tfor {recipient} ({mode}); {date}\r\n"
    ).encode()


# ---------------------------------------------------------------------------------------
# The journal of UIDs handed over


class UidJournal:
    """STATE/fetch/USER@SERVER.uidl: what has been handed to the local MTA, durably."""

    def __init__(self, path: Path, *, durable: bool = True):
        self.path = path
        self.durable = durable
        self.done: set[str] = set()
        self.partial: dict[str, set[str]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                uid, _, address = line.strip().partition(" ")
                if not uid:
                    continue
                if address:
                    self.partial.setdefault(uid, set()).add(address.lower())
                else:
                    self.done.add(uid)
            for uid in self.done:
                self.partial.pop(uid, None)

    def _append(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, "".join(f"{line}\n" for line in lines).encode("utf-8"))
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def mark_done(self, uid: str) -> None:
        self._append([uid])
        self.done.add(uid)
        self.partial.pop(uid, None)

    def mark_partial(self, uid: str, addresses: list[str]) -> None:
        self._append([f"{uid} {a}" for a in addresses])
        self.partial.setdefault(uid, set()).update(a.lower() for a in addresses)

    def compact(self, keep: set[str]) -> None:
        """Forget every UID not in `keep` (those no longer on the server)."""
        done = self.done & keep
        partial = {u: a for u, a in self.partial.items() if u in keep}
        if done == self.done and partial == self.partial:
            return
        lines = sorted(done) + [f"{u} {a}" for u in sorted(partial) for a in sorted(partial[u])]
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(f"{line}\n" for line in lines).encode("utf-8"))
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.durable:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self.done, self.partial = done, partial


# ---------------------------------------------------------------------------------------
# The service


@dataclass
class JobResult:
    fetched: int = 0
    unreachable: bool = False  # the server could not be reached (link down, no route)
    errors: list[str] = field(default_factory=list)


def job_label(job: FetchJob) -> str:
    return f"{job.user}@{job.server}"


class FetchService:
    def __init__(
        self,
        host: Host,
        resolver: Resolver,
        mta: Any = None,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        link_up: Callable[[], bool] | None = None,
        durable: bool = True,
    ):
        self.host = host
        self.resolver = resolver
        self.mta = mta
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.link_up = link_up
        self.durable = durable
        self.jobs: list[FetchJob] = list(host.node.fetch)
        self.state_dir = host.state_dir / "fetch"
        self.timers: dict[int, Timer] = {}
        self.paused = False
        self._locks: dict[int, asyncio.Lock] = {}
        self.has_links = any(link.node == host.name for link in host.topology.links.values())

    # lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._arm_all()

    async def stop(self) -> None:
        self._disarm_all()

    def link_changed(self) -> None:
        """A link changed state: poll while the host's links are up, stop when down."""
        self.paused = False
        self._disarm_all()
        self._arm_all()

    # polling --------------------------------------------------------------------------

    def _links_up(self) -> bool:
        return self.link_up() if self.link_up is not None else not self.paused

    def _arm_all(self) -> None:
        if not self._links_up():
            return
        for index in range(len(self.jobs)):
            self._arm(index)

    def _arm(self, index: int, after: float | None = None) -> None:
        """Poll job `index` one interval after `after` (lab time; default: now)."""
        job = self.jobs[index]
        if job.poll is None or index in self.timers:
            return
        now = self.host.clock.time()
        when = max(now, (now if after is None else after) + job.poll)
        self.timers[index] = self.host.call_at(
            when, lambda: self._poll(index, when), f"fetch:{job_label(job)}"
        )

    def _disarm_all(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    async def _poll(self, index: int, due: float) -> None:
        self.timers.pop(index, None)
        if not self._links_up():
            return
        result = await self.run_job(self.jobs[index])
        if result.unreachable and self.link_up is None and self.has_links:
            # No word from the backend about links: a poll that cannot reach the network
            # means the link is down; wait for link_changed() before polling again.
            self.paused = True
            self._disarm_all()
            self.host.emit(
                "fetch.paused", job=job_label(self.jobs[index]), reason="; ".join(result.errors)
            )
            return
        if self._links_up():
            self._arm(index, after=due)  # every `poll` seconds, however long a poll takes

    # running --------------------------------------------------------------------------

    async def run_all(self) -> int:
        """Run every job now (fetchmail from ip-up); the number of messages handed over."""
        total = 0
        for job in self.jobs:
            total += (await self.run_job(job)).fetched
        return total

    async def run_job(self, job: FetchJob) -> JobResult:
        index = self.jobs.index(job) if job in self.jobs else -1
        lock = self._locks.setdefault(index, asyncio.Lock())
        async with lock:
            return await self._run(job)

    def _error(self, job: FetchJob, result: JobResult, stage: str, error: str, **data: Any) -> None:
        result.errors.append(f"{stage}: {error}")
        self.host.emit("fetch.error", job=job_label(job), stage=stage, error=error, **data)

    async def _run(self, job: FetchJob) -> JobResult:
        result = JobResult()
        label = job_label(job)
        self.host.emit(
            "fetch.start",
            job=label,
            server=job.server,
            user=job.user,
            mode="multi-drop" if job.multidrop is not None else "single-drop",
            keep=job.keep,
        )
        name = job.server
        if name in self.host.topology.nodes:
            name = hostname_of(self.host.topology, name)
        try:
            addresses = await self.resolver.addresses(name)
        except (DnsTemporaryError, DnsNotFound) as exc:
            result.unreachable = isinstance(exc, DnsTemporaryError)
            self._error(job, result, "resolve", str(exc))
            return self._done(job, result)
        if not addresses:
            self._error(job, result, "resolve", f"{name} has no address")
            return self._done(job, result)
        sock = None
        for address in addresses:
            try:
                sock = await self.host.net.connect(address, job.port, timeout=self.connect_timeout)
                break
            except (OSError, TimeoutError) as exc:
                result.unreachable = isinstance(exc, Unreachable | TimeoutError)
                self._error(job, result, "connect", f"{name}[{address}]:{job.port}: {exc}")
        if sock is None:
            return self._done(job, result)
        result.unreachable = False
        session: PopSession | None = None
        try:
            session, _ = await PopSession.open(sock, timeout=self.timeout)
            await self._session(job, name, session, result)
        except PopError as exc:
            self._error(job, result, exc.stage.lower(), exc.text)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._error(job, result, "pop3", f"{type(exc).__name__}: {exc}")
        finally:
            if session is not None:
                await session.close()
            else:
                sock.close()
        return self._done(job, result)

    def _done(self, job: FetchJob, result: JobResult) -> JobResult:
        self.host.emit(
            "fetch.done", job=job_label(job), count=result.fetched, errors=len(result.errors)
        )
        return result

    async def _session(
        self, job: FetchJob, server: str, session: PopSession, result: JobResult
    ) -> None:
        if job.stls:
            reply = await session.call("STLS")
            if isinstance(reply, Err):
                raise PopError("stls", _said(reply))
            if self.host.tls is None:
                raise PopError("stls", "this lab has no CA to verify the server with")
            await session.starttls(self.host.tls.client_context(), server)
        for command, args in (("USER", (job.user,)), ("PASS", (job.password,))):
            reply = await session.call(command, *args)
            if isinstance(reply, Err):
                raise PopError("login", f"{command}: {_said(reply)}")
        listing = await session.call("LIST")
        if isinstance(listing, Err):
            raise PopError("list", _said(listing))
        sizes = {n: int(size) for n, size in parse_listing(listing).items()}
        uidl = await session.call("UIDL")
        uids: dict[int, str] = parse_listing(uidl) if isinstance(uidl, Ok) else {}
        journal = UidJournal(self.state_dir / f"{_safe(job_label(job))}.uidl", durable=self.durable)
        deleted: set[str] = set()
        for number in sorted(sizes):
            uid = uids.get(number)
            if uid is not None and uid in journal.done:
                # handed over earlier: kept on purpose, or a run that ended before QUIT
                if not job.keep and await self._delete(job, session, number, uid, result):
                    deleted.add(uid)
                continue
            outcome = await self._fetch_one(job, server, session, number, uid, journal, result)
            if outcome == "stop":
                break
            # (a server without UIDL: deleted all the same, without the journal's safety)
            handed = outcome == "handed" and not job.keep
            if handed and await self._delete(job, session, number, uid or "", result):
                deleted.add(uid or "")
        reply = await session.call("QUIT")
        if isinstance(reply, Ok) and uids:
            journal.compact(set(uids.values()) - deleted)
        elif isinstance(reply, Err):
            self._error(job, result, "quit", _said(reply))

    async def _fetch_one(
        self,
        job: FetchJob,
        server: str,
        session: PopSession,
        number: int,
        uid: str | None,
        journal: UidJournal,
        result: JobResult,
    ) -> str:
        """Retrieve one message and hand it over: 'handed', 'left' or 'stop'."""
        label = job_label(job)
        reply = await session.call("RETR", number)
        if isinstance(reply, Err):
            self._error(job, result, "retr", _said(reply), number=number, uid=uid or "")
            return "left"
        content = reply.data or b""
        recipients = self.recipients(job, content, server)
        done = journal.partial.get(uid or "", set())
        pending = [r for r in recipients if r.lower() not in done]
        if not pending:  # every recipient has it already (an earlier run was cut short)
            if uid is not None:
                journal.mark_done(uid)
            return "handed"
        sender = envelope_sender(content)
        mode = "multi-drop" if job.multidrop is not None else "single-drop"
        header = received_header(
            server=server,
            by=self.host.hostname,
            recipient=recipients[0],
            mode=mode,
            when=self.host.clock.time(),
        )
        message = header + strip_return_path(content)
        address = self._local_address()
        try:
            sent = await submit(
                self.host,
                address,
                server_name=self.host.hostname,
                port=SMTP_PORT,
                mail_from=sender,
                recipients=pending,
                content=message,
                timeout=self.timeout,
                starttls=False,
            )
        except (OSError, TimeoutError, LookupError) as exc:
            self._error(job, result, "smtp", f"local MTA: {exc}", uid=uid or "")
            return "stop"
        if sent.error and sent.mail_reply is None:
            self._error(job, result, "smtp", sent.error, uid=uid or "")
            return "stop"  # the local MTA is not there: leave everything for next time
        accepted = [r for r, rp in sent.rcpt_replies.items() if rp.code < 400]
        deferred = [r for r, rp in sent.rcpt_replies.items() if 400 <= rp.code < 500]
        if not sent.accepted:
            refusal = sent.rejected
            self._error(
                job,
                result,
                "smtp",
                str(refusal or sent.error or "not accepted"),
                uid=uid or "",
                recipients=pending,
                left_on_server=True,
            )
            return "left"
        if deferred:
            if uid is not None:
                journal.mark_partial(uid, accepted)
            self._error(
                job,
                result,
                "smtp",
                "; ".join(str(sent.rcpt_replies[r]) for r in deferred),
                uid=uid or "",
                recipients=deferred,
                delivered=accepted,
                left_on_server=True,
            )
            return "left"
        if uid is not None:
            journal.mark_done(uid)
        result.fetched += 1
        self.host.emit(
            "fetch.message",
            job=label,
            number=number,
            uid=uid or "",
            recipients=accepted,
            envelope_from=sender,
            queue_id=sent.queue_id,
            size=len(content),
            refused=[r for r in pending if r not in accepted],
        )
        if job.keep:
            self.host.emit("fetch.kept", job=label, uid=uid or "", number=number)
        return "handed"

    async def _delete(
        self, job: FetchJob, session: PopSession, number: int, uid: str, result: JobResult
    ) -> bool:
        reply = await session.call("DELE", number)
        if isinstance(reply, Err):
            self._error(job, result, "dele", _said(reply), uid=uid, number=number)
            return False
        self.host.emit("fetch.deleted", job=job_label(job), uid=uid, number=number)
        return True

    # addresses ------------------------------------------------------------------------

    def _local_domain(self) -> str:
        domains = self.host.node.local_domains
        return domains[0] if domains else self.host.hostname

    def qualify(self, user: str) -> str:
        return user if "@" in user else f"{user}@{self._local_domain()}"

    def recipients(self, job: FetchJob, content: bytes, server: str) -> list[str]:
        """Local addresses for one fetched message."""
        if job.multidrop is None:
            return [self.qualify(job.to or "postmaster")]
        domains = {d.lower() for d in job.aka} | {server.lower(), job.server.lower()}
        names = multidrop_names(content, domains)
        return [self.qualify(u) for u in map_names(names, job.multidrop, job.postmaster)]

    def _local_address(self) -> str:
        """The host's own address for SMTP to itself: one not behind a link, if any."""
        linked = {
            link.network
            for link in self.host.topology.links.values()
            if link.node == self.host.name
        }
        for network, address in self.host.addresses.items():
            if network not in linked:
                return address
        return next(iter(self.host.addresses.values()))


def _said(reply: Err) -> str:
    return f"-ERR [{reply.code}] {reply.text}" if reply.code else f"-ERR {reply.text}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", name)


__all__ = ["FetchService", "PopSession", "UidJournal", "job_label"]
