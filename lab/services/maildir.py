"""Mailboxes on disk in Maildir form, written durably.

Python's `mailbox.Maildir` reads and writes this format but never calls fsync; a local
delivery must be on disk before the queue lets go of its copy, so writing is done here
(tmp/, fsync, rename into new/, fsync the directory; from the event loop by the host's
disk worker, lab.services.diskio, with new/ committed once for a group) and reading goes through
`mailbox.Maildir`. The POP3 server reads and deletes through the same class.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

from lab.services.diskio import DiskWorker
from lab.services.diskjobs import fsync_directory, maildir_deliver


class MailStore:
    """The Maildirs of one host: STATE/mail/USER/{tmp,new,cur}."""

    def __init__(self, root: Path, *, durable: bool = True, lazy: bool = False):
        self.root = root
        self.durable = durable
        if not lazy:  # lazy: made with the first Maildir (a host that gets no mail has none)
            self.root.mkdir(parents=True, exist_ok=True)
        # (uid, gid) the Maildirs and messages are given to, when a real POP3 server that
        # runs as that user reads them (Dovecot on the Docker backend); None: the writer's
        self.owner: tuple[int, int] | None = None
        self._new: dict[str, Path] = {}  # user -> their new/ directory

    def path(self, user: str) -> Path:
        safe = user.replace("/", "_")
        return self.root / safe

    def deliver(self, user: str, content: bytes) -> str:
        """Store a message; returns its Maildir key once it is durably in new/."""
        key = self.deliver_file(user, content)
        if self.durable:
            fsync_directory(self.path(user) / "new")
        return key

    async def deliver_async(self, disk: DiskWorker, user: str, content: bytes) -> str:
        """`deliver` for the event loop: the file is written by the disk worker, and new/
        fsync'd there with the other deliveries of its group."""
        new = self._new.get(user)
        if new is None:
            new = self._new[user] = self.path(user) / "new"
        return await disk.commit(
            partial(maildir_deliver, str(self.path(user)), content, self.durable, self.owner),
            new if self.durable else None,
        )

    def deliver_file(self, user: str, content: bytes) -> str:
        """Write a message to tmp/, fsync it, rename it into new/ (whose entry is the
        caller's to make durable); returns its key."""
        return maildir_deliver(str(self.path(user)), content, self.durable, self.owner)

    def keys(self, user: str) -> list[str]:
        """Message keys in arrival order (new/ and cur/)."""
        box = self.path(user)
        found: list[tuple[float, str]] = []
        for sub in ("new", "cur"):
            folder = box / sub
            if folder.is_dir():
                for entry in folder.iterdir():
                    found.append((entry.stat().st_mtime, entry.name))
        return [name for _, name in sorted(found, key=lambda item: (item[0], item[1]))]

    def file(self, user: str, key: str) -> Path:
        box = self.path(user)
        for sub in ("new", "cur"):
            candidate = box / sub / key
            if candidate.exists():
                return candidate
        # Maildir readers may have renamed it with an info suffix
        for sub in ("cur",):
            for entry in (box / sub).glob(key + ":*"):
                return entry
        raise KeyError(f"{user}: no message {key}")

    def read(self, user: str, key: str) -> bytes:
        return self.file(user, key).read_bytes()

    def remove(self, user: str, key: str) -> None:
        self.file(user, key).unlink()
        if self.durable:
            for sub in ("new", "cur"):
                folder = self.path(user) / sub
                dfd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)

    def clear(self) -> None:
        """Empty every mailbox (the Maildirs themselves stay): for `Lab.reset()`. Whatever
        else a reader kept beside the messages (a POP3 server's index) goes too."""
        if not self.root.is_dir():
            return
        for box in self.root.iterdir():
            if not box.is_dir():
                box.unlink(missing_ok=True)
                continue
            for path in box.iterdir():
                if path.name in ("tmp", "new", "cur") and path.is_dir():
                    for message in path.iterdir():
                        message.unlink(missing_ok=True)
                elif path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def users(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())
