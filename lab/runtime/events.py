"""Structured events: what every service reports, and what assertions wait on.

An event is a kind ("smtp.reply", "queue.queued", "delivery.attempt", "dsn.sent",
"mailbox.delivered", "dns.query", "link.down", ...), the node that emitted it, the lab
time, and data. The bus keeps them in order, writes them to a JSON-lines file when the
lab has a state directory, and wakes whoever waits for a matching one. Nothing in maillab
sleeps to wait for mail: it waits for an event.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

import orjson

Predicate = Callable[["Event"], bool]
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


def json_line(data: dict[str, Any]) -> bytes:
    """One JSON line, for the event log and the agents' stream (orjson: a busy lab
    writes dozens of events per message)."""
    return orjson.dumps(data, default=str, option=_OPTIONS)


@dataclass(frozen=True, slots=True)
class Event:
    """(Slots: a busy lab keeps dozens of these per message, and without an instance dict
    each is a third of the size and one object less for the garbage collector to visit.)"""

    seq: int
    time: float
    node: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "node": self.node,
            "kind": self.kind,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """The event `to_json` made (as the control channel and the events log carry it)."""
        return cls(data["seq"], data["time"], data["node"], data["kind"], data.get("data", {}))

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.data.items() if k not in ("raw",))
        return f"#{self.seq} {self.node:<10} {self.kind:<22} {detail}"


# an event as the history keeps it: (seq, time, node, kind), and its data beside it
Head = tuple[int, float, str, str]


def _seq(head: Head) -> int:
    return head[0]


class History(Sequence[Event]):
    """The bus's events so far, in order, read as Events. They are kept as tuples of
    strings and numbers, their data (dicts of the same) in a list beside them: a lab
    keeps dozens of events per message for its whole life, and the garbage collector
    stops visiting such tuples and dicts (an Event, like any instance, and a tuple that
    holds a dict, it visits at every full collection: in a busy lab those came every
    few thousand messages, each longer than the last)."""

    __slots__ = ("_data", "_heads")

    def __init__(self, heads: list[Head], data: list[dict[str, Any]]):
        self._heads = heads
        self._data = data

    def __len__(self) -> int:
        return len(self._heads)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [
                Event(*h, d) for h, d in zip(self._heads[index], self._data[index], strict=True)
            ]
        return Event(*self._heads[index], self._data[index])

    def __iter__(self) -> Iterator[Event]:
        for head, data in zip(self._heads, self._data, strict=True):
            yield Event(*head, data)

    def clear(self) -> None:
        self._heads.clear()
        self._data.clear()

    def __repr__(self) -> str:
        return f"<History of {len(self._heads)} events>"


class EventBus:
    def __init__(self, clock: Callable[[], float], log_path: Path | None = None):
        self._clock = clock
        self._seq = itertools.count(1)
        self._heads: list[Head] = []
        self._data: list[dict[str, Any]] = []
        self.events = History(self._heads, self._data)
        self._waiters: list[tuple[asyncio.Future[Event], Predicate]] = []
        self._log: IO[bytes] | None = None
        self._listeners: list[Callable[[Event], None]] = []
        self._flush_pending = False
        self._unwritten: list[Event] = []  # recorded, not yet in the log file
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("ab")

    def bind(self) -> None:
        """Kept for backends that attach the bus to their loop before use."""

    def _schedule_flush(self) -> None:
        """Write the events recorded since the last time to the log a moment later, once
        for a burst of events (a busy lab records dozens per message)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(0.1, self.flush)

    def flush(self) -> None:
        """Write the events not yet in the log file, and flush it."""
        self._flush_pending = False
        pending, self._unwritten = self._unwritten, []
        if self._log is not None and pending:
            # a line at a time into the file's buffer: each line's bytes are freed before
            # the next is made (a burst's lines all kept, then joined, cost five times
            # as much), and orjson writes the Event itself (as to_json has it)
            write = self._log.write
            for event in pending:
                write(orjson.dumps(event, default=str, option=_OPTIONS))
            self._log.flush()

    def close(self) -> None:
        self.flush()
        if self._log is not None:
            self._log.close()
            self._log = None

    def reset(self) -> None:
        """Forget the events so far (`Lab.reset()`): the list, and the log file, start
        again. Numbers go on growing, so a reader that asks for what came after the
        event it saw last (`since`) still sees every new one; listeners and waiters stay."""
        self._unwritten = []
        self.events.clear()
        if self._log is not None:
            self._log.seek(0)
            self._log.truncate()

    def listen(self, callback: Callable[[Event], None]) -> None:
        self._listeners.append(callback)

    def emit(self, node: str, kind: str, **data: Any) -> Event:
        return self.record(self._clock(), node, kind, data)

    def emit_data(self, node: str, kind: str, data: dict[str, Any]) -> Event:
        """`emit` with the data as a dict (a host's own emit passes its keywords on)."""
        return self.record(self._clock(), node, kind, data)

    def record(self, time: float, node: str, kind: str, data: dict[str, Any]) -> Event:
        """Add an event that happened at lab time `time` (a host in a container saw it)."""
        seq = next(self._seq)
        self._heads.append((seq, time, node, kind))
        self._data.append(data)
        event = Event(seq, time, node, kind, data)
        if self._log is not None:
            self._unwritten.append(event)
            if not self._flush_pending:
                self._schedule_flush()
        for listener in self._listeners:
            listener(event)
        if self._waiters:
            for waiter in list(self._waiters):
                future, match = waiter
                if not future.done() and match(event):
                    future.set_result(event)
                    self._waiters.remove(waiter)
        return event

    def find(
        self,
        predicate: Predicate | None = None,
        *,
        kind: str | None = None,
        node: str | None = None,
        since: int = 0,
        **data: Any,
    ) -> list[Event]:
        heads = self._heads
        start = bisect.bisect_right(heads, since, key=_seq) if since else 0
        found = []
        for index in range(start, len(heads)):
            head = heads[index]
            if (kind is None or _kind_matches(head[3], kind)) and (node is None or head[2] == node):
                event = Event(*head, self._data[index])
                if _matches(event, predicate, None, None, data):
                    found.append(event)
        return found

    async def wait_for(
        self,
        predicate: Predicate | None = None,
        *,
        kind: str | None = None,
        node: str | None = None,
        since: int = 0,
        timeout: float = 10.0,
        **data: Any,
    ) -> Event:
        """The first event (after `since`) that matches; TimeoutError after `timeout`."""
        found = self.find(predicate, kind=kind, node=node, since=since, **data)
        if found:
            return found[0]
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (future, lambda e: _matches(e, predicate, kind, node, data))
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _matches(
    event: Event,
    predicate: Predicate | None,
    kind: str | None,
    node: str | None,
    data: dict[str, Any],
) -> bool:
    if kind is not None and not _kind_matches(event.kind, kind):
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


def _kind_matches(have: str, kind: str) -> bool:
    return have == kind or (kind.endswith(".*") and have.startswith(kind[:-1]))


def format_events(events: Iterable[Event]) -> str:
    """One line per event (str(Event)): how assertions, checks and `maillab events` show them."""
    return "\n".join(str(e) for e in events)
