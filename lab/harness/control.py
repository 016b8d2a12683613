"""The control channel of a running lab: how `maillab status`, `send`, `link`... reach the
process that `maillab up` started.

`maillab up` registers the lab in the registry directory ($MAILLAB_HOME, default
~/.maillab/labs) as NAME.json (pid, backend, topology, state directory, control socket)
and serves a Unix socket there, in the wire of lab.protocols.wire: one request per
connection, {"op": ..., "args": {...}}, and one answer, {"ok": true, "result": ...} or
{"ok": false, "error": "..."}, each a line of JSON; the ops are `LabOp`s.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.protocols import wire
from lab.protocols.wire import Handler, LabOp
from lab.topology.defaults import DEFAULT_BODY, DEFAULT_SUBJECT
from lab.topology.units import parse_duration


def registry_dir() -> Path:
    base = os.environ.get("MAILLAB_HOME")
    path = Path(base) if base else Path.home() / ".maillab"
    path = path / "labs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def process_alive(pid: int) -> bool:
    """The process exists and has not finished (a finished child not yet reaped has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc here: kill(pid, 0) is all we know


def running_labs() -> dict[str, dict[str, Any]]:
    """Registered labs whose process is alive; stale entries are removed."""
    labs = {}
    for entry in sorted(registry_dir().glob("*.json")):
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(int(info.get("pid", 0))):
            entry.unlink(missing_ok=True)
            Path(info.get("socket", "")).unlink(missing_ok=True)
            continue
        labs[info["name"]] = info
    return labs


def find_lab(name: str | None) -> dict[str, Any]:
    labs = running_labs()
    if name is not None:
        if name not in labs:
            known = ", ".join(labs) or "none"
            raise LabError(f"no running lab named {name!r} (running: {known})")
        return labs[name]
    if not labs:
        raise LabError("no lab is running; start one with `maillab up FILE` (or `make lab-up`)")
    if len(labs) > 1:
        raise LabError(f"several labs are running ({', '.join(labs)}); choose one with --lab NAME")
    return next(iter(labs.values()))


def request(name: str | None, op: LabOp | str, timeout: float = 600.0, **args: Any) -> Any:
    """Send one request to a running lab and return its result (LabError on failure)."""
    info = find_lab(name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(info["socket"])
        except OSError as exc:
            raise LabError(
                f"cannot reach lab {info['name']!r} at {info['socket']}: {exc}"
            ) from None
        sock.sendall(wire.request(op, args))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise LabError(f"lab {info['name']!r} closed the connection without an answer")
    return wire.result_of(wire.decode(data))


class ControlServer:
    """Serves requests for one lab, on the lab's own event loop."""

    def __init__(
        self,
        lab: Any,
        name: str,
        source: Path | None,
        extra_ops: dict[str, Handler] | None = None,
    ):
        self.lab = lab
        self.backend = lab.backend
        self.name = name
        self.dir = registry_dir()
        self.socket_path = self.dir / f"{name}.sock"
        self.entry = self.dir / f"{name}.json"
        self.source = source
        self.stopped: asyncio.Event | None = None  # created on the loop
        self.server: asyncio.AbstractServer | None = None
        self.ops: dict[str, Handler] = {
            LabOp.STATUS: self._status,
            LabOp.SEND: self._send,
            LabOp.LINK: self._link,
            LabOp.IMPAIR: self._impair,
            LabOp.FLUSH: self._flush,
            LabOp.FETCH: self._fetch,
            LabOp.QUEUE: self._queue,
            LabOp.MAILBOX: self._mailbox,
            LabOp.CLOCK: self._clock,
            LabOp.EVENTS: self._events,
            LabOp.TRACE: self._trace,
            LabOp.DOWN: self._down,
            LabOp.DNS: self._dns,
            LabOp.FAULT: self._fault,
            LabOp.SCHEDULE: self._schedule,
            LabOp.RESET: self._reset,
        }
        # what the layers above add (the CLI: LabOp.UI, which starts the web server)
        self.ops.update(extra_ops or {})

    async def start(self) -> None:
        if self.name in running_labs():
            raise LabError(f"a lab named {self.name!r} is already running; use --name")
        self.socket_path.unlink(missing_ok=True)
        self.stopped = asyncio.Event()
        self.server = await asyncio.start_unix_server(
            self._handle, path=str(self.socket_path), limit=wire.LINE_LIMIT
        )
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "backend": self.backend.name,
            "topology": str(self.source or ""),
            "socket": str(self.socket_path),
            "state_dir": str(getattr(self.backend, "state_dir", "")),
        }
        tmp = self.entry.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.entry)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.entry.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await wire.answer(self.ops, wire.decode(await reader.readline() or b"{}"))
        except LabError as exc:  # not a request of this wire
            answer = wire.error(str(exc))
        writer.write(wire.encode(answer))
        try:
            await writer.drain()
        finally:
            writer.close()

    # operations ------------------------------------------------------------------------

    async def _status(self) -> Any:
        status = await self.backend.status()
        status["topology"] = status["name"]
        status["name"] = self.name  # the name the lab runs under (--name)
        return status

    async def _send(
        self,
        from_node: str,
        mail_from: str,
        to: list[str],
        subject: str = DEFAULT_SUBJECT,
        body: str | None = None,
        raw: str | None = None,
        via: str | None = None,
    ) -> Any:
        if raw is not None:
            content = (
                raw.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")
            )
        else:
            content = await self.backend.message(
                from_node,
                mail_from=mail_from,
                to=to,
                subject=subject,
                body=body if body is not None else DEFAULT_BODY,
            )
        result = await self.backend.send(
            from_node, mail_from=mail_from, to=to, content=content, via=via
        )
        return wire.encode_submit(result)

    async def _link(self, link: str, state: str) -> Any:
        await self.backend.set_link(link, state == "up")
        await self.backend.settle()
        return {"link": link, "state": (await self.backend.link_state(link)).value}

    async def _impair(self, target: str, settings: dict[str, Any], clear: bool = False) -> Any:
        found = await self.backend.impair(target, settings, clear=clear)
        return {"target": target, "impair": found}

    async def _flush(self, node: str) -> Any:
        return {
            "node": node,
            "tried": await self.backend.flush(node),
            "queue": await self.backend.queue(node),
        }

    async def _fetch(self, node: str) -> Any:
        return {"node": node, "fetched": await self.backend.fetch(node)}

    async def _queue(self, node: str) -> Any:
        return await self.backend.queue(node)

    async def _mailbox(self, node: str, user: str) -> Any:
        return await self.backend.mailbox(node, user)

    async def _clock(self, advance: str) -> Any:
        ran = await self.backend.advance(parse_duration(advance))
        return {"advanced": advance, "timers": ran, "now": await self.backend.now()}

    async def _events(self, since: int = 0) -> Any:
        return [wire.encode_event(e) for e in self.backend.events.find(since=since)]

    async def _trace(self, ref: str) -> Any:
        # Lab.trace works on the event list only; safe to call on the loop
        return [wire.encode_event(e) for e in self.lab.trace(ref)]

    async def _dns(
        self,
        name: str,
        type: str | None = None,
        values: list[str] | None = None,
        fault: str | None = None,
    ) -> Any:
        if type:
            await self.backend.set_dns(name, type, values or [])
        else:
            await self.backend.set_dns_fault(name, fault)
        return {"name": name}

    async def _fault(
        self, action: str, node: str | None = None, spec: dict[str, Any] | None = None
    ) -> Any:
        """add NODE spec, clear NODE, dns spec (a DNS fault rule), dns-clear."""
        if action == "add" and node and spec is not None:
            await self.backend.add_fault(node, spec)
            return {"node": node, "added": spec}
        if action == "clear" and node:
            return {"node": node, "cleared": await self.backend.clear_faults(node)}
        if action == "dns" and spec is not None:
            await self.backend.add_dns_fault(spec)
            return {"node": "dns", "added": spec}
        if action == "dns-clear":
            return {"node": "dns", "cleared": await self.backend.clear_dns_faults()}
        raise LabError(f"unknown fault action {action!r}")

    async def _schedule(self, link: str, spec: dict[str, Any] | None = None) -> Any:
        await self.backend.set_schedule(link, spec)
        return {"link": link, **(await self.backend.status())["links"][link]}

    async def _reset(self) -> Any:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self.backend.reset()
        return {"name": self.name, "seconds": round(loop.time() - began, 4)}

    async def _down(self) -> Any:
        assert self.stopped is not None
        self.stopped.set()
        return {"name": self.name, "stopping": True}
