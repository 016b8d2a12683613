"""The fetch service: polls a node's fetch jobs and runs each one's POP3 session, handing
every message to the host's own MTA (see lab.services.fetch for the rules)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.protocols.pop3 import Err, Ok, parse_listing
from lab.services.client import submit
from lab.services.fetch.journal import UidJournal
from lab.services.fetch.message import (
    envelope_sender,
    map_names,
    multidrop_names,
    received_header,
    strip_return_path,
)
from lab.services.fetch.schedule import PollSchedule
from lab.services.fetch.session import PopError, PopSession
from lab.services.host import Host, Unreachable
from lab.services.resolver import DnsNotFound, DnsTemporaryError, Resolver
from lab.topology.addressing import hostname_of
from lab.topology.model import FetchJob

SMTP_PORT = 25


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
        self.paused = False
        self.schedule = PollSchedule(
            host,
            lambda: [(job.poll, f"fetch:{job_label(job)}") for job in self.jobs],
            self._poll,
            self._links_up,
        )
        self._locks: dict[int, asyncio.Lock] = {}
        self.has_links = any(link.node == host.name for link in host.topology.links.values())

    # lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.schedule.arm_all()

    async def stop(self) -> None:
        self.schedule.disarm_all()

    def reset(self) -> None:
        """Forget every UID handed over (the journals) and poll as at the start, when the
        links are up (`Lab.reset()`)."""
        self.schedule.disarm_all()
        self.paused = False
        self._locks.clear()
        if self.state_dir.is_dir():
            for path in self.state_dir.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)
        self.schedule.arm_all()

    def link_changed(self) -> None:
        """A link changed state: poll while the host's links are up, stop when down."""
        self.paused = False
        self.schedule.disarm_all()
        self.schedule.arm_all()

    # polling --------------------------------------------------------------------------

    def _links_up(self) -> bool:
        return self.link_up() if self.link_up is not None else not self.paused

    async def _poll(self, index: int, due: float) -> None:
        self.schedule.taken(index)
        if not self._links_up():
            return
        result = await self.run_job(self.jobs[index])
        if result.unreachable and self.link_up is None and self.has_links:
            # No word from the backend about links: a poll that cannot reach the network
            # means the link is down; wait for link_changed() before polling again.
            self.paused = True
            self.schedule.disarm_all()
            self.host.emit(
                "fetch.paused", job=job_label(self.jobs[index]), reason="; ".join(result.errors)
            )
            return
        if self._links_up():
            self.schedule.arm(index, after=due)  # every `poll` seconds, however long a poll takes

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


__all__ = ["FetchService", "JobResult", "job_label"]
