"""What a real MTA must offer to run as a lab host's SMTP service (the Docker backend).

The node agent (lab.backends.docker.agent) stays the host: links, firewall, /etc/hosts,
resolv.conf, the control socket, events. For a node whose SMTP software is a real MTA it
runs the daemon as a child through this interface, which holds everything about the
software and nothing about processes: the files to write, the commands to run, how to
read its queue listing and its log. One module per software implements it
(lab/software/postfix.py, exim.py, sendmail.py).

The lab clock reaches the daemon through libfaketime: the agent keeps an offset file
(`FAKETIME_TIMESTAMP_FILE`) holding the host's clock offset, and the adapter says which
environment the daemon needs for it (`environment`).

Optional methods, for a daemon that is not Postfix-like (Exim, lab/software/exim.py), read
by the agent with getattr: `log_path()` (a file all the daemon's processes log to: the
agent makes it a FIFO and reads it), `due_command()` + `parse_due(output)` (the lab times
deferred mail is due, from the daemon's own records) with `run_queue_command()` (one
queue run that tries what is due), and `busy(daemon_pid)` (the daemon's processes at
work, where no directory shows it). sendmail (lab/software/sendmail.py) adds two:
`syslog_path()` (a syslog socket the agent listens on, one log line a datagram) and
`read_mailbox(user)` (the mailbox as the daemon's local delivery wrote it: an mbox).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from lab.topology.model import Node, Service, Software, Topology

FAKETIME_LIBRARY = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def smtp_software(node: Node) -> Software:
    """The software of the node's SMTP service: the one place that reads it."""
    return node.software_for(Service.smtp)


@dataclass(frozen=True)
class RenderContext:
    """What a configuration is rendered from: the node, its topology and lab facts."""

    name: str  # the node's name in the topology
    node: Node
    topology: Topology
    hostname: str
    addresses: dict[str, str]  # network -> this host's address
    mail_root: str  # where the per-user Maildirs go: MAIL_ROOT/USER/{tmp,new,cur}
    uid: int = 5000  # the one Unix account local deliveries run as
    gid: int = 5000
    tls_chain: str = ""  # key and certificate chain (PEM) issued by the lab CA; "": no TLS
    tls_ca: str = ""  # the lab CA's certificate
    # the user's own files for this software (`config:`): file name -> text; empty: render
    config_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """An event the adapter read from the daemon's log: a lab event kind and its data."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class LogReader(Protocol):
    """Turns the daemon's log lines, in order, into lab events (it may keep state)."""

    def feed(self, line: str, now: float) -> list[Event]: ...

    def attempts(self, queue_id: str) -> int: ...


class MtaAdapter(Protocol):
    """One real MTA, as the agent drives it."""

    software: Software
    family: str  # the image family it runs in (images/FAMILY/Dockerfile)

    def render(self, ctx: RenderContext) -> dict[str, str]:
        """Absolute path in the container -> file content."""
        ...

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        """Commands to run once the files are written, before the daemon starts."""
        ...

    def start_command(self) -> list[str]:
        """The daemon in the foreground (the agent's child)."""
        ...

    def stop_command(self) -> list[str] | None:
        """How to stop the daemon cleanly (None: a SIGTERM to the child)."""
        ...

    def environment(self, faketime_file: str) -> dict[str, str]:
        """The daemon's environment for lab time."""
        ...

    def flush_command(self) -> list[str]: ...

    def retry_command(self, queue_id: str) -> list[str]:
        """Try one deferred message now (its due time has come in lab time)."""
        ...

    def deferred_path(self) -> str:
        """The deferred queue: one file per message, its mtime the next try."""
        ...

    def queue_command(self) -> list[str]: ...

    def parse_queue(self, output: str, log: LogReader) -> list[dict[str, Any]]:
        """The queue listing in the built-in MTA's shape (lab.protocols.wire.QueueEntry)."""
        ...

    def content_command(self, queue_id: str) -> list[str]: ...

    def busy_paths(self) -> list[str]:
        """Directories that hold messages under way: the daemon is idle when they are empty."""
        ...

    def log_reader(self) -> LogReader: ...


def faketime_environment(faketime_file: str, library: str = FAKETIME_LIBRARY) -> dict[str, str]:
    """libfaketime's variables for a daemon on the lab clock: the offset file, read at each
    call, and file times left real (`NO_FAKE_STAT`: queue files' mtimes are next tries).
    A setuid daemon (Exim, sendmail) preloads the library by its bare name."""
    return {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": faketime_file,
        "FAKETIME_NO_CACHE": "1",
        "NO_FAKE_STAT": "1",
        "FAKETIME_DONT_RESET": "1",
    }


def on_lab_time(env: dict[str, str], command: list[str]) -> list[str]:
    """A command that delivers mail, run on lab time as its daemon is (`env`: what
    `environment` gave; empty before the daemon started: the command as it is)."""
    if not env:
        return command
    return ["env", *(f"{k}={v}" for k, v in env.items()), *command]


def faketime_offset(seconds: float) -> str:
    """The content of a libfaketime timestamp file for a clock `seconds` ahead."""
    return f"+{max(0.0, seconds):.3f}\n"


def programs_at_work(names: tuple[str, ...], except_pid: int | None) -> bool:
    """Whether a live process (not a zombie) of one of these program names runs, other
    than `except_pid` (the listening daemon): a real MTA receiving, delivering or running
    its queue, which no queue directory shows."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit() or int(entry) == except_pid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, _, tail = stat.partition(") ")
        if name.endswith(tuple(f"({n}" for n in names)) and not tail.startswith(("Z", "X")):
            return True
    return False
