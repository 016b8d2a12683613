"""Addresses: each node's address on each network, allocated deterministically when omitted.

Explicit addresses are reserved first; then, in the order nodes appear in the file, each
'auto' attachment takes the lowest free host address of its subnet. The same file always
gives the same addresses, on every backend.
"""

from __future__ import annotations

import ipaddress

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
    for node_name, node in topology.nodes.items():
        for net_name, value in node.networks.items():
            if value != "auto" or net_name not in topology.networks:
                continue
            subnet = topology.networks[net_name].subnet
            for candidate in subnet.hosts():
                if candidate not in taken[net_name]:
                    result[node_name][net_name] = candidate
                    taken[net_name].add(candidate)
                    break
            else:
                raise AddressPoolExhausted(node_name, net_name, subnet)
    return result


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
