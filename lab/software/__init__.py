"""MTA software a node can run: the built-in MTA everywhere, real MTAs in containers.

A name -> description table, as backends look software up by the node's `software` field.
The built-in MTA (lab.services.mta) runs on every backend. Postfix, Exim and sendmail are
devices under test that run inside containers: they need the Docker backend, whose
adapters will render their configuration, flush and list their queues and turn their
logs into events.
"""

from __future__ import annotations

from lab.errors import LabError

SOFTWARE: dict[str, str] = {
    "builtin": "the built-in MTA (lab.services.mta), on every backend",
    "postfix": "Postfix, in a container (Docker backend)",
    "exim": "Exim 4, in a container (Docker backend)",
    "sendmail": "sendmail, in a container (Docker backend)",
}

BUILTIN_ONLY_BACKENDS = {"inprocess"}


def check_supported(node: str, software: str, backend: str) -> None:
    """Raise a LabError when a node's software cannot run on this backend."""
    if software not in SOFTWARE:
        raise LabError(
            f"node {node!r}: unknown software {software!r}; expected one of: {', '.join(SOFTWARE)}"
        )
    if software != "builtin" and backend not in BUILTIN_ONLY_BACKENDS:
        raise LabError(
            f"node {node!r}: software {software!r} ({SOFTWARE[software]}) is not available yet:"
            f" the {backend} backend runs the built-in MTA only in this version; use"
            " software: builtin"
        )
    if software != "builtin" and backend in BUILTIN_ONLY_BACKENDS:
        raise LabError(
            f"node {node!r}: software {software!r} ({SOFTWARE[software]}) does not run on the"
            f" {backend} backend; use software: builtin, or the Docker backend"
        )
