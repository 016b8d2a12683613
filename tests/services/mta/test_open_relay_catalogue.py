"""The classic open-relay address tricks against every MTA of every catalogue topology
(topologies/*.yaml), from a stranger: a client the test adds on one of the MTA's
networks, at an address its `relay_from` does not cover.

Each node is refused every trick at RCPT TO (the built-in MTA with a 5xx, never a 4xx
that asks to come back; Postfix may defer with 454 4.7.1, its default safety net), and
queues nothing: the percent hack (`user%other.example@node`), bang paths
(`other.example!user@node`, `other.example!user`), source routes
(`@node:user@other.example`), quoted local parts (`"user@other.example"@node`), a foreign
address literal, trailing dots and upper case, each against the node's own domain, its
host name, its address literal and its relay domains. A node whose relay_from covers
every address a stranger could have (an open relay, by the topology's own words) is
checked the other way: it does relay a plain foreign address, so the test knows whom it
is talking to.

Topologies with real software (Postfix) are checked on the Docker backend. A node's
scripted faults and its links' impairments are taken away for the test: its relay policy
is what is asked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.protocols.smtp import SubmitResult
from lab.topology import load
from lab.topology.addressing import assign_addresses
from lab.topology.model import Node, Service, Software, Topology

ROOT = Path(__file__).resolve().parents[3]
CATALOGUE = sorted((ROOT / "topologies").glob("*.yaml"))
OTHER = "other.example"
STRANGER = "stranger"


def covered(node: Node, topology: Topology, address: ipaddress.IPv4Address) -> bool:
    """The node's relay_from covers this client address (as policy.client_may_relay)."""
    for item in node.relay_from:
        net = topology.networks[item].subnet if item in topology.networks else item
        if address in ipaddress.IPv4Network(net, strict=False):
            return True
    return False


def stranger_spot(topology: Topology, name: str) -> tuple[str, ipaddress.IPv4Address, bool]:
    """(network, a free address on it, whether relay_from covers it) for a stranger that
    can reach node `name`: uncovered if any of the node's networks has such an address,
    and away from the topology's clients if it can be."""
    node = topology.nodes[name]
    used = {a for addresses in assign_addresses(topology).values() for a in addresses.values()}
    spots = []
    for network in node.networks:
        subnet = topology.networks[network].subnet
        for address in reversed(list(subnet.hosts())[-64:]):
            if address not in used:
                spots.append((network, address, covered(node, topology, address)))
                break
    # an uncovered one first; then one without the topology's clients on it (the node's
    # own users, whom a configuration of its own, as office-postfix's, may let relay)
    clients = {
        network
        for other in topology.nodes.values()
        if Service.client in other.service_set()
        for network in other.networks
    }
    return min(spots, key=lambda spot: (spot[2], spot[0] in clients))


def cases() -> list[Any]:
    found = []
    for path in CATALOGUE:
        topology = load(path).model
        builtin = all(
            node.software_for(service) is Software.builtin
            for node in topology.nodes.values()
            for service in node.service_set()
        )
        # a lab with real software anywhere runs on Docker only
        marks = [] if builtin else [pytest.mark.lab_backend("docker")]
        for name, node in topology.nodes.items():
            if Service.smtp not in node.service_set():
                continue
            found.append(pytest.param(path, name, id=f"{path.stem}-{name}", marks=marks))
    return found


def tricks(topology: Topology, name: str, address: ipaddress.IPv4Address) -> list[str]:
    node = topology.nodes[name]
    hostname = topology.nodes[name].hostname or f"{name}.{topology.name}.test"
    mine = [*node.local_domains[:1], hostname, f"[{address}]", *node.relay_domains]
    found = [
        f"user@{OTHER}",
        f"USER@{OTHER.upper()}",
        f"user@{OTHER}.",
        "user@[10.99.99.99]",
        f"{OTHER}!user",
        f"user%{OTHER}",
    ]
    for domain in dict.fromkeys(mine):
        found += [
            f"user%{OTHER}@{domain}",
            f"USER%{OTHER.upper()}@{domain.upper()}",
            f"user%{OTHER}@{domain}.",
            f"{OTHER}!user@{domain}",
            f"@{domain}:user@{OTHER}",
            f"@{domain},@{domain}:user@{OTHER}",
            f'"user@{OTHER}"@{domain}',
            f'"user%{OTHER}"@{domain}',
            f"user%{OTHER}%{domain}@{domain}",
            f"user@{OTHER}@{domain}",
        ]
    return found


def with_stranger(topology: Topology, name: str) -> tuple[Topology, bool]:
    """The topology with the stranger added, and the node's scripted faults (a 421 to
    every connection, ...) and the links' impairments (a modem that hangs up after a few
    KB) taken away: its relay policy is what is asked here."""
    topology.nodes[name].faults = []
    for link in topology.links.values():
        link.impair = None
    network, address, is_covered = stranger_spot(topology, name)
    topology.nodes[STRANGER] = Node.model_validate(
        {
            "role": "client",
            "hostname": "stranger.pool.other.example",
            "networks": {network: str(address)},
            "submit_to": name,
        }
    )
    return topology, is_covered


def send(lab: Lab, name: str, to: list[str]) -> SubmitResult:
    return lab.send(STRANGER, via=name, mail_from="", to=to, subject="relay test")


@pytest.mark.parametrize(("path", "name"), cases())
def test_no_relay_trick_gets_through(
    lab_factory: Callable[..., Lab], path: Path, name: str
) -> None:
    topology, is_open = with_stranger(load(path).model, name)
    own = assign_addresses(topology)[name]
    with lab_factory(topology) as lab:
        for link in topology.links:
            lab.link(link).up()
        lab.settle()
        before = len(lab.events)
        if is_open:  # the topology says anyone who can reach it may relay: it does
            result = send(lab, name, [f"user@{OTHER}"])
            assert result.rcpt_replies[f"user@{OTHER}"].code == 250, result.to_json()
            return
        addresses = [a for literal in own.values() for a in tricks(topology, name, literal)]
        # the built-in MTA refuses for good; Postfix's own safety net, when a user's
        # main.cf leaves its default smtpd_relay_restrictions, is defer_unauth_destination
        # (454 4.7.1 Relay access denied): refused too, though the client may come back
        builtin = topology.nodes[name].software_for(Service.smtp) is Software.builtin
        lowest = 500 if builtin else 400
        # a few per session: Postfix slows down after 10 errors and hangs up after 20;
        # Exim and sendmail hang up after a few syntax errors (Exim's
        # smtp_max_synprot_errors is 3), so they get one address per session
        software = topology.nodes[name].software_for(Service.smtp)
        size = 8 if software in (Software.builtin, Software.postfix) else 1
        for batch in (addresses[i : i + size] for i in range(0, len(addresses), size)):
            result = send(lab, name, batch)
            assert result.greeting is not None and result.greeting.code == 220, result.to_json()
            assert not result.accepted, result.to_json()
            for address, reply in result.rcpt_replies.items():
                assert reply.code >= lowest, (address, str(reply))
            if result.mail_reply is not None and result.mail_reply.code < 400:
                assert set(result.rcpt_replies) == set(batch)  # each one was asked
        lab.settle()
        queued = [e for e in lab.events[before:] if e.kind == "queue.queued" and e.node == name]
        assert queued == []
