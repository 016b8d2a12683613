"""The `maillab` command line.

Every command has --help; commands whose output is data have --json. Errors meant for
people (LabError) are printed without a traceback and set the exit code.

The commands live by group: topology.py (validate, schema, graph), checks.py (check),
running.py (up, down, status, ui), acting.py (send, link, flush, fetch, queue, mailbox,
clock, events, trace, reset), faults.py (fault, schedule), docker.py (shell, exec, logs,
gc), images.py (images build, list); output.py holds what they share (tables, events,
JSON, errors, options).
"""

from __future__ import annotations

import click

from lab import __version__
from lab.cli import acting, checks, docker, faults, images, running, topology

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maillab")
def main() -> None:
    """maillab: a local mail lab.

    Describe a small mail world in a topology file (LAN clients, a dial-up hub, an ISP
    smarthost, a fake DNS, POP servers, remote MTAs), bring it up, and watch what mail
    does between the machines.
    """


for _command in (
    topology.validate,
    topology.schema,
    topology.graph,
    checks.check,
    running.up,
    running.down,
    running.status,
    running.ui,
    docker.gc,
    docker.shell,
    docker.exec_,
    docker.logs,
    acting.send,
    acting.link,
    acting.impair,
    acting.flush,
    acting.fetch,
    acting.queue,
    acting.mailbox,
    acting.clock,
    acting.events,
    acting.trace,
    acting.reset,
    faults.fault_group,
    faults.schedule,
    images.images_group,
):
    main.add_command(_command)
