"""The lab's disk process: the hosts' disk work, run beside the lab, not in it.

In the in-process backend every host's event-driven work shares one thread, and so one
interpreter lock. A disk thread per host gives the lock up and takes it back around each
open, write, fsync, rename and unlink, and every socket call of the loop waits its turn:
with three MTAs on a message's way, that was a quarter of the loop's time. Here the
work goes, pickled (diskjobs.py's functions and their data), down a pipe to one child
process (`python -m lab.services.diskproc`, started with the first lab and shared by
the labs of this process), in one write per turn of the event loop. The child runs it
in one thread, in order and in groups (diskio's `run_group`, every host's work of a
group together: their files are never the same), the new files of a group fsync'd side
by side so that their fsyncs share the file system's journal commits. The answers for
the work someone hears the end of (a commit, a barrier, a state write) come back up
another pipe, which the event loop reads between its other work: no thread here.

Nothing is lost with it: a write nobody has heard the end of is never acknowledged (the
SMTP server says 250 only when its commit comes back), and if the child ends, every
write waiting for it fails (451 to the client) and the next work starts a new child.
At exit the lab says the end and the child finishes what it was given; a pipe that
closes without the end is a lab that died, and the child ends at once, as the disk work
of a crashed MTA does. It ignores the terminal's Ctrl-C, which the lab hears first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import itertools
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from lab.services.diskio import Job, resolve, run_group, run_waited
from lab.services.diskjobs import write_all

log = logging.getLogger("maillab.disk")

_HEAD = struct.Struct("!I")
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: a megabyte of work in flight before a write waits
_WRITERS = 8  # new files written side by side in a group
_BACKLOG = 16  # work nobody waits for is put off for new writes up to this much (a removal
# put off is a message sent again if the lab is killed: 16 keeps that to a few)
# a job as it crosses: (id, work, directory, fence, barrier, waited, answered)
Wire = tuple[int, Any, "str | None", bool, bool, bool, bool]


def _frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


class DiskProcessGone(OSError):
    """The disk process ended before it said the work was done."""


class DiskProcess:
    """The lab's end of the disk process (`shared()`: one per lab process)."""

    _shared: ClassVar[DiskProcess | None] = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0  # of the process that started the child (a fork must start its own)
        # one writer at a time on the pipe (reentrant: a write that waits reads answers,
        # and what they settle may hand more work over)
        self._lock = threading.RLock()
        self._pending: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._answers = -1  # the answers' pipe (non-blocking), read by the loops below
        self._buffer = bytearray()
        self._reading = threading.Lock()  # one reader of the answers at a time
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._outbox: list[tuple[str, bytes, list[Job]]] = []  # not written yet
        self._last_watched: weakref.ref[asyncio.AbstractEventLoop] | None = None

    @classmethod
    def shared(cls) -> DiskProcess:
        """This process's disk process, started if it is not running."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.stop)
            cls._shared.start()
            return cls._shared

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None

    def start(self) -> None:
        if self.running():
            return
        if self._pid and self._pid != os.getpid():  # a fork of the lab's process: its own
            self.__init__()  # type: ignore[misc]
        elif self._answers >= 0:  # it ended and nobody has read its end yet
            self._gone()
        with self._lock:
            if self.running():
                return
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lab.services.diskproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
            self._pid = os.getpid()
            assert self._proc.stdin is not None and self._proc.stdout is not None
            for pipe in (self._proc.stdin, self._proc.stdout):
                with contextlib.suppress(OSError):  # bigger pipes: fewer waits either way
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            os.set_blocking(self._proc.stdin.fileno(), False)  # (see _put)
            self._answers = self._proc.stdout.fileno()
            os.set_blocking(self._answers, False)
            self._buffer = bytearray()

    def send(self, name: str, jobs: list[Job]) -> None:
        """Hand `jobs` of worker `name` over, in order; the answered ones are settled
        when the child says they are done (resolve), or fail if it ends first. What is
        handed over during one turn of the event loop goes down the pipe at its end, in
        one write (each wakes the child: a cost that shows at a few hundred a second)."""
        wire: list[Wire] = []
        for job in jobs:
            job.id = next(self._ids)
            wire.append(
                (job.id, job.work, job.directory, job.fence, job.barrier, job.waited, job.answered)
            )
        blob = pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)  # fails here, not later
        if self._answers < 0 or self._pid != os.getpid():  # (an end is seen on the answers)
            self.start()
        with self._lock:
            for job in jobs:
                if job.answered:
                    self._pending[job.id] = job
                    if job.loop is not None:
                        self._watch(job.loop)
            self._outbox.append((name, blob, jobs))
            first = len(self._outbox) == 1
        if first:
            loop = asyncio._get_running_loop()
            if loop is None:
                self.flush()
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what was handed over and not written yet."""
        with self._lock:
            batch, self._outbox = self._outbox, []
            if not batch or self._proc is None or self._proc.stdin is None:
                return
            try:
                self._put(_frame([(n, b) for n, b, _ in batch]))
                return
            except OSError as exc:
                error = exc
                failed = [
                    self._pending.pop(job.id)
                    for _, _, jobs in batch
                    for job in jobs
                    if job.id in self._pending
                ]
        self._fail(failed, error)

    def _put(self, data: bytes) -> None:
        """Write `data` to the child (the lock held). When the pipe is full, the child is
        busy, or waits for its answers to be read: read them meanwhile, or the two would
        wait for each other."""
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if self._reading.acquire(blocking=False):
                    try:
                        self._pump(0.0)
                    finally:
                        self._reading.release()
                select.select([], [fd], [], 0.05)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the answers in `loop` when they come (no thread here: the loop reads them
        between its other work, and nothing takes the interpreter lock from it)."""
        last = self._last_watched
        if (last is not None and last() is loop) or self._answers < 0:  # (no set to look in)
            return
        self._last_watched = weakref.ref(loop)
        if loop in self._loops:
            return
        self._loops.add(loop)
        loop.add_reader(self._answers, self._on_readable)

    def _on_readable(self) -> None:
        if self._reading.acquire(blocking=False):  # else a wait() is reading them now
            try:
                self._pump(0.0)
            finally:
                self._reading.release()

    def wait(self, event: threading.Event) -> None:
        """Block until `event` (a barrier's) is set, reading the answers meanwhile (the
        caller may be the thread of the loop that reads them otherwise)."""
        self.flush()
        while not event.is_set():
            if self._reading.acquire(timeout=0.05):
                try:
                    if not event.is_set():
                        self._pump(0.05)
                finally:
                    self._reading.release()
            if self._answers < 0:
                return  # the child is gone: the barrier failed (set) or never will be

    def _pump(self, timeout: float) -> None:
        """Read what answers there are (waiting up to `timeout` for some) and settle the
        work they name; at the end of the pipe, fail whatever is still waiting."""
        fd = self._answers
        if fd < 0:
            return
        if timeout and not select.select([fd], [], [], timeout)[0]:
            return
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        self._buffer += data
        done: list[Job] = []
        while len(self._buffer) >= _HEAD.size:
            (size,) = _HEAD.unpack_from(self._buffer)
            if len(self._buffer) < _HEAD.size + size:
                break
            answers = pickle.loads(self._buffer[_HEAD.size : _HEAD.size + size])
            del self._buffer[: _HEAD.size + size]
            for job_id, result, error in answers:
                job = self._pending.pop(job_id, None)
                if job is not None:
                    job.result, job.error = result, error
                    done.append(job)
        resolve(done)

    def _gone(self) -> None:
        """The child ended: stop reading its pipe, fail the work it had not answered."""
        with self._lock:
            fd, self._answers = self._answers, -1
            lost = list(self._pending.values())
            self._pending.clear()
            loops, self._loops = list(self._loops), weakref.WeakSet()
            self._last_watched = None
            proc = self._proc
        for loop in loops:
            with contextlib.suppress(Exception):  # a closed loop has no readers left
                loop.remove_reader(fd)
        code = None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if pipe is not None:
                        pipe.close()
            code = proc.wait()
        if lost:
            log.warning(
                "the disk process ended (exit %s) with %d writes unfinished", code, len(lost)
            )
        self._fail(lost, DiskProcessGone(f"the disk process ended (exit {code})"))

    @staticmethod
    def _fail(jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            job.error = exc
        resolve(jobs)

    def stop(self) -> None:
        """Say the end, and close the pipe: the child finishes the work it has, then
        ends. (A pipe that closes without the end is a lab that died: the child ends at
        once, and the work nobody heard the end of is lost with the lab, as a crash
        loses it: a removal not done sends a message again, a write not answered was
        never acknowledged.)"""
        self.flush()
        with self._lock:
            proc = self._proc if self._pid == os.getpid() else None
            if proc is None or proc.stdin is None or proc.stdin.closed:
                return
            with contextlib.suppress(OSError):
                self._put(_frame(None))
                proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        with self._reading:  # the answers still in the pipe, to its end
            while self._answers >= 0:
                self._pump(0.1)


# the child ------------------------------------------------------------------------------


class _Answers:
    """The child's end of the answers' pipe."""

    def __init__(self, fd: int):
        self.fd = fd

    def __call__(self, jobs: list[Job]) -> None:
        answers = [(job.id, job.result, job.error) for job in jobs if job.answered]
        if not answers:
            return
        try:
            data = _frame(answers)
        except Exception:
            answers = [
                (i, None, None if e is None else OSError(f"{type(e).__name__}: {e}"))
                for i, _, e in answers
            ]
            data = _frame(answers)
        try:
            write_all(self.fd, data)
        except BrokenPipeError:  # the lab is gone: so is its disk work
            os._exit(0)


def _unless_orphaned(lab: int, work: Any) -> Any:
    """`work`, if the lab that gave it is still there. A lab that died is restarted over
    the same state at once, maybe: the disk work it left must not go on beside the new
    lab's (a file written after the new lab read its queue would be nobody's)."""
    if os.getppid() != lab:
        os._exit(0)
    return work()


class _Inbox:
    """The child's end of the work's pipe: the frames there are."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def _read(self) -> None:
        data = os.read(self.fd, 1 << 20)
        if data:
            self.buffer += data
        else:
            self.ended = True

    def _frames(self) -> list[bytes]:
        frames = []
        while len(self.buffer) >= _HEAD.size:
            (size,) = _HEAD.unpack_from(self.buffer)
            if len(self.buffer) < _HEAD.size + size:
                break
            frames.append(bytes(self.buffer[_HEAD.size : _HEAD.size + size]))
            del self.buffer[: _HEAD.size + size]
        return frames

    def ready(self) -> bool:
        """More work has come."""
        return not self.ended and bool(select.select([self.fd], [], [], 0)[0])

    def take(self, wait: bool) -> list[bytes] | None:
        """The frames that came while the last were done (waiting for one if none did
        and `wait`); None at the end of the pipe."""
        frames = self._frames()
        while wait and not frames and not self.ended:
            self._read()
            frames = self._frames()
        while self.ready():
            self._read()
        frames += self._frames()
        return None if not frames and self.ended else frames


def main() -> None:
    """The disk process: one thread, so that nothing here waits for a lock either. The
    work of every host that came while the last group was done goes as one group (each
    host's in its order: their files are never the same), its writes fsync'd, each
    directory once, and the answers for the group in one write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab hears Ctrl-C, and closes the pipe
    answers = os.dup(1)
    os.dup2(2, 1)  # nothing else may write to the answers' pipe
    inbox, answer = _Inbox(0), _Answers(answers)
    pool = ThreadPoolExecutor(_WRITERS, thread_name_prefix="disk")
    lab = os.getppid()
    group: list[Job] = []
    while (frames := inbox.take(wait=not group)) is not None:
        for frame in frames:
            batch = pickle.loads(frame)
            if batch is None:  # the end: what there is still to do, then no more
                run_group(group, answer, pool)
                return
            for _name, blob in batch:
                for job_id, work, directory, fence, barrier, waited, told in pickle.loads(blob):
                    job = Job(partial(_unless_orphaned, lab, work), directory, waited=waited)
                    job.id, job.fence, job.barrier, job.notify = job_id, fence, barrier, told
                    group.append(job)
        # the writes someone waits for first; if more work came meanwhile, it joins the
        # group before the rest (a removal waits, a 250 does not)
        group = run_waited(group, answer, pool)
        if group and (len(group) >= _BACKLOG or not inbox.ready()):
            run_group(group, answer, pool)
            group = []
    os._exit(0)  # the lab died (no end came): so does its disk work, as in a crash


if __name__ == "__main__":
    main()
