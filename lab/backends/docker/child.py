"""What the node agent's supervisors of real programs share (daemon.py for a real MTA,
servers.py for Dovecot): running one of the program's tools, and stopping the program."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from lab.errors import LabError


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
