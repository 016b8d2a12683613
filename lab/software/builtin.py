"""The built-in MTA (lab.services.mta): the software of a node unless it says otherwise.

It runs on every backend, in process or in the node image's container, as one of the
host's services (lab.services.hostservices); there is nothing to render or translate.
"""

from __future__ import annotations

from lab.topology.model import Software

SOFTWARE = Software.builtin
DESCRIPTION = "the built-in MTA (lab.services.mta), on every backend"
