"""What the SMTP front end (smtpd.py and the policies of policy.py) needs of the MTA.

The front end is written against this Protocol, never against `MtaService` itself:
the host it runs on, the node's settings, the address book, the resolver, the state
the front keeps (greylist, fault counts and faults added at run time), and the one way
a received message goes in (acceptance.py). `MtaService` provides it; mypy checks that
it does (make_smtp_factory is given one).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol

from lab.services.faultgate import Gates
from lab.services.host import Host
from lab.services.mta.parts import Accepts
from lab.services.mta.routing import AddressBook
from lab.services.resolver import Resolver
from lab.topology.model import Fault, Node


class Mta(Accepts, Protocol):
    """The MTA as its SMTP front sees it; `accept` (parts.Accepts) is the one way a
    received message goes in, durably (the 250 may follow; OSError when it cannot be
    written)."""

    @property
    def host(self) -> Host: ...

    @property
    def node(self) -> Node: ...

    @property
    def book(self) -> AddressBook: ...

    @property
    def resolver(self) -> Resolver: ...

    @property
    def probing(self) -> bool:
        """A readiness probe is talking: faults neither trigger nor count."""
        ...

    @property
    def runtime_faults(self) -> list[Fault]:
        """Faults added while the lab runs, after the node's own."""
        ...

    @property
    def fault_gates(self) -> Gates:
        """Each fault's memory (by its index among all faults): hits, draws, rate counts."""
        ...

    @property
    def greylist(self) -> MutableMapping[tuple[str, str, str], float]:
        """(client, sender, recipient) -> lab time it was first seen."""
        ...
