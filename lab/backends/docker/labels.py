"""The labels every Docker object of a lab carries, and who owns a run.

Every container, network and volume maillab creates is labelled with the run id, the
lab's name and its owner: the host name, process id and process start time of the
process that holds the lab. `maillab gc` and the reaper remove only objects with these
labels whose owner is gone; nothing without them is ever touched.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "io.maillab"
LABEL_RUN = f"{PREFIX}.run"  # run id, 8 hex digits, unique per `up`
LABEL_LAB = f"{PREFIX}.lab"  # the lab's (topology's or --name) name
LABEL_NODE = f"{PREFIX}.node"  # the topology node a container plays
LABEL_KIND = f"{PREFIX}.kind"  # "node" | "switch"
LABEL_OWNER = f"{PREFIX}.owner"  # "HOST:PID:START" of the holding process
LABEL_CREATED = f"{PREFIX}.created"  # Unix time the run began (the reaper's age check)
LABEL_STATE = f"{PREFIX}.state"  # a temporary state directory the run made (removed with it)


def process_start(pid: int) -> str:
    """A process's start time in clock ticks since boot ('' when there is no such process).

    With the pid it identifies a process even after its pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may contain spaces
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]  # field 22 of the whole line: starttime


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid))

    @classmethod
    def parse(cls, label: str) -> Owner | None:
        host, sep, rest = label.rpartition(":")
        host2, sep2, pid = host.rpartition(":")
        if not sep or not sep2 or not pid.isdigit():
            return None
        return cls(host2, int(pid), rest)

    def label(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    def alive(self) -> bool | None:
        """True or False for an owner on this host; None when it is another host's."""
        if self.host != socket.gethostname():
            return None
        return process_start(self.pid) == self.start and self.start != ""


def labels(run: str, lab: str, kind: str, node: str = "", owner: Owner | None = None) -> dict:
    found = {
        LABEL_CREATED: str(int(time.time())),
        LABEL_RUN: run,
        LABEL_LAB: lab,
        LABEL_KIND: kind,
        LABEL_OWNER: (owner or Owner.me()).label(),
    }
    if node:
        found[LABEL_NODE] = node
    return found
