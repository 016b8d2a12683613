"""Structured events: what every service reports, and what assertions wait on.

An event is a kind ("smtp.reply", "queue.queued", "delivery.attempt", "dsn.sent",
"mailbox.delivered", "dns.query", "link.down", ...), the node that emitted it, the lab
time, and data. The bus keeps them in order, writes them to a JSON-lines file when the
lab has a state directory, and wakes whoever waits for a matching one. Nothing in maillab
sleeps to wait for mail: it waits for an event.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

Predicate = Callable[["Event"], bool]


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    node: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.data.items() if k not in ("raw",))
        return f"#{self.seq} {self.node:<10} {self.kind:<22} {detail}"


class EventBus:
    def __init__(self, clock: Callable[[], float], log_path: Path | None = None):
        self._clock = clock
        self._seq = itertools.count(1)
        self.events: list[Event] = []
        self._changed: asyncio.Condition | None = None
        self._log: IO[str] | None = None
        self._listeners: list[Callable[[Event], None]] = []
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("a", encoding="utf-8")

    def bind(self) -> None:
        """Attach to the running loop (waiters use it)."""
        self._changed = asyncio.Condition()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def listen(self, callback: Callable[[Event], None]) -> None:
        self._listeners.append(callback)

    def emit(self, node: str, kind: str, **data: Any) -> Event:
        event = Event(next(self._seq), self._clock(), node, kind, data)
        self.events.append(event)
        if self._log is not None:
            self._log.write(json.dumps(event.to_json(), default=str) + "\n")
            self._log.flush()
        for listener in self._listeners:
            listener(event)
        if self._changed is not None:
            cond = self._changed

            async def notify() -> None:
                async with cond:
                    cond.notify_all()

            try:
                asyncio.get_running_loop().create_task(notify())
            except RuntimeError:
                pass
        return event

    def find(self, predicate: Predicate | None = None, *, kind: str | None = None,
             node: str | None = None, since: int = 0, **data: Any) -> list[Event]:
        return [e for e in self.events if e.seq > since and _matches(e, predicate, kind, node, data)]

    async def wait_for(self, predicate: Predicate | None = None, *, kind: str | None = None,
                       node: str | None = None, since: int = 0, timeout: float = 10.0,
                       **data: Any) -> Event:
        """The first event (after `since`) that matches; TimeoutError after `timeout`."""
        assert self._changed is not None, "the event bus is not bound to a loop"

        def first() -> Event | None:
            found = self.find(predicate, kind=kind, node=node, since=since, **data)
            return found[0] if found else None

        async def wait() -> Event:
            assert self._changed is not None
            async with self._changed:
                while (event := first()) is None:
                    await self._changed.wait()
                return event

        return await asyncio.wait_for(wait(), timeout)


def _matches(event: Event, predicate: Predicate | None, kind: str | None, node: str | None,
             data: dict[str, Any]) -> bool:
    if kind is not None and not (event.kind == kind or (kind.endswith(".*") and event.kind.startswith(kind[:-1]))):
        return False
    if node is not None and event.node != node:
        return False
    for key, want in data.items():
        have = event.data.get(key)
        if isinstance(have, list | tuple | set) and not isinstance(want, list | tuple | set):
            if want not in have:
                return False
        elif have != want:
            return False
    return predicate is None or predicate(event)


def format_events(events: Iterable[Event]) -> str:
    return "\n".join(str(e) for e in events)
