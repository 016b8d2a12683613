"""The journal of UIDs a fetch job has handed to the local MTA (see lab.services.fetch)."""

from __future__ import annotations

import os
from pathlib import Path


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
