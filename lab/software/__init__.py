"""The software a node's services can run: the built-in software everywhere, real
programs (Postfix, Exim, sendmail, Dovecot, fetchmail) in containers.

The names are the topology's `Software` enum (lab.topology.software), the one list of
them; which service each can run is its `OFFERED` table, and a node says which runs each
of its services (`Node.software_for`). `SOFTWARE` (name -> description, for messages) is
derived from the enum here, and a name without an entry fails at import.

One module per software. lab/software/builtin.py is the built-in software's entry: it runs
on every backend. The real programs are devices under test that run inside containers;
each gets its module here (postfix.py, dovecot.py, ...) holding its entry and its adapter for the
Docker backend: render its configuration, drive it, turn its logs into events. A real
program the Docker backend does not run yet (not in `ON_DOCKER`) is refused there with
"not available yet"; the in-process backend runs the built-in software only.

`check_node` is what a backend asks before it brings a node up; `real_software` is what
`--backend auto` reads to choose Docker for a topology that needs it.
"""

from __future__ import annotations

from lab.errors import LabError
from lab.software import builtin
from lab.topology.model import Node, Service, Topology
from lab.topology.software import OFFERED, SOFTWARE_SERVICES, Software, one_of

# Real programs, what they are, for messages.
REAL: dict[Software, str] = {
    Software.postfix: "Postfix, in a container (Docker backend)",
    Software.exim: "Exim 4, in a container (Docker backend)",
    Software.sendmail: "sendmail, in a container (Docker backend)",
    Software.dovecot: "Dovecot's POP3 server, in a container (Docker backend)",
    Software.fetchmail: "fetchmail, in a container (Docker backend)",
}

_DESCRIPTIONS: dict[Software, str] = {builtin.SOFTWARE: builtin.DESCRIPTION, **REAL}

_MISSING = [software.value for software in Software if software not in _DESCRIPTIONS]
if _MISSING:
    raise ImportError(f"lab.software has no entry for software {', '.join(_MISSING)}")

SOFTWARE: dict[str, str] = {software.value: _DESCRIPTIONS[software] for software in Software}

# The real programs the Docker backend runs in this version (the others are planned).
ON_DOCKER: frozenset[Software] = frozenset(
    {Software.postfix, Software.exim, Software.sendmail, Software.dovecot, Software.fetchmail}
)

# Backends that run the built-in software only.
BUILTIN_ONLY_BACKENDS = {"inprocess"}


def check_supported(
    node: str, software: str, backend: str, service: Service | str = Service.smtp
) -> None:
    """Raise a LabError when `software` cannot run `service` of `node` on this backend."""
    if software not in SOFTWARE:
        raise LabError(
            f"node {node!r}: unknown software {software!r}; expected one of: {', '.join(SOFTWARE)}"
        )
    name = Software(software)
    service = Service(service)
    if name not in OFFERED[service]:
        raise LabError(
            f"node {node!r}: software {software!r} does not run {service.value}; expected"
            f" {one_of([s.value for s in OFFERED[service]])}"
        )
    if name is Software.builtin:
        return
    what = f"node {node!r}: {service.value} software {software!r} ({SOFTWARE[software]})"
    if backend in BUILTIN_ONLY_BACKENDS:
        raise LabError(
            f"{what} does not run on the {backend} backend, which runs the built-in software"
            " only; use --backend docker (or --backend auto)"
        )
    if name not in ON_DOCKER:
        names = ["builtin", *sorted(s.value for s in ON_DOCKER)]
        runs = f"{', '.join(names[:-1])} and {names[-1]}"
        raise LabError(
            f"{what} is not available yet in this version: the {backend} backend runs"
            f" {runs} only; use software: builtin for {service.value}"
        )


def check_fields(name: str, node: Node) -> None:
    """Raise a LabError naming the node's fields its real software cannot honour (a
    user's own configuration says for itself what it does: nothing is checked then)."""
    software = node.software_for(Service.smtp)
    if node.config_for(Service.smtp) is not None:
        return
    problems: list[str] = []
    if software is Software.postfix:
        from lab.software.postfix import unsupported

        problems = unsupported(node)
    elif software is Software.exim:
        from lab.software import exim

        problems = exim.unsupported(node)
    elif software is Software.sendmail:
        from lab.software import sendmail

        problems = sendmail.unsupported(node)
    if problems:
        raise LabError(
            f"node {name!r} runs {software.value}, which cannot do what its fields ask:\n  "
            + "\n  ".join(problems)
        )


def check_node(name: str, node: Node, backend: str) -> None:
    """Raise a LabError when some service of node `name` cannot run on this backend."""
    for service, software in real_software(node).items():
        check_supported(name, software.value, backend, service)
    check_fields(name, node)


def check_topology(topology: Topology, backend: str) -> None:
    """Raise one LabError naming every node service that cannot run on this backend."""
    problems: list[str] = []
    for name, node in topology.nodes.items():
        before = len(problems)
        for service, software in real_software(node).items():
            try:
                check_supported(name, software.value, backend, service)
            except LabError as exc:
                problems.append(str(exc))
        # the fields are worth checking only against software that runs here
        if backend not in BUILTIN_ONLY_BACKENDS and len(problems) == before:
            try:
                check_fields(name, node)
            except LabError as exc:
                problems.append(str(exc))
    if problems:
        raise LabError("\n".join(problems))


def real_software(node: Node) -> dict[Service, Software]:
    """The node's services that run real software (not builtin), in service order."""
    services = node.service_set()
    found = {s: node.software_for(s) for s in SOFTWARE_SERVICES if s in services}
    return {s: software for s, software in found.items() if software is not Software.builtin}


def needs_real_hosts(topology: Topology) -> list[str]:
    """What in the topology needs real hosts (the Docker backend): 'node runs software
    (service)' for each node service with real software."""
    return [
        f"{name} runs {software.value} ({service.value})"
        for name, node in topology.nodes.items()
        for service, software in real_software(node).items()
    ]
