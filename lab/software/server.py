"""What a real server other than the MTA must offer to run one of a host's services on the
Docker backend: Dovecot as the POP3 server first (lab/software/dovecot.py).

The node agent supervises it as a child (lab.backends.docker.servers): writes the files
it renders, runs its preparation commands, starts it in the foreground, waits for its
greeting on the service's port, reads its log (each line goes on to the container's log
and through the adapter's reader into the lab's events), restarts it when it dies and
stops it with the host. Unlike an MTA it has no queue and no clock to follow.

A node's own configuration for the software (`config:`, a file beside the topology) is
read on the machine running the lab (lab.software.userconfig) and travels in the run's
plan to the container, where the adapter takes it in.
"""

from __future__ import annotations

from typing import Protocol

from lab.software.adapter import Event, RenderContext
from lab.topology.model import Service, Software


class LineReader(Protocol):
    """Turns the server's log lines, in order, into lab events (it may keep state)."""

    def feed(self, line: str, now: float) -> list[Event]: ...


class ServerAdapter(Protocol):
    """One real server of a host's service, as the agent drives it."""

    software: Software
    family: str  # the image family it runs in (images/FAMILY/Dockerfile)
    service: Service
    port: int  # where it answers once ready
    greeting: bytes  # what its first line starts with

    def render(self, ctx: RenderContext) -> dict[str, str]:
        """Absolute path in the container -> file content."""
        ...

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        """Commands to run once the files are written, before the server starts."""
        ...

    def start_command(self) -> list[str]:
        """The server in the foreground (the agent's child), its log on stdout/stderr."""
        ...

    def stop_command(self) -> list[str] | None:
        """How to stop it cleanly (None: a SIGTERM to the child)."""
        ...

    def log_reader(self) -> LineReader: ...
