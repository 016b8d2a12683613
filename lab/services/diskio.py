"""A host's disk writes, in one worker thread beside the event loop, committed in groups.

An MTA may say 250 only once the message file and the directory entry naming it are on
disk (fsync of both). Done one message at a time, each message pays its own directory
fsync and its own trip to a thread. Here one thread per host takes the writes in order:
those that queued up while the disk was busy go as a group, each file written and
fsync'd, then each directory fsync'd once for the whole group (group commit, as
databases and busy MTAs do), and the loop is woken once for the group. Nobody's 250
comes before its own file and directory are durable.

Work that nobody waits for (removing a delivered message, recording a deferred attempt)
goes through the same thread with `later`: it runs after every write asked for before
it, and after the writes of its own group have been woken, so it never delays a 250.
Such work may name a directory too (a removal does): the directory is fsync'd once for
all the work of a group that names it, so removals are durable in groups as well.

A DSN is written as accepted mail is, with `commit`, and the MTA waits for it before it
asks for the original's state update or removal (lab/services/mta/dsn.py): so the DSN
and its directory are durable before the message it reports on can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("maillab.disk")

T = TypeVar("T")
_GROUP = 64  # at most this many writes share one directory fsync


class _Job:
    __slots__ = ("barrier", "directory", "error", "fence", "future", "loop", "result", "work")

    def __init__(
        self,
        work: Callable[[], Any],
        directory: Path | None,
        future: asyncio.Future[Any] | None,
        loop: asyncio.AbstractEventLoop | None,
    ):
        self.work = work
        self.directory = directory
        self.future = future
        self.loop = loop
        self.result: Any = None
        self.error: BaseException | None = None
        self.barrier = False  # runs after the directory fsyncs of the work before it
        self.fence = False  # runs in its place: after all work before it, before all after


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskWorker:
    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        # `later` work asked for during one turn of the event loop, handed over together
        # at its end: one wake-up of the disk thread for all of it, not one each
        self._held: list[_Job] = []

    def _submit(self, job: _Job) -> None:
        held, self._held = self._held, []  # what was asked before it goes first
        self._hand_over([*held, job])

    def _hand_over(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._lock:
            if self._closed:  # shutting down: do it here and now rather than start again
                self._do(jobs)
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

    async def commit(self, work: Callable[[], T], directory: Path | None) -> T:
        """Run `work` (it writes a file and fsyncs it) in the disk thread, then fsync
        `directory` (shared with the other writes of its group); return work's result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(_Job(work, directory, future, loop))
        return await future

    def later(
        self, work: Callable[[], Any], directory: Path | None = None, *, fence: bool = False
    ) -> None:
        """Run `work` in the disk thread, in order with the rest; nobody waits for it.
        `directory` is fsync'd after it, once for the group's work that names it. A
        `fence` (emptying a queue) keeps its place even among waited-for writes: the work
        of its group asked before it is done first, and nothing asked after it goes
        before it (a message accepted after a reset is not wiped with the old ones)."""
        job = _Job(work, directory, None, None)
        job.fence = fence
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._submit(job)
            return
        if not self._held:
            loop.call_soon(self._release_held)
        self._held.append(job)

    def wait(self) -> None:
        """Block until the work asked for so far is done (for shutdown and for tests)."""
        done = threading.Event()
        job = _Job(done.set, None, None, None)
        job.barrier = True
        self._submit(job)
        done.wait()

    def close(self) -> None:
        """Finish what was asked so far, then stop the thread."""
        self._release_held()
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = list(first)
            stop = False
            while len(group) < _GROUP:
                try:
                    jobs = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if jobs is None:
                    stop = True
                    break
                group.extend(jobs)
            self._do(group)
            if stop:
                return

    def _do(self, group: list[_Job]) -> None:
        """The group, cut at its fences: each part before a fence is done, then the fence."""
        start = 0
        for index, job in enumerate(group):
            if job.fence:
                self._do_part(group[start:index])
                self._run_jobs([job])
                start = index + 1
        self._do_part(group[start:])

    def _do_part(self, group: list[_Job]) -> None:
        """The part's waited-for writes, their directories' fsyncs, the wake-up; then the
        work nobody waits for (removals, state updates), so that it never delays a 250.
        Each kind keeps its order; the files they touch are never the same ones (what
        touches every file, as a queue's emptying, is a fence)."""
        if not group:
            return
        self._run_jobs([job for job in group if job.future is not None])
        unwaited: list[_Job] = []
        for job in group:
            if job.barrier:  # (wait): what came before it is done and durable
                self._run_jobs(unwaited)
                unwaited = []
                job.work()
            elif job.future is None:
                unwaited.append(job)
        self._run_jobs(unwaited)

    def _run_jobs(self, group: list[_Job]) -> None:
        for job in group:
            try:
                job.result = job.work()
            except BaseException as exc:  # handed to whoever waits for it
                job.error = exc
                if job.future is None:
                    log.warning("%s: background disk work failed: %s", self.name, exc)
        synced: dict[Path, BaseException | None] = {}
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
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in group:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, jobs)


def _resolve(jobs: list[_Job]) -> None:
    for job in jobs:
        future = job.future
        if future is None or future.done():
            continue
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.result)
