"""Draw a topology: networks, hosts with their services and addresses, links and states.

Text formats (Mermaid, Graphviz DOT) are produced here; SVG and PNG are DOT rendered by
Graphviz's `dot`, which the CLI runs.
"""

from __future__ import annotations

from lab.topology.addressing import assign_addresses, hostname_of
from lab.topology.model import Topology


def _services(topology: Topology, node: str) -> str:
    return ", ".join(sorted(s.value for s in topology.nodes[node].service_set()))


def _link_of(topology: Topology, node: str, network: str) -> tuple[str, str] | None:
    for name, link in topology.links.items():
        if link.node == node and link.network == network:
            return name, link.state
    return None


def _id(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def to_mermaid(topology: Topology) -> str:
    addresses = assign_addresses(topology)
    lines = ["flowchart LR"]
    for name, net in topology.networks.items():
        lines.append(f'  net_{_id(name)}(["{name}<br/>{net.subnet}"])')
    for name in topology.nodes:
        label = (
            f"<b>{name}</b><br/>{hostname_of(topology, name)}"
            f"<br/><i>{_services(topology, name)}</i>"
        )
        lines.append(f'  node_{_id(name)}["{label}"]')
    for name, node in topology.nodes.items():
        for network in node.networks:
            address = addresses[name].get(network, "")
            link = _link_of(topology, name, network)
            if link:
                arrow = "-.->" if link[1] == "down" else "===>"
                text = f"{address}<br/>{link[0]}: {link[1]}"
            else:
                arrow, text = "---", str(address)
            lines.append(f'  node_{_id(name)} {arrow}|"{text}"| net_{_id(network)}')
    for spec in topology.links.values():
        if spec.state == "down":
            lines.append(f"  style node_{_id(spec.node)} stroke-dasharray: 5 5")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(topology: Topology) -> str:
    addresses = assign_addresses(topology)
    out = [
        f'graph "{_dot_escape(topology.name)}" {{',
        "  graph [rankdir=LR, fontname=Helvetica, labelloc=t,"
        f' label="{_dot_escape(topology.name)}"];',
        "  node [fontname=Helvetica, fontsize=11];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for name, net in topology.networks.items():
        out.append(
            f'  "net:{name}" [shape=ellipse, style=filled, fillcolor="#dbe9f6",'
            f' label="{_dot_escape(name)}\\n{net.subnet}"];'
        )
    for name in topology.nodes:
        label = f"{name}\\n{hostname_of(topology, name)}\\n[{_services(topology, name)}]"
        out.append(f'  "node:{name}" [shape=box, style=rounded, label="{_dot_escape(label)}"];')
    for name, node in topology.nodes.items():
        for network in node.networks:
            address = addresses[name].get(network, "")
            link = _link_of(topology, name, network)
            attrs = f'label="{address}"'
            if link:
                style = "dashed" if link[1] == "down" else "bold"
                color = "#c0392b" if link[1] == "down" else "#27ae60"
                attrs = (
                    f'label="{address}\\n{_dot_escape(link[0])}: {link[1]}",'
                    f' style={style}, color="{color}"'
                )
            out.append(f'  "node:{name}" -- "net:{network}" [{attrs}];')
    out.append("}")
    return "\n".join(out) + "\n"
