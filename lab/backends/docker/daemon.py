"""A real MTA as the child of a node agent: the host's SMTP service when the node's
software is not the built-in MTA (lab.software.adapter says how to drive it).

The agent stays the host; this runs the daemon: writes its rendered files, runs its
preparation commands, starts it in the foreground with libfaketime's offset file in its
environment, waits for its 220 greeting, reads its log from its standard output (each
line goes on to the container's log, `maillab logs NODE`, and becomes the lab's events
through the adapter's log reader), restarts it when it dies (a `daemon.exited` event),
and stops it when the host stops. flush, queue, content and mailbox go to the daemon's
own tools and Maildirs.

Two adapter methods are optional, for daemons that are not Postfix-like: `log_path()`
names a file every one of the daemon's processes logs to (Exim): the agent makes it a
FIFO and reads it as it reads standard output; `due_command()`, `parse_due()` and
`run_queue_command()` give the due times of deferred mail from the daemon's own records
(Exim's retry hints) and one queue run that tries what is due, instead of the deferred
queue's file times and one retry command per message. `busy(daemon_pid)` says whether
the daemon's processes are at work, when no directory shows it. `syslog_path()` names a
syslog socket (sendmail's /dev/log) the agent listens on, one log line a datagram;
`read_mailbox(user)` reads a mailbox the daemon's own local delivery wrote (sendmail's
mbox) where the lab's Maildirs are not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from lab.backends.docker.child import await_greeting, run_tool, stop_child
from lab.errors import LabError
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.software.adapter import MtaAdapter, RenderContext, faketime_offset

log = logging.getLogger("maillab.node")

READY_TIMEOUT = 30.0
MAX_RESTARTS = 5
QUIET = 0.05  # seconds without a log line after which the daemon counts as idle
QUICK = 0.005  # the same, where the awaited log lines are known to be in


class RealMta:
    """One real MTA daemon, supervised."""

    def __init__(self, adapter: MtaAdapter, ctx: RenderContext, host: Host, runtime: Path):
        self.adapter = adapter
        self.ctx = ctx
        self.host = host
        self.offset_file = runtime / f"{host.name}.faketime"
        self.store = MailStore(Path(ctx.mail_root), durable=False)
        self.reader = adapter.log_reader()
        self.proc: asyncio.subprocess.Process | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.stopping = False
        self.restarts = 0
        self.last_line = 0.0  # loop time of the last log line
        self.probing = False  # readiness probes: their log lines make no events
        self.keys: dict[str, set[str]] = {}  # user -> Maildir keys already reported
        self.log_task: asyncio.Task[None] | None = None
        self.log_keep: int | None = None  # a writer of the log FIFO: no EOF between writers
        self.queue_ran_at: float | None = None  # lab time of the last due queue run
        self.syslog: asyncio.DatagramTransport | None = None

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for path, text in self.adapter.render(self.ctx).items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        await self._follow_log()
        await self._listen_syslog()
        for command in self.adapter.prepare_commands(self.ctx):
            await self.run(command)
        self.set_offset(self.host.clock.offset)
        await self._spawn()
        await self.ready()

    async def _follow_log(self) -> None:
        """The adapter's log file, when it names one: a FIFO read line by line."""
        path_of = getattr(self.adapter, "log_path", None)
        path = path_of() if path_of is not None else None
        if not path:
            return
        fifo = Path(path)
        fifo.parent.mkdir(parents=True, exist_ok=True)
        if fifo.exists() or fifo.is_symlink():
            fifo.unlink()
        os.mkfifo(fifo, 0o666)
        os.chmod(fifo, 0o666)  # the daemon's processes write it as its own user
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.log_keep = os.open(fifo, os.O_WRONLY)
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )

        async def follow() -> None:
            while line := await reader.readline():
                self._line(line)

        self.log_task = loop.create_task(follow())

    async def _listen_syslog(self) -> None:
        """The adapter's syslog socket, when it names one: each datagram one log line."""
        path_of = getattr(self.adapter, "syslog_path", None)
        path = path_of() if path_of is not None else None
        if not path:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        os.chmod(path, 0o666)  # the daemon's processes write it as their own users
        mta = self

        class Listener(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                mta._line(data.rstrip(b"\0\n"))

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Listener, sock=sock
        )
        self.syslog = transport

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\n")
        sys.stderr.write(text + "\n")  # the container's log: `maillab logs NODE`
        self.last_line = asyncio.get_running_loop().time()
        try:
            self._events(text)
        except Exception as exc:  # a line we misread is no reason to stop reading
            log.error("reading the log line %r: %s", text, exc)

    async def _spawn(self) -> None:
        env = dict(os.environ)
        env.update(self.adapter.environment(str(self.offset_file)))
        self.proc = await asyncio.create_subprocess_exec(
            *self.adapter.start_command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self.watcher = asyncio.get_running_loop().create_task(self._watch(self.proc))

    async def ready(self, timeout: float = READY_TIMEOUT) -> str:
        """The daemon's 220 greeting on the host's loopback (retried until `timeout`)."""
        return await await_greeting(self.proc, self.adapter.software.value, 25, b"220", timeout)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self._line(line)
        code = await proc.wait()
        if self.stopping:
            return
        self.host.emit("daemon.exited", software=self.adapter.software.value, code=code)
        if self.restarts >= MAX_RESTARTS:
            log.error("%s exited %s times; not restarting", self.adapter.software, self.restarts)
            return
        self.restarts += 1
        stop = self.adapter.stop_command()
        if stop:  # whatever the dead daemon left (a pid file) must not stop the new one
            with contextlib.suppress(Exception):
                await self.run(stop, check=False)
        await self._spawn()
        try:
            await self.ready()
            self.host.emit(
                "daemon.restarted", software=self.adapter.software.value, restarts=self.restarts
            )
        except LabError as exc:
            log.error("restarting %s: %s", self.adapter.software.value, exc)

    def _events(self, line: str) -> None:
        for event in self.reader.feed(line, self.host.clock.time()):
            data = dict(event.data)
            if event.kind == "mailbox.delivered" and not data.get("key"):
                data["key"] = self._find_key(str(data["user"]), str(data["id"]))
            if self.probing and event.kind.startswith("policy."):
                continue
            self.host.emit(event.kind, **data)

    def _find_key(self, user: str, queue_id: str) -> str:
        """The Maildir file a local delivery of `queue_id` wrote (its Received: line names
        the queue id), not one reported before."""
        seen = self.keys.setdefault(user, set())
        needle = re.compile(rb"\sid " + re.escape(queue_id.encode()) + rb"\b")
        for key in reversed(self.store.keys(user)):
            if key in seen:
                continue
            with contextlib.suppress(OSError, KeyError):
                if needle.search(self.store.read(user, key)[:8192]):
                    seen.add(key)
                    return key
        return ""

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        await stop_child(self.proc, self.adapter.stop_command(), self.run, self.watcher)
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None
        if self.log_keep is not None:
            os.close(self.log_keep)  # the last writer gone: the reader ends at EOF
            self.log_keep = None
            if self.log_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.log_task, 2)

    async def reset(self) -> None:
        """Back to a new daemon's state (`Lab.reset()`): stopped, its spool and the
        mailboxes emptied, what the lab remembered of it forgotten, started again on the
        host's clock (reset before)."""
        await self.stop()
        clear_files(reset_paths(self.adapter))
        self.store.clear()
        self.keys.clear()
        self.reader = self.adapter.log_reader()
        self.queue_ran_at = None
        self.restarts = 0
        self.stopping = False
        await self._follow_log()
        await self._listen_syslog()  # stop() closed it
        self.set_offset(self.host.clock.offset)
        await self._spawn()
        await self.ready()

    # the clock ---------------------------------------------------------------------------

    def set_offset(self, offset: float) -> None:
        """Move the daemon's clock: libfaketime reads the file at each call."""
        tmp = self.offset_file.with_suffix(".tmp")
        tmp.write_text(faketime_offset(offset))
        tmp.replace(self.offset_file)

    def deferred(self) -> dict[str, float]:
        """Deferred queue id -> its next try (lab time: the daemon sets its queue file's
        mtime from its faked clock; stat is not faked)."""
        found: dict[str, float] = {}
        root = Path(self.adapter.deferred_path())
        with contextlib.suppress(OSError):
            for sub in os.scandir(root):
                if not sub.is_dir():
                    continue
                with contextlib.suppress(OSError):
                    for entry in os.scandir(sub.path):
                        with contextlib.suppress(OSError):
                            found[entry.name] = entry.stat().st_mtime
        return found

    async def due_times(self) -> list[float]:
        """When the daemon will try deferred mail again, from its own records (the
        adapter's due_command), skipping what the last due queue run left due."""
        command = getattr(self.adapter, "due_command", None)
        if command is None:
            return sorted(self.deferred().values())
        out = await self.run(command(), check=False)
        due: list[float] = self.adapter.parse_due(out)  # type: ignore[attr-defined]
        ran = self.queue_ran_at
        return [when for when in due if ran is None or when > ran + 0.001]

    async def next_due(self) -> float | None:
        """The earliest lab time the daemon will try a deferred message again."""
        due = await self.due_times()
        return min(due) if due else None

    async def run_due(self, now: float) -> int:
        """Try each deferred message due by `now` (the offset moved there) and wait until
        each was tried: its result is in the log and it is out of the daemon's hands
        (deferred again to a later time, or gone: delivered, bounced)."""
        run_queue = getattr(self.adapter, "run_queue_command", None)
        if run_queue is not None:  # one queue run tries all that is due, then returns
            due_times = [when for when in await self.due_times() if when <= now + 0.001]
            if not due_times:
                return 0
            self.queue_ran_at = now
            await self.run(run_queue(), check=False)
            await self.settle(10.0, quiet=QUICK)
            return len(due_times)
        due = {qid: when for qid, when in self.deferred().items() if when <= now + 0.001}
        if not due:
            return 0
        tried = {qid: self.reader.attempts(qid) for qid in due}
        for qid in due:
            await self.run(self.adapter.retry_command(qid), check=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while loop.time() < deadline:
            deferred, busy = self.deferred(), self.busy_ids()
            if all(
                qid not in busy
                and deferred.get(qid, when + 1) > when
                and (qid not in deferred or self.reader.attempts(qid) > tried[qid])
                for qid, when in due.items()
            ):
                break
            await asyncio.sleep(0.002)
        # what trails the tries (a delay warning, a bounce) is seen by the next settle
        await self.settle(10.0, quiet=QUICK)
        return len(due)

    # acting ------------------------------------------------------------------------------

    async def run(self, command: list[str], *, check: bool = True) -> str:
        """One of the daemon's tools, on real time: the tools only hand requests to the
        daemon or read its files, and the daemon keeps the lab time (starting up
        without libfaketime is quicker, and a clock advance runs one per due message);
        an adapter wraps the commands that deliver in lab time itself."""
        return await run_tool(command, check=check)

    async def queue(self) -> list[dict[str, Any]]:
        out = await self.run(self.adapter.queue_command())
        return self.adapter.parse_queue(out, self.reader)

    async def flush(self) -> int:
        count = len(await self.queue())
        self.host.emit("queue.flush", count=count)
        await self.run(self.adapter.flush_command())
        await self.settle(10.0)
        return count

    async def content(self, queue_id: str) -> bytes:
        if not re.fullmatch(r"[0-9A-Za-z]+(?:-[0-9A-Za-z]+)*", queue_id):
            raise LabError(f"no message {queue_id!r} in the queue")
        out = await self.run(self.adapter.content_command(queue_id), check=False)
        if not out:
            raise LabError(f"no message {queue_id!r} in the queue")
        return out.encode("utf-8", "surrogateescape")

    def mailbox(self, user: str) -> list[dict[str, Any]]:
        read = getattr(self.adapter, "read_mailbox", None)
        if read is not None:  # the daemon's own mailbox format (sendmail's mbox)
            found: list[dict[str, Any]] = read(user)
            return found
        out = []
        for key in self.store.keys(user):
            raw = self.store.read(user, key)
            match = re.match(rb"(?i)Return-Path: <([^>]*)>", raw)
            out.append(
                {
                    "id": key,
                    "envelope_from": match.group(1).decode() if match else "",
                    "raw": raw.decode("utf-8", "surrogateescape"),
                }
            )
        return out

    def busy(self, quiet: float = QUIET) -> bool:
        """Messages under way (incoming, active), or a log line less than `quiet` s ago."""
        loop = asyncio.get_running_loop()
        if loop.time() - self.last_line < quiet:
            return True
        at_work = getattr(self.adapter, "busy", None)
        if at_work is not None and at_work(self.proc.pid if self.proc is not None else None):
            return True
        for path in self.adapter.busy_paths():
            with contextlib.suppress(OSError):
                for _root, _dirs, files in os.walk(path):
                    if files:
                        return True
        return False

    def busy_ids(self) -> set[str]:
        """The queue files under way (incoming, active): their names are queue ids."""
        found: set[str] = set()
        for path in self.adapter.busy_paths():
            with contextlib.suppress(OSError):
                for _root, _dirs, files in os.walk(path):
                    found.update(files)
        return found

    async def settle(self, timeout: float, quiet: float = QUIET) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.busy(quiet) and loop.time() < deadline:
            await asyncio.sleep(0.005)


def reset_paths(adapter: Any) -> list[str]:
    """The directories whose files are the daemon's memory of mail (queue, retry hints):
    the adapter's `reset_paths()`, or else its deferred queue and busy directories."""
    own = getattr(adapter, "reset_paths", None)
    if own is not None:
        return list(own())
    return [adapter.deferred_path(), *adapter.busy_paths()]


def clear_files(paths: list[str]) -> None:
    """Remove every file under `paths`, keeping the directories (and their owners and
    modes, which a daemon checks)."""
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
