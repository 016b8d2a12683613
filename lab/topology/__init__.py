"""The topology layer: a mail world as pure data (model, checks, loader,
schema, addressing).

Nothing here opens a socket or talks to Docker; a Lab (lab.harness) brings a topology
to life on a backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.topology.addressing import assign_addresses, hostname_of
    from lab.topology.loader import LoadedTopology, load, load_text
    from lab.topology.model import ROLES, Service, Topology
    from lab.topology.records import RecordTable
    from lab.topology.software import Software

# loaded when first used: a host's agent needs the model, not the loader and its checks
_WHERE = {
    "assign_addresses": "addressing",
    "hostname_of": "addressing",
    "LoadedTopology": "loader",
    "load": "loader",
    "load_text": "loader",
    "ROLES": "model",
    "Service": "model",
    "Topology": "model",
    "RecordTable": "records",
    "Software": "software",
}

__all__ = [
    "ROLES",
    "LoadedTopology",
    "RecordTable",
    "Service",
    "Software",
    "Topology",
    "assign_addresses",
    "hostname_of",
    "load",
    "load_text",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lab.topology.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
