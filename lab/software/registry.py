"""Which adapter drives a node's SMTP software, and which image it runs in.

The table of real MTAs that run today: one adapter module each (lab/software/postfix.py).
The built-in MTA has no adapter: the agent runs it as one of the host's services.
"""

from __future__ import annotations

from lab.software import real_software
from lab.software.adapter import MtaAdapter
from lab.software.exim import EximAdapter
from lab.software.postfix import PostfixAdapter
from lab.topology.model import Node, Software

# The image family (images/FAMILY/Dockerfile) each real program is installed by.
FAMILY: dict[Software, str] = {
    Software.postfix: "postfix",
    Software.exim: "exim",
    Software.sendmail: "sendmail",
    Software.dovecot: "dovecot",
    Software.fetchmail: "fetchmail",
}


def adapter_for(software: Software, connect_timeout: float = 3.0) -> MtaAdapter | None:
    """The adapter of a real MTA; None for the built-in one."""
    if software is Software.postfix:
        return PostfixAdapter(connect_timeout)
    if software is Software.exim:
        return EximAdapter(connect_timeout)
    if software is Software.builtin:
        return None
    raise LookupError(f"no adapter for software {software.value!r} yet")


def image_families(node: Node) -> tuple[str, ...]:
    """The image families of the real programs the node runs (none: the node image)."""
    return tuple(dict.fromkeys(FAMILY[software] for software in real_software(node).values()))
