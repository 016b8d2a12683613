"""The MTA's queue: every message it has said 250 for, until it is delivered or bounced.

What it owns: a directory per node. Each message is one file, `ID.msg`: a first line
holding the envelope as JSON (sender, each recipient with its state and last reply, the
result of every delivery attempt), then the message as received, with our Received
header. It is written to a temporary name, fsync'd, renamed into place, and the
directory fsync'd before the SMTP server answers 250: a crash after 250 loses nothing,
and a restarted node finds its queue as it was (`load`). Later changes of state (an
attempt that deferred, a bounce sent) go to `ID.json` beside it, written the same way,
which overrides the first line. Removing a delivered message needs no fsync: if a crash
forgets the removal, the message is delivered again, never lost.

The retry schedule follows RFC 5321 section 4.5.4.1: retry at intervals (30 minutes by
default), warn the sender after 4 hours, give up after 5 days. The schedule is the
node's `retry` setting, run on the lab clock.

A message leaves the queue (both files removed) only when every recipient is final:
delivered, or bounced with a DSN queued to the sender.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass
class Recipient:
    address: str  # where it goes now (after alias expansion)
    original: str  # what the envelope said
    kind: str = "remote"  # local | mailbox | remote
    target: str = ""  # local user or maildrop, for local kinds
    state: str = PENDING
    reply: str = ""  # last reply (or local result)
    status: str = ""  # enhanced status code of the last result
    remote_mta: str = ""
    notify: list[str] = field(default_factory=list)  # DSN NOTIFY
    dsn_sent: bool = False

    @property
    def pending(self) -> bool:
        return self.state == PENDING


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
        data["recipients"] = [Recipient(**r) for r in data["recipients"]]
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


def new_id() -> str:
    return secrets.token_hex(5).upper()


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Queue:
    def __init__(self, directory: Path, *, durable: bool = True):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self.messages: dict[str, QueuedMessage] = {}
        self._dir_fd: int | None = None
        self._saved: set[str] = set()  # ids with a state file beside them
        # files of finished messages, removed by a worker thread off the event loop
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._remover: threading.Thread | None = None

    def load(self) -> list[QueuedMessage]:
        """Read the queue from disk (after a restart); drop half-written leftovers."""
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

    def write(self, content: bytes, message: QueuedMessage) -> None:
        """The disk part of `put` (safe to run in a worker thread): one new file, written
        under its final name, fsync'd, then the directory fsync'd. The first line records
        the content's length, so a file cut short by a crash is recognised on `load`
        (and was never acknowledged)."""
        state = message.to_json()
        state["length"] = len(content)
        head = json.dumps(state, separators=(",", ":")).encode() + b"\n"
        path = self.dir / f"{message.id}.msg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(head + content)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.durable:
            self._sync_dir()

    def _sync_dir(self) -> None:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.dir, os.O_RDONLY)
        os.fsync(self._dir_fd)

    def close(self) -> None:
        if self._remover is not None:  # the removals asked for so far are done
            self._doomed.put(None)
            self._remover.join()
            self._remover = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def save(self, message: QueuedMessage) -> None:
        """Record a change of state (an attempt deferred, a bounce sent)."""
        data = json.dumps(message.to_json(), separators=(",", ":")).encode()
        path = self.dir / f"{message.id}.json"
        self._saved.add(message.id)
        if self.durable:
            _write_durably(path, data)
            self._sync_dir()
        else:
            path.write_bytes(data)

    def content(self, message_id: str) -> bytes:
        data = (self.dir / f"{message_id}.msg").read_bytes()
        return data[data.index(b"\n") + 1 :]

    def remove(self, message_id: str) -> None:
        """The message is finished: it leaves the queue now, its files a moment later (in
        a worker thread; a crash before that delivers it again, it never loses it)."""
        self._doom(self.dir / f"{message_id}.msg")  # first: a state file left alone is
        if message_id in self._saved:  # dropped by `load`, a message left alone is sent
            self._doom(self.dir / f"{message_id}.json")
            self._saved.discard(message_id)
        self.messages.pop(message_id, None)

    def _doom(self, path: Path) -> None:
        if self._remover is None:
            self._remover = threading.Thread(
                target=self._remove_files, name=f"queue-remover:{self.dir}", daemon=True
            )
            self._remover.start()
        self._doomed.put(path)

    def _remove_files(self) -> None:
        while (path := self._doomed.get()) is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.messages)

    def list(self) -> list[QueuedMessage]:
        return sorted(self.messages.values(), key=lambda m: (m.received, m.id))
