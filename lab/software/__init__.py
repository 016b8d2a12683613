"""MTA software a node can run: the built-in MTA everywhere, real MTAs in containers.

The names are the topology's `Software` enum (lab.topology.model), the one list of them;
`SOFTWARE` (name -> description, as backends look software up by the node's `software`
field) is derived from it, and a name without an entry here fails at import.

One module per software. lab/software/builtin.py is the built-in MTA's entry: it runs on
every backend. Postfix, Exim and sendmail are devices under test that run inside
containers; each will get its module here (postfix.py, exim.py, sendmail.py) holding its
entry and its adapter for the Docker backend: render its configuration, flush and list
its queue, turn its logs into events. Until its module exists, a real MTA has only a
description in `PLANNED` and `check_supported` refuses it on every backend.
"""

from __future__ import annotations

from lab.errors import LabError
from lab.software import builtin
from lab.topology.model import Software

# Real MTAs whose module is not written yet: what they are, for messages.
PLANNED: dict[Software, str] = {
    Software.postfix: "Postfix, in a container (Docker backend)",
    Software.exim: "Exim 4, in a container (Docker backend)",
    Software.sendmail: "sendmail, in a container (Docker backend)",
}

_DESCRIPTIONS: dict[Software, str] = {builtin.SOFTWARE: builtin.DESCRIPTION, **PLANNED}

_MISSING = [software.value for software in Software if software not in _DESCRIPTIONS]
if _MISSING:
    raise ImportError(f"lab.software has no entry for software {', '.join(_MISSING)}")

SOFTWARE: dict[str, str] = {software.value: _DESCRIPTIONS[software] for software in Software}

BUILTIN_ONLY_BACKENDS = {"inprocess"}

# Real MTAs that run today, and where (lab/software/<name>.py holds each adapter).
RUNNING: dict[str, set[str]] = {Software.postfix.value: {"docker"}}


def check_supported(node: str, software: str, backend: str) -> None:
    """Raise a LabError when a node's software cannot run on this backend."""
    if software not in SOFTWARE:
        raise LabError(
            f"node {node!r}: unknown software {software!r}; expected one of: {', '.join(SOFTWARE)}"
        )
    if software in RUNNING and backend in RUNNING[software]:
        return
    if software != builtin.SOFTWARE and backend not in BUILTIN_ONLY_BACKENDS:
        raise LabError(
            f"node {node!r}: software {software!r} ({SOFTWARE[software]}) is not available yet:"
            f" the {backend} backend runs the built-in MTA only in this version; use"
            " software: builtin"
        )
    if software != builtin.SOFTWARE and backend in BUILTIN_ONLY_BACKENDS:
        raise LabError(
            f"node {node!r}: software {software!r} ({SOFTWARE[software]}) does not run on the"
            f" {backend} backend; use software: builtin, or the Docker backend"
        )
