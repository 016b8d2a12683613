"""Addresses: each node's address on each network, allocated deterministically when omitted.

Explicit addresses are reserved first; then, in the order nodes appear in the file, each
'auto' attachment takes the lowest free host address of its subnet. The same file always
gives the same addresses, on every backend.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from lab.topology.model import Topology

Addresses = dict[str, dict[str, ipaddress.IPv4Address]]


class AddressPoolExhausted(ValueError):
    def __init__(self, node: str, network: str, subnet: ipaddress.IPv4Network):
        super().__init__(f"no free address left in {subnet} for node {node!r}")
        self.node, self.network = node, network


def assign_addresses(topology: Topology) -> Addresses:
    """node -> network -> address, for every attachment of every node."""
    taken: dict[str, set[ipaddress.IPv4Address]] = {name: set() for name in topology.networks}
    result: Addresses = {name: {} for name in topology.nodes}
    for node_name, node in topology.nodes.items():
        for net_name, value in node.networks.items():
            if value != "auto" and net_name in topology.networks:
                address = ipaddress.IPv4Address(value)
                result[node_name][net_name] = address
                taken[net_name].add(address)
    # Each network's free addresses in order, one generator for all its 'auto' nodes:
    # every address before the last one allocated is taken, so the search resumes there
    # (a file with thousands of nodes is not quadratic).
    free = {name: _free(net.subnet, taken[name]) for name, net in topology.networks.items()}
    for node_name, node in topology.nodes.items():
        for net_name, value in node.networks.items():
            if value != "auto" or net_name not in topology.networks:
                continue
            candidate = next(free[net_name], None)
            if candidate is None:
                subnet = topology.networks[net_name].subnet
                raise AddressPoolExhausted(node_name, net_name, subnet)
            result[node_name][net_name] = candidate
            taken[net_name].add(candidate)
    return result


def _free(
    subnet: ipaddress.IPv4Network, taken: set[ipaddress.IPv4Address]
) -> Iterator[ipaddress.IPv4Address]:
    return (address for address in subnet.hosts() if address not in taken)


def hostname_of(topology: Topology, node: str) -> str:
    """A node's FQDN: its hostname, or NODE.TOPOLOGY.test when none is given."""
    host = topology.nodes[node].hostname
    return host or f"{node}.{topology.name}.test".lower()


def network_of(topology: Topology, address: ipaddress.IPv4Address) -> str | None:
    """The lab network an address lies in, if any."""
    for name, network in topology.networks.items():
        if address in network.subnet:
            return name
    return None
