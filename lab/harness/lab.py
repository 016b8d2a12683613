"""The Lab: bring a topology up on a backend, act on it, and assert what mail did.

    with Lab.up("topologies/home-dialup.yaml") as lab:
        lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        lab.assert_queued(on="hub")
        lab.link("dialup").up()
        lab.assert_delivered(to="paulmidgley@freeuk.com", envelope_from="eddy@shofar.uklinux.net")

The backend's event loop runs in a background thread, so the Lab is used from plain
synchronous code and pytest. Assertions wait for events (never sleep) and, when they
fail, say what was expected, what happened instead, and show the message's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lab.backends.base import BACKENDS, Backend, backend_class
from lab.errors import LabError
from lab.protocols.smtp import SubmitResult
from lab.runtime.events import Event, format_events
from lab.topology import load
from lab.topology.defaults import DEFAULT_BODY, DEFAULT_SUBJECT
from lab.topology.model import Topology
from lab.topology.units import parse_duration

T = TypeVar("T")


def backend_names() -> list[str]:
    """The backends a Lab can run on, by the names `Lab.up(backend=...)` takes."""
    return list(BACKENDS)


class LabAssertionError(AssertionError):
    """An expectation about mail that did not hold; the message explains and traces."""


class _LoopThread:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"maillab-{name}", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:  # a timeout, or Ctrl-C while waiting: stop the work too
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


@dataclass
class MailboxMessage:
    id: str
    envelope_from: str
    raw: str
    message: email.message.EmailMessage = field(repr=False)

    def __getitem__(self, header: str) -> str | None:
        value = self.message[header]
        return None if value is None else str(value)

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",)) if self.message.is_multipart() else self.message
        if part is None:
            return ""
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)


class LinkHandle:
    def __init__(self, lab: Lab, name: str):
        self.lab, self.name = lab, name

    def up(self) -> None:
        self.lab.run(self.lab.backend.set_link(self.name, True))

    def down(self) -> None:
        self.lab.run(self.lab.backend.set_link(self.name, False))

    @property
    def state(self) -> str:
        return str(self.lab.run(self.lab.backend.link_state(self.name)))

    def schedule(self, every: str | float | None = None, **schedule: Any) -> None:
        """Dial on a schedule from now on: schedule(every="1h", **{"for": "5m"}), or
        at=["10m", "2h"]; each dial raises the link (on_up) and drops it after `for`."""
        if every is not None:
            schedule["every"] = every
        self.lab.run(self.lab.backend.set_schedule(self.name, schedule))

    def unschedule(self) -> None:
        """Dial on no schedule (until `Lab.reset()` brings the topology's back)."""
        self.lab.run(self.lab.backend.set_schedule(self.name, None))

    def impair(self, *, clear: bool = False, **settings: Any) -> dict[str, Any]:
        """Change the link's impairment (rate, delay, jitter, loss, drop_after, drop_at;
        docs/links.md) over what it has, or over nothing with `clear`."""
        return self.lab.impair(self.name, clear=clear, **settings)


class ClockHandle:
    def __init__(self, lab: Lab):
        self.lab = lab

    def advance(self, duration: str | float) -> int:
        seconds = parse_duration(duration)
        return int(self.lab.run(self.lab.backend.advance(seconds), timeout=600))

    def now(self) -> float:
        return float(self.lab.run(self.lab.backend.now()))


class Lab:
    """A running lab. Create with `Lab.up(...)`; stop with `down()` or a `with` block."""

    def __init__(
        self,
        topology: Topology,
        *,
        backend: str = "inprocess",
        source: Path | None = None,
        seed: int | None = None,
        **options: Any,
    ):
        if seed is not None:  # the run's seed, over the topology's `seed:`
            topology = topology.model_copy(update={"seed": seed})
        self.topology = topology
        self.source = source
        self._thread = _LoopThread(topology.name)
        cls = backend_class(backend)
        self.backend: Backend = cls(topology, **options)
        self.clock = ClockHandle(self)
        self._running = False
        self._lender: Any = None  # a LabPool's release while the lab is lent from one

    # lifecycle ---------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        topology: str | Path | Topology,
        *,
        backend: str = "inprocess",
        source: Path | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> Lab:
        """Bring `topology` (a file, or a model loaded from `source`) up on `backend`;
        `seed` replaces the topology's `seed:` (what every fault's chance is drawn from)."""
        if not isinstance(topology, Topology):
            source = Path(topology)
            topology = load(source).model
        lab = cls(topology, backend=backend, source=source, seed=seed, **options)
        try:
            lab.run(lab.backend.up(), timeout=300)
        except BaseException:
            # release what the backend took before it failed (state directory, files)
            with contextlib.suppress(Exception):
                lab.run(lab.backend.down(), timeout=60)
            lab._thread.stop()
            raise
        lab._running = True
        return lab

    def down(self) -> None:
        if self._running:
            self._running = False
            try:
                self.run(self.backend.down(), timeout=120)
            finally:
                self._thread.stop()

    def reset(self) -> None:
        """Back to the topology's initial state without recreating a host: queues,
        mailboxes, POP3 maildrops, the clock, links as declared, faults, DNS edits,
        greylist and retry memory, fetch journals and events. What a `with Lab.up(...)`
        block started with, in milliseconds (a real MTA's daemon is restarted)."""
        self.run(self.backend.reset(), timeout=120)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        """The end of a `with` block: the lab goes down, or, lent from a pool, goes back
        to it (reset before its next use)."""
        lender, self._lender = self._lender, None
        if lender is not None:
            lender(self)
        else:
            self.down()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        """Run `coro` on the lab's event loop and return its result (timeout None: wait
        as long as it takes); what works with the backend directly runs this way."""
        return self._thread.run(coro, timeout)

    # acting ----------------------------------------------------------------------------

    def send(
        self,
        node: str,
        *,
        mail_from: str,
        to: str | list[str],
        subject: str = DEFAULT_SUBJECT,
        body: str = DEFAULT_BODY,
        headers: dict[str, str] | None = None,
        via: str | None = None,
        raw: bytes | None = None,
    ) -> SubmitResult:
        """Submit a message from `node` over SMTP; returns the receiving MTA's replies."""
        rcpts = [to] if isinstance(to, str) else list(to)
        content = (
            raw
            if raw is not None
            else self.run(
                self.backend.message(
                    node, mail_from=mail_from, to=rcpts, subject=subject, body=body, headers=headers
                )
            )
        )
        return self.run(
            self.backend.send(node, mail_from=mail_from, to=rcpts, content=content, via=via)
        )

    def link(self, name: str) -> LinkHandle:
        if name not in self.topology.links:
            raise LabError(
                f"unknown link {name!r}; expected one of: {', '.join(self.topology.links)}"
            )
        return LinkHandle(self, name)

    def impair(self, name: str, *, clear: bool = False, **settings: Any) -> dict[str, Any]:
        """Change a link's or a network's impairment at run time (docs/links.md): e.g.
        `lab.impair("dialup", rate="33.6kbit", delay="150ms")`; returns what is in force.
        `Lab.reset()` puts back the topology's."""
        return dict(self.run(self.backend.impair(name, settings, clear=clear)))

    def flush(self, node: str) -> int:
        return int(self.run(self.backend.flush(node), timeout=600))

    def fetch(self, node: str) -> int:
        return int(self.run(self.backend.fetch(node), timeout=600))

    def settle(self) -> None:
        self.run(self.backend.settle(), timeout=600)

    def queue(self, node: str, *, settle: bool = True) -> list[dict[str, Any]]:
        """A node's queue once the work under way has finished (settle=False: right now)."""
        if settle:
            self.run(self.backend.settle(timeout=30.0), timeout=60)
        return [dict(entry) for entry in self.run(self.backend.queue(node))]

    def capture_queued(self, node: str) -> dict[str, bytes]:
        """Queue id -> content of every message `node` queues from now on (filled in as
        they are queued, DSNs included), for looking at what a hop really sent."""
        return self.run(self.backend.capture_queued(node))

    def mailbox(self, node: str, user: str) -> list[MailboxMessage]:
        items = self.run(self.backend.mailbox(node, user))
        return [
            MailboxMessage(
                i["id"],
                i["envelope_from"],
                i["raw"],
                email.message_from_string(i["raw"], policy=email.policy.default),
            )
            for i in items
        ]

    def status(self) -> dict[str, Any]:
        return self.run(self.backend.status())

    def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        self.run(self.backend.set_dns(name, rtype, values))

    def set_dns_fault(self, name: str, fault: str | None) -> None:
        self.run(self.backend.set_dns_fault(name, fault))

    def add_fault(self, node: str, **fault: Any) -> None:
        """Add a fault to `node`'s MTA (lab.topology.model.Fault: on, reply, times,
        from_/until, rate, chance, ...)."""
        self.run(self.backend.add_fault(node, fault))

    def clear_faults(self, node: str) -> int:
        """Forget the faults added to `node` at run time; how many there were."""
        return int(self.run(self.backend.clear_faults(node)))

    def add_dns_fault(self, name: str, fault: str, **rule: Any) -> None:
        """Make the lab DNS fail for `name` (a glob): servfail, timeout, nxdomain or
        refused, with from_/until, chance, type, times (lab.topology.model.DnsFaultRule)."""
        self.run(self.backend.add_dns_fault({"name": name, "fault": fault, **rule}))

    def clear_dns_faults(self) -> int:
        """Remove the lab DNS's fault rules added at run time; how many there were."""
        return int(self.run(self.backend.clear_dns_faults()))

    @property
    def seed(self) -> int:
        """The seed this run draws every chance from (the topology's, or its own)."""
        return int(self.backend.topology.seed or 0)

    # events and traces -----------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        return list(self.backend.events.events)

    def wait_for(
        self,
        kind: str | None = None,
        *,
        node: str | None = None,
        timeout: float = 10.0,
        since: int = 0,
        predicate: Any = None,
        **data: Any,
    ) -> Event:
        try:
            return self.run(
                self.backend.events.wait_for(
                    predicate, kind=kind, node=node, since=since, timeout=timeout, **data
                ),
                timeout=timeout + 5,
            )
        except TimeoutError:
            raise LabAssertionError(
                f"no {kind or 'event'} event{' on ' + node if node else ''} matching {data}"
                f" within {timeout}s\n--- last events ---\n{format_events(self.events[-30:])}"
            ) from None

    def trace(self, ref: str | SubmitResult) -> list[Event]:
        """Every event about one message, hop by hop. From a queue id (or a Message-ID),
        the hops are followed by the next hop's queue id (the `remote_id` a delivery
        records from the 250 reply, "queued as ..."), either way, by the Message-ID, and
        to the DSNs the message caused."""
        queue_id = ref.queue_id if isinstance(ref, SubmitResult) else ref
        events = self.events
        ids = {queue_id}
        message_ids = {queue_id} if queue_id.startswith("<") else set()
        while True:
            grown = set(ids)
            for e in events:
                kind, eid = e.kind, e.get("id")
                if kind == "queue.queued":
                    if eid in ids and e.get("message_id"):
                        message_ids.add(e.get("message_id"))
                    elif e.get("message_id") in message_ids:
                        grown.add(eid)
                elif kind == "delivery.result" and e.get("remote_id"):
                    if eid in ids:  # the next hop took it under this id
                        grown.add(e.get("remote_id"))
                    elif e.get("remote_id") in ids:  # the hop before
                        grown.add(eid)
                elif kind in ("dsn.sent", "dsn.double_bounce") and e.get("original_id") in ids:
                    grown.add(eid)  # DSNs about these messages belong to the trace too
            grown.discard(None)
            if grown == ids:
                break
            ids = grown
        return [
            e
            for e in events
            if e.get("id") in ids
            or e.get("original_id") in ids
            or (message_ids and e.get("message_id") in message_ids)
        ]

    def format_trace(self, ref: str | SubmitResult) -> str:
        return format_events(self.trace(ref))

    # assertions --------------------------------------------------------------------------

    def _explain(self, what: str, events: list[Event]) -> str:
        interesting = [
            e
            for e in events
            if e.kind.startswith(
                ("queue.", "delivery.result", "dsn.", "mailbox.", "policy.", "link.", "client.")
            )
        ]
        return f"{what}\n--- what happened ---\n{format_events(interesting[-40:]) or '(no events)'}"

    def assert_delivered(
        self,
        to: str,
        *,
        node: str | None = None,
        mailbox: str | None = None,
        envelope_from: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> MailboxMessage:
        """Wait until a message for `to` lands in a mailbox; check where and how."""

        def match(e: Event) -> bool:
            if e.kind != "mailbox.delivered":
                return False
            if (e.get("rcpt") or "").lower() != to.lower() and (
                e.get("address") or ""
            ).lower() != to.lower():
                return False
            if node and e.node != node:
                return False
            if mailbox and e.get("user") != mailbox:
                return False
            return envelope_from is None or e.get("envelope_from") == envelope_from

        # with `headers`, the first delivery to `to` that has them: another message for the
        # same address (an alias's) may land first, as a real MTA's parallel deliveries go
        deadline = time.monotonic() + timeout
        since, mismatch = 0, None
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            try:
                event = self.run(
                    self.backend.events.wait_for(match, since=since, timeout=left), left + 5
                )
            except TimeoutError:
                if mismatch is not None:
                    raise mismatch from None
                want = (
                    f"a delivery to {to}"
                    + (f" on {node}" if node else "")
                    + (f" in mailbox {mailbox}" if mailbox else "")
                    + (
                        f" with envelope sender {envelope_from}"
                        if envelope_from is not None
                        else ""
                    )
                )
                raise LabAssertionError(
                    self._explain(f"expected {want} within {timeout}s", self.events)
                ) from None
            since = event.seq
            found = next(
                m for m in self.mailbox(event.node, event.get("user")) if m.id == event.get("key")
            )
            mismatch = None
            for name, value in (headers or {}).items():
                actual = found[name]
                if actual is None or value.lower() not in actual.lower():
                    mismatch = LabAssertionError(
                        self._explain(
                            f"delivered to {to} on {event.node}, but header {name}: is"
                            f" {actual!r}, expected it to contain {value!r}",
                            self.events,
                        )
                    )
                    break
            if mismatch is None:
                return found

    def assert_not_delivered(
        self, to: str, *, node: str | None = None, mailbox: str | None = None
    ) -> None:
        self.settle()
        for e in self.events:
            if (
                e.kind == "mailbox.delivered"
                and to.lower() in ((e.get("rcpt") or "").lower(), (e.get("address") or "").lower())
                and (node is None or e.node == node)
                and (mailbox is None or e.get("user") == mailbox)
            ):
                raise LabAssertionError(
                    self._explain(
                        f"expected no delivery to {to}, but it was delivered on {e.node}",
                        self.events,
                    )
                )

    def assert_queued(
        self, on: str, *, to: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The node's queue holds a deferred message (for `to`, if given)."""

        def match(e: Event) -> bool:
            return (
                e.kind == "queue.deferred"
                and e.node == on
                and (to is None or to in e.get("recipients", []))
            )

        with contextlib.suppress(TimeoutError):
            self.run(self.backend.events.wait_for(match, timeout=timeout), timeout + 5)
        entries = [q for q in self.queue(on) if to is None or to in q["recipients"]]
        if not entries:
            raise LabAssertionError(
                self._explain(
                    f"expected a message{' for ' + to if to else ''} queued on {on}; the queue is"
                    f" {self.queue(on) or 'empty'}",
                    self.events,
                )
            )
        return entries[0]

    def assert_bounced(
        self,
        *,
        recipient: str | None = None,
        to: str | None = None,
        status: str | None = None,
        by: str | None = None,
        timeout: float = 10.0,
    ) -> Event:
        """A DSN was sent for `recipient` (to the envelope sender `to`) with `status`."""

        def match(e: Event) -> bool:
            if e.kind != "dsn.sent" or e.get("action") != "failed":
                return False
            if by and e.node != by:
                return False
            if to and e.get("to", "").lower() != to.lower():
                return False
            if recipient and recipient.lower() not in [r.lower() for r in e.get("recipients", [])]:
                return False
            return status is None or status in e.get("status", [])

        try:
            return self.run(self.backend.events.wait_for(match, timeout=timeout), timeout + 5)
        except TimeoutError:
            want = (
                "a bounce"
                + (f" for {recipient}" if recipient else "")
                + (f" to {to}" if to else "")
                + (f" with status {status}" if status else "")
                + (f" from {by}" if by else "")
            )
            raise LabAssertionError(
                self._explain(f"expected {want} within {timeout}s", self.events)
            ) from None
