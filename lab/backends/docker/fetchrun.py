"""fetchmail as a host's fetch service, run by the node agent when the node's fetch
software is fetchmail (lab.software.fetchmail renders its rcfiles and reads its output).

fetchmail is a client: each run is one child, `fetchmail -f RCFILE --nodetach` (one
poll, in the foreground, under libfaketime on the host's clock), awaited. A run starts on
`maillab fetch NODE` and on a link's `on_up: [fetch]` hook (`run_all`, every job in
order) and on each job's `poll` interval on the lab clock while the host's links are up,
as the built-in fetch service polls. One run at a time per host. Its output goes on to
the container's log (`maillab logs NODE`) and becomes the built-in fetcher's events:
fetch.start, then fetch.message / fetch.deleted / fetch.kept / fetch.error as read,
then fetch.done with the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lab.services.fetch.schedule import PollSchedule
from lab.services.host import Host
from lab.software.adapter import Event, faketime_offset
from lab.software.fetchmail import (
    FetchContext,
    FetchmailLog,
    FetchRun,
    command,
    environment,
    plan,
)
from lab.topology.model import Service, Software
from lab.topology.records import RecordTable

log = logging.getLogger("maillab.node")

RUN_TIMEOUT = 300.0  # seconds one fetchmail run may take


class Fetchmail:
    """The fetch service of a host whose fetch software is fetchmail."""

    def __init__(
        self,
        host: Host,
        ctx: FetchContext,
        runtime: Path,
        link_up: Callable[[], bool],
    ):
        self.host = host
        self.ctx = ctx
        self.plan = plan(ctx)
        self.runs = self.plan.runs
        self.offset_file = runtime / f"{host.name}.fetchmail.faketime"
        self.link_up = link_up
        self.schedule = PollSchedule(
            host,
            lambda: [(run.poll, f"fetchmail:{run.label}") for run in self.runs],
            self._poll,
            lambda: not self.stopping and self.link_up(),
        )
        self.lock = asyncio.Lock()
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    @classmethod
    async def start_for(
        cls,
        host: Host,
        records: RecordTable,
        runtime: Path,
        link_up: Callable[[], bool],
        config_text: str | None = None,
    ) -> Fetchmail | None:
        """The host's fetchmail, started, when its node's fetch software is fetchmail."""
        if host.node.software_for(Service.fetch) is not Software.fetchmail:
            return None
        ctx = FetchContext(
            name=host.name,
            node=host.node,
            topology=host.topology,
            hostname=host.hostname,
            addresses=dict(host.addresses),
            state_dir=str(host.state_dir),
            records=records,
            config_text=config_text,
        )
        service = cls(host, ctx, runtime, link_up)
        await service.start()
        return service

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for path, text in self.plan.files.items():
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o600)
            target.chmod(0o600)  # fetchmail refuses an rcfile others can read
            target.write_text(text)
        ca = Path(self.ctx.ca_file)
        ca.parent.mkdir(parents=True, exist_ok=True)
        if self.host.tls is not None:
            ca.write_bytes(self.host.tls.ca_pem)
        (Path(self.ctx.state_dir) / "fetch").mkdir(parents=True, exist_ok=True)
        self.schedule.arm_all()

    async def stop(self) -> None:
        self.stopping = True
        self.schedule.disarm_all()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()

    async def reset(self) -> None:
        """Forget every UID fetched (fetchmail's id files) and poll as at the start
        (`Lab.reset()`, after the host's clock and links)."""
        await self.stop()
        for run in self.runs:
            Path(run.idfile).unlink(missing_ok=True)
        self.stopping = False
        self.schedule.arm_all()

    def link_changed(self) -> None:
        """A link changed state: poll while the host's links are up, stop when down."""
        self.schedule.disarm_all()
        self.schedule.arm_all()

    def busy(self) -> bool:
        return self.lock.locked()

    # polling -----------------------------------------------------------------------------

    async def _poll(self, index: int, due: float) -> None:
        self.schedule.taken(index)
        if self.stopping or not self.link_up():
            return
        await self.run(self.runs[index])
        if not self.stopping and self.link_up():
            self.schedule.arm(index, after=due)  # every `poll` seconds, however long a run takes

    # running -----------------------------------------------------------------------------

    async def run_all(self) -> int:
        """Every job now, in order (fetchmail from ip-up); the messages handed over."""
        total = 0
        for run in self.runs:
            total += await self.run(run)
        return total

    async def run(self, run: FetchRun) -> int:
        async with self.lock:
            return await self._run(run)

    def _set_offset(self) -> None:
        tmp = self.offset_file.with_suffix(".tmp")
        tmp.write_text(faketime_offset(self.host.clock.offset))
        tmp.replace(self.offset_file)

    async def _run(self, run: FetchRun) -> int:
        self.host.emit("fetch.start", **run.start_data())
        reader = FetchmailLog(run)
        self._set_offset()
        env = dict(os.environ)
        env.update(environment(str(self.offset_file), self.ctx.ca_file))
        code = -1
        try:
            self.proc = proc = await asyncio.create_subprocess_exec(
                *command(run),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
            code = await asyncio.wait_for(self._read(proc, reader), RUN_TIMEOUT)
        except TimeoutError:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
            self._emit(reader._error("fetch", f"fetchmail ran longer than {RUN_TIMEOUT:.0f}s"))
        except OSError as exc:
            self._emit(reader._error("fetch", f"cannot run fetchmail: {exc}"))
        finally:
            self.proc = None
        for event in reader.finish(code) if code >= 0 else []:
            self._emit(event)
        self.host.emit(
            "fetch.done", job=run.label, count=reader.fetched, errors=len(reader.errors), exit=code
        )
        return reader.fetched

    async def _read(self, proc: asyncio.subprocess.Process, reader: FetchmailLog) -> int:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            sys.stderr.write(text + "\n")  # the container's log: `maillab logs NODE`
            try:
                events = reader.feed(text)
            except Exception as exc:  # a line we misread is no reason to stop reading
                log.error("reading fetchmail's line %r: %s", text, exc)
                continue
            for event in events:
                self._emit(event)
        return await proc.wait()

    def _emit(self, event: Event) -> None:
        self.host.emit(event.kind, **event.data)
