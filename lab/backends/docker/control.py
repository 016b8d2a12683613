"""The lab's end of one agent's control socket: a host of a Docker lab, as the common code
of lab.backends.base acts on it (`HostHandle`), plus what only the Docker backend asks
an agent (start, settle, the clock, stop).

One connection per host carries requests and their replies, matched by id, and every
event the host emits (lab.protocols.wire), so the lab's event log and traces hold the
containers' events in the order they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.protocols import wire
from lab.protocols.smtp import SubmitResult
from lab.protocols.wire import AgentOp, MailboxEntry, QueueEntry
from lab.runtime.events import EventBus

LONG = 600.0  # seconds: a flush or fetch may have much to do


class HostProxy:
    """One agent's host: requests, replies and events over its control socket."""

    def __init__(self, name: str, path: Path, events: EventBus):
        self.name = name
        self.path = path
        self.events = events
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = 0
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.captured: dict[str, bytes] = {}

    # the connection ------------------------------------------------------------------------

    async def connect(self, timeout: float, alive: Callable[[], Awaitable[bool]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        look = loop.time() + 0.5  # whether the container still runs: asked twice a second
        while True:
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(
                    str(self.path), limit=wire.LINE_LIMIT
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                now = loop.time()
                if now > deadline or (now >= look and not await alive()):
                    raise LabError(
                        f"node {self.name}: its agent did not open {self.path}"
                    ) from None
                if now >= look:
                    look = now + 0.5
                await asyncio.sleep(0.02)
        if self.closed:  # closed while it connected: the lab is going down
            self.writer.close()
            raise LabError(f"node {self.name}: the lab went down while its agent answered")
        self.task = loop.create_task(self._read(), name=f"control:{self.name}")

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while line := await self.reader.readline():
                message = wire.decode(line)
                if "event" in message:
                    event = wire.decode_event(message["event"])
                    self.events.record(event.time, event.node, event.kind, event.data)
                elif "captured" in message:
                    captured = message["captured"]
                    self.captured[str(captured["id"])] = wire.decode_bytes(captured["content"])
                else:
                    self._answered(message)
        except (OSError, LabError, KeyError, ValueError):
            pass
        finally:
            self.closed = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(LabError(f"node {self.name}: its agent went away"))
            self.pending.clear()

    def _answered(self, reply: Mapping[str, Any]) -> None:
        future = self.pending.pop(reply.get("id", -1), None)
        if future is None or future.done():
            return
        try:
            future.set_result(wire.result_of(reply, self.name))
        except LabError as exc:
            future.set_exception(exc)

    async def call(
        self, op: AgentOp, args: Mapping[str, Any] | None = None, *, timeout: float | None = 120.0
    ) -> Any:
        if self.writer is None or self.closed:
            raise LabError(f"node {self.name}: not connected")
        self.ids += 1
        rid = self.ids
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        self.writer.write(wire.request(op, args, rid))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise LabError(
                f"node {self.name}: no answer to {op.value!r} within {timeout}s"
            ) from None
        finally:
            self.pending.pop(rid, None)

    async def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
        if self.task is not None:
            self.task.cancel()

    # what only the Docker backend asks ---------------------------------------------------

    async def start(self, offset: float, epoch: float, timeout: float) -> dict[str, Any]:
        """Start the host's services at lab time real + `offset`, for a lab that started
        at `epoch`; what they answered."""
        args = {"offset": offset, "epoch": epoch}
        found: dict[str, Any] = await self.call(AgentOp.START, args, timeout=timeout)
        return found

    async def run_queues(self) -> None:
        """Let the host's queue runs begin (every host of the lab listens by now)."""
        await self.call(AgentOp.RUN_QUEUES)

    async def settled(self, timeout: float, quick: bool = False) -> tuple[int, bool]:
        """Wait until the host has no work under way (or `timeout`); (events, idle).
        `quick`: a real MTA's log counts as quiet sooner (its awaited lines are in)."""
        args: dict[str, Any] = {"timeout": timeout, "quick": quick}
        found = await self.call(AgentOp.SETTLE, args, timeout=timeout + 5)
        return int(found["events"]), bool(found["idle"])

    async def next_timer(self) -> float | None:
        found = await self.call(AgentOp.CLOCK_NEXT)
        return None if found is None else float(found)

    async def advance_to(self, when: float, timeout: float | None = 120.0) -> int:
        return int(await self.call(AgentOp.CLOCK_ADVANCE_TO, {"when": when}, timeout=timeout))

    async def stop(self) -> None:
        await self.call(AgentOp.STOP, timeout=10)

    async def reset(self, epoch: float | None = None) -> None:
        """The host back to its initial state, for a lab that starts again at `epoch`; a
        real MTA's daemon restarts meanwhile."""
        await self.call(AgentOp.RESET, {"epoch": epoch}, timeout=120)

    # the host's handle (lab.backends.base.HostHandle) ---------------------------------------

    async def submit(
        self, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        args = {
            "mail_from": mail_from,
            "to": list(to),
            "content": wire.encode_bytes(content),
            "via": via,
        }
        return wire.decode_submit(await self.call(AgentOp.SUBMIT, args))

    async def set_link(self, link: str, state: str) -> int:
        return int(await self.call(AgentOp.LINK, {"link": link, "state": state}))

    async def link_closing(self, link: str) -> None:
        await self.call(AgentOp.LINK_CLOSING, {"link": link})

    async def cut_served(self, address: str) -> int:
        return int(await self.call(AgentOp.CUT_SERVED, {"address": address}))

    async def flush(self) -> int:
        return int(await self.call(AgentOp.FLUSH, timeout=LONG))

    async def fetch(self) -> int:
        return int(await self.call(AgentOp.FETCH, timeout=LONG))

    async def queue(self) -> list[QueueEntry]:
        return wire.decode_queue(await self.call(AgentOp.QUEUE))

    async def queue_content(self, queue_id: str) -> bytes:
        return wire.decode_bytes(await self.call(AgentOp.QUEUE_CONTENT, {"queue_id": queue_id}))

    async def capture(self) -> dict[str, bytes]:
        """The host sends each message it queues from now on, before its queue.queued."""
        await self.call(AgentOp.CAPTURE)
        return self.captured

    async def mailbox(self, user: str) -> list[MailboxEntry]:
        return wire.decode_mailbox(await self.call(AgentOp.MAILBOX, {"user": user}))

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        await self.call(AgentOp.DNS_SET, {"name": name, "rtype": rtype, "values": values})

    async def set_dns_fault(self, name: str, fault: str | None) -> None:
        await self.call(AgentOp.DNS_FAULT, {"name": name, "fault": fault})

    async def set_dns_fault_rules(self, rules: list[dict[str, Any]]) -> None:
        await self.call(AgentOp.DNS_FAULT_RULES, {"rules": rules})

    async def add_fault(self, fault: dict[str, Any]) -> None:
        await self.call(AgentOp.FAULT_ADD, {"fault": fault})

    async def clear_faults(self) -> int:
        return int(await self.call(AgentOp.FAULT_CLEAR))

    async def pace(self, networks: dict[str, Any], links: list[Any], on_clock: list[str]) -> None:
        await self.call(AgentOp.PACE, {"networks": networks, "links": links, "on_clock": on_clock})

    async def arm_drops(
        self, link: str, drop_after: int | None = None, drop_at: float | None = None
    ) -> None:
        args = {"link": link, "drop_after": drop_after, "drop_at": drop_at}
        await self.call(AgentOp.DROPS, args)
