"""The built-in software (lab.services: the MTA, the POP3 server, the fetcher, DNS and the
client): what runs a node's services unless it names other software.

It runs on every backend, in process or in the node image's container, as the host's
services (lab.services.hostservices); there is nothing to render or translate.
"""

from __future__ import annotations

from lab.topology.model import Software

SOFTWARE = Software.builtin
DESCRIPTION = "the built-in software (lab.services), on every backend"
