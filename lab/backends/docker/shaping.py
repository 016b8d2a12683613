"""Impairments on the Docker backend: queueing disciplines on the lab's own segments.

Every interface of a lab host is one end of a veth pair whose other end is a port of the
network's bridge, in the run's switch (lab.backends.docker.provision). Traffic leaving a
host goes out of its interface; traffic coming to it goes out of its switch port. So a
link's impairment (a host's attachment) is a qdisc on both: the host's interface, in
its namespace, and its switch port; a network's is a qdisc on every port of its bridge
(each packet crosses one port on its way to a host). Nothing is set on the machine's own
interfaces: the commands run in the switch, on its ports and in the hosts' namespaces.

A network whose hosts all run the lab's own services gets no qdisc: every connection on
it is one an agent opens, and the agent paces it whole (rate, delay, jitter, loss) on
its lab clock, as the in-process backend does, so `clock advance` plays an 8-minute
transfer in order with the dials in seconds (lab.backends.docker.net). What follows is
for the networks where a real daemon (Postfix, Exim, sendmail, Dovecot, fetchmail) has
connections of its own.

The qdisc is netem (rate, delay, jitter, loss) where the kernel has it. A kernel built
without netem (sch_netem) still shapes the rate, with tbf; delay, jitter and loss are
then the agents' (`agent_table`): each host holds the bytes of the connections its
services open for their due time, in real time, as netem would (lab.services.pacing),
so a real MTA's own connections get the rate but not those three. Either way the pacing
is real time: a 100 KB message over 33.6 kbit/s takes 25 s of real time on this backend.
"""

from __future__ import annotations

from typing import Any

from lab.topology.impair import Impairment, combine

Port = tuple[str, str, str]  # switch port, the host's namespace in the switch, its interface
PROBE = "tc qdisc add dev lo root netem delay 0ms && tc qdisc del dev lo root"
TBF = "burst 2000 limit 262144"  # a burst of one full frame, a queue TCP can fill


def qdisc(parts: list[Impairment], netem: bool) -> str | None:
    """The qdisc arguments for the combined impairments, or None for none."""
    shape = combine(parts)
    if not any(shape.values()):
        return None
    rate = f"rate {round(shape['rate'])}bit" if shape["rate"] else ""
    if netem:
        args = ["netem"]
        if shape["delay"]:
            args.append(f"delay {shape['delay'] * 1000:g}ms")
            if shape["jitter"]:
                args.append(f"{shape['jitter'] * 1000:g}ms")
        if shape["loss"]:
            args.append(f"loss {shape['loss'] * 100:g}%")
        if rate:
            args.append(rate)
        return " ".join(args)
    if not rate:
        return None  # delay, jitter and loss only: the agents do them (agent_table)
    return f"tbf {rate} {TBF}"


def agent_table(
    networks: dict[str, Impairment], links: dict[tuple[str, str], Impairment]
) -> tuple[dict[str, Any], list[Any]]:
    """What every agent is told to pace itself: on the networks it paces on the lab
    clock all of it; elsewhere delay, jitter and loss when the kernel has no netem (each
    agent leaves the rate to the qdisc there)."""
    knobs = {
        "include": {"rate", "delay", "jitter", "loss"},
        "mode": "json",
        "exclude_defaults": True,
    }
    return (
        {n: i.model_dump(**knobs) for n, i in networks.items()},  # type: ignore[arg-type]
        [[n, net, i.model_dump(**knobs)] for (n, net), i in links.items()],  # type: ignore[arg-type]
    )


def script(
    ports: dict[tuple[str, str], Port],
    networks: dict[str, Impairment],
    links: dict[tuple[str, str], Impairment],
    netem: bool,
    *,
    only: tuple[str, str] | None = None,
) -> str:
    """The tc commands that make every port's qdisc what the impairments say. `only`:
    that attachment's, deleted and added again, which drops what waited in them (the
    line hung up: what the modem had not sent is lost)."""
    lines = []
    for (node, network), (port, netns, ifname) in sorted(ports.items()):
        if only is not None and (node, network) != only:
            continue
        own = [links[(node, network)]] if (node, network) in links else []
        shared = [networks[network]] if network in networks else []
        for where, parts in ((f"-n {netns} ", own), ("", own + shared)):
            dev = ifname if where else port
            args = qdisc(parts, netem)
            if args is None or only is not None:
                lines.append(f"tc {where}qdisc del dev {dev} root 2>/dev/null || true")
            if args is not None:
                verb = "add" if only is not None else "replace"
                lines.append(f"tc {where}qdisc {verb} dev {dev} root {args}")
    return "\n".join(["set -e", *lines]) + "\n"
