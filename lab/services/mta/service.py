"""The built-in MTA: accept, queue, route, deliver, retry, bounce.

The same code is the LAN hub, the ISP smarthost and a remote mail server; the node's
topology settings make the difference. The SMTP front is aiosmtpd (smtpd.py, with the
policies of policy.py); it sees the MTA as frontend.Mta. Behind it, along a message's
way:

- acceptance.py: the one way in (from SMTP, and for the DSNs this host writes): local
  mail into the mailboxes before the 250, anything else durably into the queue;
- delivery.py: delivery runs, next hops (nexthop.py), cached sessions, the result of
  each attempt and the retry schedule;
- dsn.py: bounces and delay warnings, queued through acceptance;
- transitions.py: the table of a recipient's states, through which every change goes;
- queue.py: the queue on disk.

`MtaService` puts them together for a host, and is what the host's services, the
backends and the tests use.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lab.services.diskio import DiskWorker

if TYPE_CHECKING:
    from lab.services.diskproc import DiskProcess
from lab.services.faultgate import Gates
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.services.mta.acceptance import Acceptance
from lab.services.mta.delivery import Delivery
from lab.services.mta.dsn import Bounces
from lab.services.mta.nexthop import SMTP_PORT
from lab.services.mta.queue import Queue, QueuedMessage
from lab.services.mta.routing import AddressBook
from lab.services.resolver import Resolver
from lab.topology.model import Fault


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
        disk_process: DiskProcess | None = None,
    ):
        self.host = host
        self.node = host.node
        self.resolver = resolver
        self.book = AddressBook(host.node, host.hostname, host.addresses.values())
        # queue files, mailboxes: in order, in groups; in the lab's disk process if given
        self.disk = DiskWorker(host.name, disk_process)
        self.queue = Queue(host.state_dir / "queue", durable=durable, disk=self.disk)
        self.store = MailStore(host.state_dir / "mail", durable=durable, lazy=True)
        # what the SMTP front keeps here (frontend.Mta)
        self.greylist: dict[tuple[str, str, str], float] = {}
        self.fault_gates = Gates(host.topology.seed or 0, host.name)
        self.runtime_faults: list[Fault] = []
        self.probing = False  # set while a backend checks that the service answers
        self._loaded: list[QueuedMessage] = []  # found on disk, waiting for run_queue
        # a message's way
        self.delivery = Delivery(
            host,
            resolver,
            self.queue,
            self.store,
            self.disk,
            connect_timeout=connect_timeout,
            smtp_timeout=smtp_timeout,
            max_sessions=max_sessions,
            hop_sessions=hop_sessions,
        )
        self.acceptance = Acceptance(host, self.book, self.queue, self.delivery)
        self.bounces = Bounces(host, self.book, self.queue, self.acceptance)
        self.delivery.bounces = self.acceptance.bounces = self.bounces  # a bounce loops back
        # the one way in, as the SMTP front calls it (the bound method: no extra call)
        self.accept = self.acceptance.accept

    # lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the queue a previous run left and listen. Nothing is delivered until
        `run_queue`: the lab calls it once every host's listeners are up, so a restarted
        lab does not try a next hop that is not listening yet."""
        from lab.services.mta.smtpd import make_smtp_factory

        self._loaded = self.queue.load()
        for message in self._loaded:
            self.host.emit(
                "queue.loaded", id=message.id, recipients=[r.address for r in message.pending]
            )
        await self.host.net.listen(SMTP_PORT, make_smtp_factory(self))

    def run_queue(self) -> None:
        """Schedule the messages `start` found on disk (those due go at once)."""
        loaded, self._loaded = self._loaded, []
        for message in loaded:
            if message.id in self.queue.messages:
                when = max(message.next_attempt, self.host.clock.time())
                self.delivery.schedule(message, when)

    async def close_sessions(self) -> None:
        """End the outbound sessions left open for more mail."""
        await self.delivery.idle.close()

    async def reset(self) -> None:
        """Back to a new MTA's state (`Lab.reset()`, once the host's tasks are cancelled):
        no open session, queue or mail, and no greylist, fault or retry memory."""
        await self.close_sessions()
        self.delivery.reset()
        self.acceptance.accepting.clear()
        self.queue.clear()
        self.store.clear()
        self.greylist.clear()
        self.fault_gates.clear()
        self.runtime_faults.clear()

    # acting ---------------------------------------------------------------------------

    async def flush(self) -> int:
        """Attempt every queued message now (sendmail -q). Returns how many were tried."""
        return await self.delivery.flush()

    def content(self, queue_id: str) -> bytes:
        """A message's content: from memory while it is being accepted, else its file."""
        fresh = self.acceptance.accepting.get(queue_id)
        if fresh is None:
            fresh = self.delivery.fresh.get(queue_id)
        return fresh if fresh is not None else self.queue.content(queue_id)

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


def _return_path(raw: bytes) -> str:
    match = re.match(rb"Return-Path: <([^>]*)>", raw)
    return match.group(1).decode() if match else ""


__all__ = ["SMTP_PORT", "MtaService"]
