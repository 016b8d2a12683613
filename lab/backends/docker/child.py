"""What the node agent's supervisors of real programs share (daemon.py for a real MTA,
servers.py for Dovecot): waiting for the program's greeting, running one of its tools,
and stopping it; and the probe of the built-in services the agent runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from lab.errors import LabError
from lab.services.host import Host
from lab.topology.model import Service


async def run_tool(command: list[str], *, check: bool = True) -> str:
    """One of the program's tools (postqueue, exim4 -bp, ...): its standard output; a
    LabError with its standard error when it fails and `check`."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(command)} failed ({proc.returncode}): "
            + err.decode("utf-8", "replace").strip()
        )
    return out.decode("utf-8", "replace")


async def stop_child(
    proc: asyncio.subprocess.Process | None,
    stop_command: list[str] | None,
    run: Callable[..., Awaitable[str]],
    watcher: asyncio.Task[None] | None,
) -> None:
    """Stop the program: its own stop command, else a SIGTERM; killed after 10 s; then
    the task reading its log is given 2 s to finish."""
    if proc is None or proc.returncode is not None:
        return
    if stop_command:
        with contextlib.suppress(Exception):
            await run(stop_command, check=False)
    else:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
    if watcher is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher, 2)


async def await_greeting(
    proc: asyncio.subprocess.Process | None, name: str, port: int, want: bytes, timeout: float
) -> str:
    """The program's greeting (a line starting with `want`) on the host's loopback port,
    retried until `timeout`; its QUIT answered before the connection closes. A LabError
    when the program exits meanwhile or never greets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Exception | None = None
    while loop.time() < deadline:
        if proc is not None and proc.returncode is not None:
            raise LabError(f"{name} exited ({proc.returncode})")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"QUIT\r\n")
            with contextlib.suppress(OSError, TimeoutError):
                await writer.drain()
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if line.startswith(want):
                return line.decode("utf-8", "replace").strip()
            last = LabError(f"greeted {line!r}")
        except (OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise LabError(f"{name} did not greet within {timeout}s: {last}")


async def probe_services(host: Host) -> dict[str, str]:
    """Each built-in service of the host answers as a client expects: 220, +OK, a DNS
    answer (the agent's readiness probe)."""
    address = next(iter(host.addresses.values()), "127.0.0.1")
    found: dict[str, str] = {}
    services = host.node.service_set()
    for service, port, want in ((Service.smtp, 25, b"220"), (Service.pop3, 110, b"+OK")):
        if service in services:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 10)
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.write(b"QUIT\r\n")
            # the service's answer to QUIT is awaited: its events belong to the probe
            with contextlib.suppress(OSError, TimeoutError):
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if not line.startswith(want):
                raise LabError(f"{service.value} on {address}:{port} greeted {line!r}")
            found[service.value] = line.decode("utf-8", "replace").strip()
    if Service.dns in services:
        import dns.asyncquery  # (only a DNS host's probe needs dnspython)
        import dns.message

        query = dns.message.make_query(host.hostname, "A")
        answer = await dns.asyncquery.udp(query, address, timeout=5)
        found["dns"] = f"{host.hostname} -> " + " ".join(
            str(r) for rrset in answer.answer for r in rrset
        )
    return found
