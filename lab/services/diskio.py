"""A host's disk writes, in order and committed in groups: in a worker thread beside
the event loop, or in the lab's disk process (diskproc.py).

An MTA may say 250 only once the message file and the directory entry naming it are on
disk (fsync of both). Done one message at a time, each message pays its own directory
fsync and its own trip to a thread. Here one worker per host takes the writes in order:
those that queued up while the disk was busy go as a group, each file written and
fsync'd, then each directory fsync'd once for the whole group (group commit, as
databases and busy MTAs do), and the loop is woken once for the group. Nobody's 250
comes before its own file and directory are durable.

Work that nobody waits for (removing a delivered message, recording a deferred attempt)
goes through the same worker with `later`: it runs after every write asked for before
it, and after the writes of its own group have been woken, so it never delays a 250.
Such work may name a directory too (a removal does): the directory is fsync'd once for
all the work of a group that names it, so removals are durable in groups as well.

A DSN is written as accepted mail is, with `commit`, and the MTA waits for it before it
asks for the original's state update or removal (lab/services/mta/dsn.py): so the DSN
and its directory are durable before the message it reports on can go.

The work is a call of no arguments. The lab's own is `functools.partial` of a function
of diskjobs.py, which can also be pickled: so the same work runs in a thread of this
process, or in the disk process, where the file system calls of many hosts do not take
the interpreter lock from the event loop (a thread's open, write, fsync, rename and
unlink each give it up and take it back, and every socket call of the loop waits its
turn). Both run the groups with `run_group` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from lab.services.diskjobs import fsync_directory, nothing

log = logging.getLogger("maillab.disk")

T = TypeVar("T")
GROUP = 64  # at most this many writes share one directory fsync
Complete = Callable[[list["Job"]], None]
_workers = itertools.count(1)

__all__ = ["DiskWorker", "Job", "fsync_directory", "run_group"]


class Job:
    __slots__ = (
        "barrier",
        "directory",
        "error",
        "event",
        "fence",
        "future",
        "id",
        "loop",
        "notify",
        "result",
        "then",
        "waited",
        "work",
    )

    def __init__(
        self,
        work: Callable[[], Any],
        directory: str | None,
        future: asyncio.Future[Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        waited: bool = False,
    ):
        self.work = work
        self.directory = directory
        self.future = future
        self.loop = loop
        self.waited = waited  # someone waits for it (a commit): it goes first in its group
        self.result: Any = None
        self.error: BaseException | None = None
        self.barrier = False  # runs after the directory fsyncs of the work before it
        self.fence = False  # runs in its place: after all work before it, before all after
        self.event: threading.Event | None = None  # set when a barrier is passed
        self.then: Callable[[], None] | None = None  # called in its loop once it is done
        self.notify = False  # (in the disk process: the lab hears when it is done)
        self.id = 0  # the disk process's name for it

    @property
    def answered(self) -> bool:
        """Whoever asked for it hears when it is done (a commit, a barrier, work with a
        `then`)."""
        return self.waited or self.barrier or self.notify or self.then is not None


def run_group(group: list[Job], complete: Complete, pool: Executor | None = None) -> None:
    """The group, cut at its fences: each part before a fence is done, then the fence.
    `complete` hears of each batch of jobs once they are done and durable. With a
    `pool`, the waited-for writes of a part (each a new file of its own) are done side
    by side: their fsyncs then share the file system's journal commits."""
    start = 0
    for index, job in enumerate(group):
        if job.fence:
            _run_part(group[start:index], complete, pool)
            _run_jobs([job], complete)
            start = index + 1
    _run_part(group[start:], complete, pool)


def run_waited(group: list[Job], complete: Complete, pool: Executor | None = None) -> list[Job]:
    """The waited-for writes of the group's first part (before its first fence or
    barrier) done, as `run_group` would do them first; returns the rest, in order."""
    cut = next((i for i, job in enumerate(group) if job.fence or job.barrier), len(group))
    waited = [job for job in group[:cut] if job.waited]
    if not waited:
        return group
    _run_jobs(waited, complete, pool)
    return [job for job in group[:cut] if not job.waited] + group[cut:]


def _run_part(group: list[Job], complete: Complete, pool: Executor | None) -> None:
    """The part's waited-for writes, their directories' fsyncs, the wake-up; then the
    work nobody waits for (removals, state updates), so that it never delays a 250.
    Each kind keeps its order; the files they touch are never the same ones (what
    touches every file, as a queue's emptying, is a fence)."""
    if not group:
        return
    _run_jobs([job for job in group if job.waited], complete, pool)
    unwaited: list[Job] = []
    for job in group:
        if job.barrier:  # (wait): what came before it is done and durable
            _run_jobs(unwaited, complete)
            unwaited = []
            _run_jobs([job], complete)
        elif not job.waited:
            unwaited.append(job)
    _run_jobs(unwaited, complete)


def _run_jobs(group: list[Job], complete: Complete, pool: Executor | None = None) -> None:
    if not group:
        return
    if pool is not None and len(group) > 1:
        list(pool.map(_run_job, group))
    else:
        for job in group:
            _run_job(job)
    synced: dict[str, BaseException | None] = {}
    for job in group:
        if job.directory is None or job.error is not None:
            continue
        if job.directory not in synced:
            try:
                fsync_directory(job.directory)
                synced[job.directory] = None
            except OSError as exc:
                synced[job.directory] = exc
        job.error = synced[job.directory]
    complete(group)


def _run_job(job: Job) -> None:
    try:
        job.result = job.work()
    except BaseException as exc:  # handed to whoever waits for it
        job.error = exc
        if not job.answered:
            log.warning("background disk work failed: %s", exc)


def resolve(jobs: list[Job]) -> None:
    """Tell whoever waits for `jobs` (in this process) that they are done: a commit's
    future in its loop (one wake-up of each loop for the lot), a barrier's event."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        if job.event is not None:
            job.event.set()
        elif job.loop is not None:
            by_loop.setdefault(job.loop, []).append(job)
    here = asyncio._get_running_loop()
    for loop, waiting in by_loop.items():
        if loop is here:  # read in the loop itself (the disk process's answers)
            _settle_futures(waiting)
            continue
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle_futures, waiting)


def _settle_futures(jobs: list[Job]) -> None:
    for job in jobs:
        if job.then is not None:
            if job.error is not None:
                log.warning("background disk work failed: %s", job.error)
            job.then()
        future = job.future
        if future is None or future.done():
            continue
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.result)


class Elsewhere(Protocol):
    """Where a worker's jobs run when not in its thread (diskproc.DiskProcess)."""

    def send(self, name: str, jobs: list[Job]) -> None: ...

    def wait(self, event: threading.Event) -> None: ...


class DiskWorker:
    """One host's disk work, in order: in a thread of its own, or (`process`) in the
    lab's disk process."""

    def __init__(self, name: str, process: Elsewhere | None = None):
        self.name = name
        self.process = process
        self._wire_name = f"{name}#{next(_workers)}"  # the disk process's, unique
        self._sent = False  # any work given to the disk process
        self._jobs: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        # `later` work asked for during one turn of the event loop, handed over together
        # at its end: one wake-up of the disk thread for all of it, not one each
        self._held: list[Job] = []

    def _submit(self, job: Job) -> None:
        held, self._held = self._held, []  # what was asked before it goes first
        self._hand_over([*held, job])

    def _hand_over(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        with self._lock:
            if self._closed:  # shutting down: do it here and now rather than start again
                run_group(jobs, resolve)
                return
            if self.process is not None:
                self.process.send(self._wire_name, jobs)
                self._sent = True
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"disk:{self.name}", daemon=True
                )
                self._thread.start()
        self._jobs.put(jobs)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        self._hand_over(held)

    async def commit(self, work: Callable[[], T], directory: Any) -> T:
        """Run `work` (it writes a file and fsyncs it) in the disk worker, then fsync
        `directory` (shared with the other writes of its group); return work's result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        where = None if directory is None else str(directory)
        self._submit(Job(work, where, future, loop, waited=True))
        return await future

    def later(
        self,
        work: Callable[[], Any],
        directory: Any = None,
        *,
        fence: bool = False,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run `work` in the disk worker, in order with the rest; nobody waits for it.
        `directory` is fsync'd after it, once for the group's work that names it. A
        `fence` (emptying a queue) keeps its place even among waited-for writes: the work
        of its group asked before it is done first, and nothing asked after it goes
        before it (a message accepted after a reset is not wiped with the old ones).
        `then` is called in the caller's event loop once the work is done."""
        job = Job(work, None if directory is None else str(directory))
        job.fence = fence
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._submit(job)  # (no loop to call `then` in: nobody to tell)
            return
        if then is not None:
            job.then, job.loop = then, loop
        if not self._held:
            loop.call_soon(self._release_held)
        self._held.append(job)

    def wait(self) -> None:
        """Block until the work asked for so far is done (for shutdown and for tests)."""
        job = Job(nothing, None)
        job.barrier = True
        job.event = threading.Event()
        self._submit(job)
        if self.process is not None:
            self.process.wait(job.event)
        else:
            job.event.wait()

    def close(self) -> None:
        """Finish what was asked so far, then stop the thread (in the disk process: once
        it has done this worker's work, if it was given any)."""
        self._release_held()
        if self.process is not None:
            if self._sent:
                self.wait()
            with self._lock:
                self._closed = True
            return
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _run(self) -> None:
        for group in groups(self._jobs):
            run_group(group, resolve)


def groups(jobs: queue.SimpleQueue[list[Job] | None]) -> Any:
    """The groups of work as it arrives: what queued up while the last group ran goes
    as one (at most GROUP jobs and the rest of a batch), until a None."""
    while True:
        first = jobs.get()
        if first is None:
            return
        group = list(first)
        stop = False
        while len(group) < GROUP:
            try:
                more = jobs.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stop = True
                break
            group.extend(more)
        yield group
        if stop:
            return
