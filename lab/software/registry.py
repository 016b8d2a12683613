"""Which adapter drives a node's SMTP software (and its other real servers), and which
image it runs in.

The table of real programs that run today: one adapter module each (lab/software/
postfix.py, lab/software/dovecot.py). The built-in software has no adapter: the agent
runs it as the host's services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.software import real_software
from lab.topology.model import Node, Service, Software

if TYPE_CHECKING:
    from lab.software.adapter import MtaAdapter
    from lab.software.server import ServerAdapter

# The image family (images/FAMILY/Dockerfile) each real program is installed by.
FAMILY: dict[Software, str] = {
    Software.postfix: "postfix",
    Software.exim: "exim",
    Software.sendmail: "sendmail",
    Software.dovecot: "dovecot",
    Software.fetchmail: "fetchmail",
}


def adapter_for(software: Software, connect_timeout: float = 3.0) -> MtaAdapter | None:
    """The adapter of a real MTA; None for the built-in one. Each adapter's module is
    loaded when it is asked for: a host's agent loads only its own."""
    if software is Software.postfix:
        from lab.software.postfix import PostfixAdapter

        return PostfixAdapter(connect_timeout)
    if software is Software.exim:
        from lab.software.exim import EximAdapter

        return EximAdapter(connect_timeout)
    if software is Software.sendmail:
        from lab.software.sendmail import SendmailAdapter

        return SendmailAdapter(connect_timeout)
    if software is Software.builtin:
        return None
    raise LookupError(f"no adapter for software {software.value!r} yet")


def image_families(node: Node) -> tuple[str, ...]:
    """The image families of the real programs the node runs (none: the node image)."""
    return tuple(dict.fromkeys(FAMILY[software] for software in real_software(node).values()))


def server_adapters(
    node: Node, configs: dict[str, str | None] | None = None
) -> dict[Service, ServerAdapter]:
    """The real servers of the node's services other than SMTP (Dovecot for pop3), each
    with the text of the node's own configuration for it (`configs`: service -> text)."""
    configs = configs or {}
    found: dict[Service, ServerAdapter] = {}
    if Service.pop3 in node.service_set() and node.software_for(Service.pop3) is Software.dovecot:
        from lab.software.dovecot import DovecotAdapter

        found[Service.pop3] = DovecotAdapter(configs.get(Service.pop3.value))
    return found
