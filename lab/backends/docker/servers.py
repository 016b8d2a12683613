"""A real server other than the MTA as the child of a node agent: the host's POP3 service
when the node's pop3 software is Dovecot (lab.software.server says how to drive it).

As lab.backends.docker.daemon does for a real MTA, this writes the server's rendered
files, runs its preparation commands, starts it in the foreground, waits for its greeting
on the host's loopback, reads its log from its standard output and error (each line goes
on to the container's log, `maillab logs NODE`, and becomes the lab's events through the
adapter's reader), restarts it when it dies (`daemon.exited`, `daemon.restarted`; at most
MAX_RESTARTS times) and stops it when the host stops. It has no queue and no clock.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from lab.backends.docker.child import await_greeting, run_tool, stop_child
from lab.errors import LabError
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.software.adapter import RenderContext
from lab.software.server import ServerAdapter

log = logging.getLogger("maillab.node")

READY_TIMEOUT = 30.0
MAX_RESTARTS = 5
RESTART_PAUSE = 0.5  # seconds: the dead server's processes let go of its port
QUIET = 0.05  # seconds without a log line after which the server counts as idle


class RealServer:
    """One real server, supervised."""

    def __init__(self, adapter: ServerAdapter, ctx: RenderContext, host: Host):
        self.adapter = adapter
        self.ctx = ctx
        self.host = host
        self.reader = adapter.log_reader()
        self.proc: asyncio.subprocess.Process | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.stopping = False
        self.restarts = 0
        self.last_line = 0.0  # loop time of the last log line

    @property
    def name(self) -> str:
        return self.adapter.software.value

    async def start(self) -> None:
        for path, text in self.adapter.render(self.ctx).items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for command in self.adapter.prepare_commands(self.ctx):
            await self.run(command)
        await self._spawn()
        await self.ready()

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.adapter.start_command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.watcher = asyncio.get_running_loop().create_task(self._watch(self.proc))

    async def ready(self, timeout: float = READY_TIMEOUT) -> str:
        """The server's greeting on the host's loopback (retried until `timeout`)."""
        return await await_greeting(
            self.proc, self.name, self.adapter.port, self.adapter.greeting, timeout
        )

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        while line := await proc.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            sys.stderr.write(text + "\n")  # the container's log: `maillab logs NODE`
            self.last_line = loop.time()
            try:
                for event in self.reader.feed(text, self.host.clock.time()):
                    self.host.emit(event.kind, **event.data)
            except Exception as exc:  # a line we misread is no reason to stop reading
                log.error("reading the log line %r: %s", text, exc)
        code = await proc.wait()
        if self.stopping:
            return
        self.host.emit("daemon.exited", software=self.name, code=code)
        if self.restarts >= MAX_RESTARTS:
            log.error("%s exited %s times; not restarting", self.name, self.restarts)
            return
        self.restarts += 1
        await asyncio.sleep(RESTART_PAUSE)
        if self.stopping:
            return
        await self._spawn()
        try:
            await self.ready()
            self.host.emit("daemon.restarted", software=self.name, restarts=self.restarts)
        except LabError as exc:
            log.error("restarting %s: %s", self.name, exc)

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        await stop_child(self.proc, self.adapter.stop_command(), self.run, self.watcher)

    async def reset(self) -> None:
        """Back to a new server's state (`Lab.reset()`): stopped, the mailboxes it serves
        emptied (its index files with them), started again."""
        await self.stop()
        MailStore(Path(self.ctx.mail_root), durable=False).clear()
        self.restarts = 0
        self.stopping = False
        await self._spawn()
        await self.ready()

    async def run(self, command: list[str], *, check: bool = True) -> str:
        return await run_tool(command, check=check)

    def busy(self) -> bool:
        """A log line less than QUIET s ago (the server is still saying what it did)."""
        return asyncio.get_running_loop().time() - self.last_line < QUIET
