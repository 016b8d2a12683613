"""The disk work of a host, as functions of plain data (paths, bytes, flags).

A queue or a mailbox hands its disk writes to a `DiskWorker` (diskio.py) as
`functools.partial(one_of_these, ...)`: a call that can run in the host's disk thread
or be pickled to the lab's disk process (diskproc.py) and run there. So these touch
nothing but the file system and what they are given, and import nothing but the
standard library (the disk process loads no more of the lab than this, diskio.py and
diskproc.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time

_counter = itertools.count()
_made: set[str] = set()  # Maildirs this process knows exist

# Spare files: a queue's finished files are kept, renamed into DIR/.spare, and written
# over for its next messages. On ext4 without a journal (as on this kind of VM) a freed
# inode is not given out again for seconds, minutes while its inode table is unwritten,
# and every new file's allocation steps over each such one: a queue that makes and
# removes a file per message made each new file slower the busier it was (700 us a
# create after a few thousand messages, against 20 on a quiet file system). A file
# written over keeps its inode and its block; nothing is freed, nothing stepped over.
SPARE = ".spare"
_SPARES_PER_DIRECTORY = 256  # beyond it a finished file is removed
_SPARE_DIRECTORIES = 1024  # directories this process keeps spares for
_spares: dict[str, list[str]] = {}  # directory -> its spare files, of this process
_spares_lock = threading.Lock()  # (the disk process's writers take spares side by side)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fill(
    fd: int, data: bytes, durable: bool, owner: tuple[int, int] | None = None, *, cut: bool = False
) -> None:
    """Give a new file's `fd` to `owner` (if any), write `data` to it (from its start,
    the rest `cut` off: a file written over), fsync it when `durable`, and close it."""
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        write_all(fd, data)
        if cut:
            os.ftruncate(fd, len(data))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _open_new(path: str) -> int:
    """A new file (never one that exists), its directory made if it is not there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o600)


def create_file(path: str, data: bytes, durable: bool) -> None:
    """A new file with `data`, fsync'd when `durable` (its directory entry is the
    caller's to make durable); never one that exists. A spare file of its directory
    (see `retire`) is written over and linked in whole, when this process has one."""
    spare = _take_spare(os.path.dirname(path))
    if spare is not None:
        try:
            fd = os.open(spare, os.O_WRONLY)
        except OSError:  # its directory was emptied behind our back
            spare = None
    if spare is None:
        _fill(_open_new(path), data, durable)
        return
    try:
        _fill(fd, data, durable, cut=True)
        try:
            os.link(spare, path)  # (FileExistsError, as O_EXCL would say)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: a new file then
            _fill(_open_new(path), data, durable)
    finally:
        # the name goes, the inode stays (it is the new file's): nothing is freed;
        # left by a crash, it is removed when the directory's spares are next adopted
        unlink(spare)


def _take_spare(directory: str) -> str | None:
    with _spares_lock:
        spares = _spares.get(directory)
        return spares.pop() if spares else None


def retire(*paths: str) -> None:
    """Remove finished files of a directory: each is kept as a spare for the next new
    file there (`create_file`), up to a limit, or removed. Only this process's own
    spares are ever written over: the first time it retires a file of a directory, it
    removes whatever spares were there before (a process gone, a crash's leftovers)."""
    for path in paths:
        directory = os.path.dirname(path)
        with _spares_lock:
            spares = _spares.get(directory)
        if spares is None:
            spares = _adopt(directory)
        if spares is None or len(spares) >= _SPARES_PER_DIRECTORY:
            unlink(path)
            continue
        spare = os.path.join(directory, SPARE, f"{os.getpid()}.{next(_counter)}")
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            continue
        except OSError:
            unlink(path)
            continue
        with _spares_lock:
            spares.append(spare)


def _adopt(directory: str) -> list[str] | None:
    """DIR/.spare made and emptied, and this process's (empty) list of its spares."""
    room = os.path.join(directory, SPARE)
    try:
        os.makedirs(room, exist_ok=True)
        stale = [entry.path for entry in os.scandir(room)]
    except OSError:
        return None
    unlink(*stale)
    spares: list[str] = []
    with _spares_lock:
        while len(_spares) >= _SPARE_DIRECTORIES:  # the oldest forgotten (its spares
            del _spares[next(iter(_spares))]  # stay, removed if it is adopted again)
        _spares[directory] = spares
    return spares


def replace_file(path: str, data: bytes, durable: bool) -> None:
    """`path` holds `data` now, whole or not at all (written beside it, then renamed)."""
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp")
    os.makedirs(head, exist_ok=True)
    _fill(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), data, durable)
    os.replace(tmp, path)


def unlink(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def empty_directory(directory: str) -> None:
    """Remove the files of `directory` (not its subdirectories); no directory, nothing."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            unlink(entry.path)


def ensure_maildir(box: str, owner: tuple[int, int] | None) -> None:
    """BOX/{tmp,new,cur}, given to `owner` (uid, gid) when there is one."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(box, sub), exist_ok=True)
    if owner is not None:
        for sub in ("", "tmp", "new", "cur"):
            os.chown(os.path.join(box, sub), *owner)
    _made.add(box)


def maildir_deliver(box: str, content: bytes, durable: bool, owner: tuple[int, int] | None) -> str:
    """Write a message to BOX/tmp, fsync it, rename it into new/ (whose entry is the
    caller's to make durable); returns its key."""
    if box not in _made:
        ensure_maildir(box, owner)
    key = f"{time.time():.6f}.M{next(_counter)}P{os.getpid()}.{socket.gethostname()}"
    tmp = os.path.join(box, "tmp", key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:  # the Maildir was removed behind our back: make it again
        ensure_maildir(box, owner)
        fd = os.open(tmp, flags, 0o600)
    _fill(fd, content, durable, owner)
    os.rename(tmp, os.path.join(box, "new", key))
    return key


def nothing() -> None:
    """A job that does nothing: a barrier's (what came before it is done when it is)."""
