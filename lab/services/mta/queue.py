"""The MTA's queue: every message it has said 250 for, until it is delivered or bounced.

What it owns: a directory per node. Each message is one file, `ID.msg`: a first line
holding the envelope as JSON (sender, each recipient with its state and last reply, the
result of every delivery attempt), then the message as received, with our Received
header. It is written under its final name (its first line records the length, so a
file cut short by a crash is known on `load`), fsync'd, and the directory fsync'd before
the SMTP server answers 250: a crash after 250 loses nothing, and a restarted node finds
its queue as it was (`load`). The host's disk worker (lab.services.diskio: a thread, or
the lab's disk process) does the writing and commits the directory once for the
messages that arrive together. Later changes of
state (an attempt that deferred, a bounce sent) go to `ID.json` beside it, written to a
temporary name and renamed, which overrides the first line; they and the removal of a
delivered message go through the same worker in order, and nobody waits for them: if a
crash forgets one, the message is tried again, never lost. One state write per message
is on its way at a time; a newer state asked for meanwhile replaces any older one that
waits (a link that flaps defers the same messages again and again). A message is removed as soon
as the next hop has said 250 for it (delivery finishes each message on its own reply,
not at the end of a run), and the removals that reach the disk worker together share
one directory fsync: a crash repeats only what was in flight (docs/architecture.md).

The retry schedule follows RFC 5321 section 4.5.4.1: retry at intervals (30 minutes by
default), warn the sender after 4 hours, give up after 5 days. The schedule is the
node's `retry` setting, run on the lab clock.

A message leaves the queue (both files removed) only when every recipient is final:
delivered, or bounced with a DSN queued to the sender (the states and their changes are
the table in transitions.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from lab.services.diskio import DiskWorker
from lab.services.diskjobs import create_file, empty_directory, replace_file, retire
from lab.services.mta.transitions import (
    DELIVERED,
    DSN_SENT,
    FAILED,
    PENDING,
    WAITING,
)


@dataclass
class Recipient:
    address: str  # where it goes now (after alias expansion)
    original: str  # what the envelope said
    kind: str = "remote"  # local | mailbox | remote
    target: str = ""  # local user or maildrop, for local kinds
    state: str = PENDING  # changed only through transitions.move
    reply: str = ""  # last reply (or local result)
    status: str = ""  # enhanced status code of the last result
    remote_mta: str = ""
    notify: list[str] = field(default_factory=list)  # DSN NOTIFY

    @property
    def pending(self) -> bool:
        """Still to be tried: pending, or deferred."""
        return self.state in WAITING

    @property
    def local(self) -> bool:
        """Delivered into a mailbox on this host, not handed to another."""
        return self.kind in ("local", "mailbox")


@dataclass
class Attempt:
    time: float
    hop: str
    result: str  # delivered | deferred | failed
    reply: str
    recipients: list[str]


@dataclass
class QueuedMessage:
    id: str
    envelope_from: str  # '' for the null sender
    recipients: list[Recipient]
    received: float  # lab time of acceptance
    client: str = ""  # lab address of the client that handed it over
    helo: str = ""
    size: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: float = 0.0
    warned: bool = False
    dsn_ret: str = ""  # DSN RET=FULL|HDRS
    envid: str = ""
    message_id: str = ""  # the Message-ID header, for following it across hosts

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.pending]

    @property
    def done(self) -> bool:
        return not self.pending

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueuedMessage:
        data = dict(data)
        data["recipients"] = [Recipient(**_recipient(r)) for r in data["recipients"]]
        data["attempts"] = [Attempt(**a) for a in data["attempts"]]
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "envelope_from": self.envelope_from,
            "recipients": [r.address for r in self.pending],
            "attempts": len(self.attempts),
            "received": self.received,
            "next_attempt": self.next_attempt,
            "last_reply": self.attempts[-1].reply if self.attempts else "",
        }


def _recipient(data: dict[str, Any]) -> dict[str, Any]:
    """A recipient as a queue file records it; files written before the DSN was a state
    of its own say `dsn_sent: true` beside `failed`."""
    if "dsn_sent" in data:
        data = dict(data)
        if data.pop("dsn_sent") and data.get("state") == FAILED:
            data["state"] = DSN_SENT
    return data


def _state(message: QueuedMessage, *, length: int | None = None) -> bytes:
    """The message's state as one line of JSON (orjson writes dataclasses directly), with
    the content's length added for the head of a `.msg` file."""
    data = orjson.dumps(message)
    if length is None:
        return data
    return data[:-1] + b',"length":%d}' % length


_IDS = random.Random()  # its own generator (seeded from the system's), not the shared one
# a test framework may reseed: ids must never repeat because of that


def new_id() -> str:
    """A queue id: 40 random bits, as ten hex digits (not a system call per message and
    hop, as secrets would make)."""
    return f"{_IDS.getrandbits(40):010X}"


def _in_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Queue:
    def __init__(self, directory: Path, *, durable: bool = True, disk: DiskWorker | None = None):
        self.dir = directory
        # made with the first message (by the disk worker): a lab of a thousand MTAs
        # that carry no mail makes no queue directory
        self._made = self.dir.is_dir()
        self.durable = durable
        self.messages: dict[str, QueuedMessage] = {}
        self._dir_fd: int | None = None
        self._saved: set[str] = set()  # ids with a state file beside them
        self._unsaved: dict[str, bytes] = {}  # id -> newest state, waiting for the one
        self._writing: set[str] = set()  # ids whose state write is on its way
        # the disk worker: durable writes in groups, removals and state updates in order
        self.disk = disk or DiskWorker(f"queue:{directory}")

    def load(self) -> list[QueuedMessage]:
        """Read the queue from disk (after a restart); drop half-written leftovers."""
        if not self.dir.is_dir():
            return []
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("*.msg")):
            with path.open("rb") as f:
                first = f.readline()
                try:
                    head = json.loads(first)
                except ValueError:
                    head = None
            if head is None or path.stat().st_size != len(first) + head.pop("length", -1):
                path.unlink()  # cut short by a crash before it was acknowledged
                continue
            state = path.with_suffix(".json")
            if state.exists():
                self._saved.add(path.stem)
            data = json.loads(state.read_bytes()) if state.exists() else head
            data.pop("length", None)
            qm = QueuedMessage.from_json(data)
            self.messages[qm.id] = qm
        for state in self.dir.glob("*.json"):
            if state.stem not in self.messages:
                state.unlink()  # the message itself is gone: a removal half done
        return list(self.messages.values())

    def put(self, content: bytes, message: QueuedMessage) -> None:
        """Store a new message durably. Only after this returns may the server say 250."""
        self.write(content, message)
        self.messages[message.id] = message

    async def put_async(self, content: bytes, message: QueuedMessage) -> None:
        """`put` for the event loop: the file is written and fsync'd by the disk worker,
        and the directory fsync'd there with the others of its group. Returns (and the
        server may say 250) once both are on disk."""
        self._made = True  # (the write makes it)
        await self.disk.commit(
            partial(
                create_file, self._path(message.id), self._file(content, message), self.durable
            ),
            self.dir if self.durable else None,
        )
        self.messages[message.id] = message

    def write(self, content: bytes, message: QueuedMessage) -> None:
        """The disk part of `put`: the message file, then the directory, fsync'd."""
        self.write_file(content, message)
        if self.durable:
            self._sync_dir()

    def _path(self, message_id: str, suffix: str = ".msg") -> str:
        return f"{self.dir}/{message_id}{suffix}"

    @staticmethod
    def _file(content: bytes, message: QueuedMessage) -> bytes:
        """The message file: a first line records the content's length, so a file cut
        short by a crash is recognised on `load` (and was never acknowledged)."""
        return _state(message, length=len(content)) + b"\n" + content

    def write_file(self, content: bytes, message: QueuedMessage) -> None:
        """One new file, written under its final name and fsync'd (the directory is the
        caller's)."""
        self._made = True
        create_file(self._path(message.id), self._file(content, message), self.durable)

    def _sync_dir(self) -> None:
        if self._dir_fd is None:  # (the message file's write made it)
            self._dir_fd = os.open(self.dir, os.O_RDONLY)
        os.fsync(self._dir_fd)

    def close(self) -> None:
        """Finish the disk work asked for so far (removals, state updates)."""
        self.disk.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def save(self, message: QueuedMessage) -> None:
        """Record a change of state (an attempt deferred, a bounce sent). The state is
        taken now and written by the disk worker, in order with the other writes; if a
        crash comes first, the message itself is still there and is tried again. One
        state write per message is on its way at a time: a newer state asked for
        meanwhile replaces any other that waits, and goes when that write is done (a
        link that flaps defers the same messages again and again)."""
        self._saved.add(message.id)
        self._made = True
        self._unsaved[message.id] = _state(message)
        if message.id not in self._writing:
            self._write_state(message.id)

    def _write_state(self, message_id: str) -> None:
        data = self._unsaved.pop(message_id, None)
        if data is None:
            return
        write = partial(replace_file, self._path(message_id, ".json"), data, self.durable)
        directory = self.dir if self.durable else None
        if not _in_a_loop():  # (nothing to hear the end in: written in order, as asked)
            self.disk.later(write, directory)
            return
        self._writing.add(message_id)
        self.disk.later(write, directory, then=lambda: self._state_written(message_id))

    def _state_written(self, message_id: str) -> None:
        self._writing.discard(message_id)
        if message_id in self._unsaved:
            self._write_state(message_id)

    def content(self, message_id: str) -> bytes:
        data = (self.dir / f"{message_id}.msg").read_bytes()
        return data[data.index(b"\n") + 1 :]

    def remove(self, message_id: str) -> None:
        """The message is finished: it leaves the queue now, its files a moment later (by
        the disk worker, the directory fsync'd with the other removals of its group; a
        crash before that delivers it again, it never loses it)."""
        doomed = [self.dir / f"{message_id}.msg"]  # first: a state file left alone is
        if message_id in self._saved:  # dropped by `load`, a message left alone is sent
            doomed.append(self.dir / f"{message_id}.json")
            self._saved.discard(message_id)
        self._unsaved.pop(message_id, None)
        self.messages.pop(message_id, None)

        self.disk.later(partial(retire, *map(str, doomed)), self.dir if self.durable else None)

    def clear(self) -> None:
        """Empty the queue (`Lab.reset()`: nothing is under way then). It is empty now;
        its files go by the disk worker, after the work asked of it so far (a state
        write still waiting is dropped) and before any new message's, so the event loop
        never waits for a disk busy with fsyncs."""
        self.messages.clear()
        self._saved.clear()
        self._unsaved.clear()
        self.disk.later(
            partial(empty_directory, str(self.dir)),
            self.dir if self.durable and self._made else None,
            fence=True,
        )

    def __len__(self) -> int:
        return len(self.messages)

    def list(self) -> list[QueuedMessage]:
        return sorted(self.messages.values(), key=lambda m: (m.received, m.id))


__all__ = [
    "DELIVERED",
    "DSN_SENT",
    "FAILED",
    "PENDING",
    "Attempt",
    "Queue",
    "QueuedMessage",
    "Recipient",
    "new_id",
]
