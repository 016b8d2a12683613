"""The topology layer: a mail world as pure data (model, checks, loader,
schema, addressing).

Nothing here opens a socket or talks to Docker; a Lab (lab.harness) brings a topology
to life on a backend.
"""

from lab.topology.addressing import assign_addresses, hostname_of
from lab.topology.loader import LoadedTopology, load, load_text
from lab.topology.model import ROLES, Service, Topology
from lab.topology.records import RecordTable
from lab.topology.software import Software

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
