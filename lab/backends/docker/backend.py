"""The Docker backend: a container per host, with the topology's own addresses.

Each host of the topology is a container running the agent (`python -m
lab.backends.docker.agent`): the same built-in services as in-process, on real
interfaces. The lab's networks are layer-2 segments of the run's own: a small "switch"
container per run holds one Linux bridge per network in its network namespace, and a
veth pair joins each host's interface to its bridge (provision.py). So every host has
exactly the addresses the topology gives it (192.168.10.11, not a remapped one),
policies, Received headers and rDNS read as in the file, and two labs of the same
topology never collide: their segments live in different namespaces, and Docker's
address pools are not involved (see docs/architecture.md).

A link that goes down is a filter on the host's interface (refuse: resets and ICMP
unreachable at once; blackhole: silence), both ways, after the host has cut the
connections that crossed it (net.py). The lab clock, queue listing, flush, fetch,
mailboxes and events go through each agent's control socket (control.py), a Unix socket
in a directory the run shares with its containers. A person reaches the lab from this
machine through the operator node (a LAN client): it forwards ports on a small
management network to the servers it can reach, so the hub sees them come from the LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from lab.backends.base import LabBackend
from lab.backends.docker.control import LONG, HostProxy
from lab.backends.docker.provision import Provision
from lab.errors import LabError
from lab.runtime.clock import LabClock
from lab.runtime.events import EventBus
from lab.services.hostservices import SERVICE_PORTS
from lab.software import check_topology, real_software
from lab.topology.impair import Impairment
from lab.topology.model import Topology, WhenDown

STEP_LEAD = 0.25  # seconds of lab time every host is brought to before a step's timers


class DockerBackend(LabBackend[HostProxy]):
    name = "docker"

    def __init__(
        self,
        topology: Topology,
        *,
        state_dir: Path | None = None,
        connect_timeout: float = 3.0,
        dns_timeout: float = 1.0,
        durable: bool = True,
        ready_timeout: float = 60.0,
        reap_after: float = 60.0,
        progress: Any = None,
    ):
        super().__init__(
            topology,
            state_dir=state_dir,
            connect_timeout=connect_timeout,
            dns_timeout=dns_timeout,
            durable=durable,
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self._offset = 0.0  # lab time = real time + offset, the same in every container
        # the lab's own timers (scheduled dials), run in order with the hosts' (advance)
        self.own_clock = LabClock()
        self.events = EventBus(self.clock_time, self.state_dir / "events.jsonl")
        self.provision = Provision(
            topology,
            self.addresses,
            self.operator,
            self.events,
            state_dir=self.state_dir,
            own_dir=self._own_dir,
            options={
                "connect_timeout": connect_timeout,
                "dns_timeout": dns_timeout,
                "durable": durable,
            },
            reap_after=reap_after,
            progress=progress,
        )
        self.run = self.provision.run
        self.net_impair: dict[str, Impairment] = {}
        self.link_impair: dict[tuple[str, str], Impairment] = {}
        self.netem: bool | None = None  # whether the kernel has netem, once asked

    @property
    def containers(self) -> dict[str, Any]:
        return self.provision.containers

    # lifecycle ---------------------------------------------------------------------------

    async def up(self) -> None:
        check_topology(self.topology, self.name)
        provision = self.provision
        await provision.create()
        for name in self.topology.nodes:
            self.handles[name] = HostProxy(name, provision.socket(name), self.events)

        # each host's services start as soon as its agent answers (the DNS hosts' first:
        # the others' wait for them), while the other agents are still starting
        began = last_agent = time.perf_counter()
        dns_first = provision.dns_nodes()

        async def bring(node: str) -> None:
            nonlocal last_agent
            try:
                await self.handles[node].connect(
                    self.ready_timeout, lambda: provision.running(node)
                )
            except LabError as exc:
                raise await provision.failed(node, exc) from None
            last_agent = max(last_agent, time.perf_counter())
            if node not in dns_first:
                await asyncio.gather(*dns_hosts)
            await self._start([node])

        dns_hosts = [asyncio.ensure_future(bring(n)) for n in dns_first]
        others = [
            asyncio.ensure_future(bring(n)) for n in self.topology.nodes if n not in dns_first
        ]
        provision.say("waiting for the hosts and their services to answer")
        try:
            await asyncio.gather(*dns_hosts, *others)
        except BaseException:
            # one host failed: the others stop here too (an agent connected after `down`
            # closed the control connections would leave its connection open)
            for task in (*dns_hosts, *others):
                task.cancel()
            await asyncio.gather(*dns_hosts, *others, return_exceptions=True)
            raise
        # every host listens now: only then do queues left by an earlier run go out
        await asyncio.gather(*(p.run_queues() for p in self.handles.values()))
        provision.timings["agents"] = last_agent - began
        provision.timings["services"] = time.perf_counter() - last_agent
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        self.own_clock.start()
        self.dialer.start(self.own_clock)
        self.listen_links()
        await self.impair_as_declared()
        self.events.emit(
            "lab",
            "lab.up",
            backend=self.name,
            nodes=list(self.topology.nodes),
            run=self.run,
            seed=self.topology.seed,
        )

    # impairments: qdiscs on the lab's segments (shaping.py) ----------------------------------

    async def shape(self, network: str, node: str | None, impairment: Impairment | None) -> None:
        networks, links = dict(self.net_impair), dict(self.link_impair)
        table: dict[Any, Impairment] = links if node else networks
        key = (node, network) if node else network
        table.pop(key, None)
        if impairment is not None:
            table[key] = impairment
        await self._apply(networks, links)

    async def shape_as_declared(self) -> None:
        networks = {n: net.impair for n, net in self.topology.networks.items() if net.impair}
        links: dict[tuple[str, str], Impairment] = {
            (link.node, link.network): link.impair
            for link in self.topology.links.values()
            if link.impair
        }
        if networks or links or self.net_impair or self.link_impair:
            await self._apply(networks, links)

    async def _apply(
        self, networks: dict[str, Impairment], links: dict[tuple[str, str], Impairment]
    ) -> None:
        from lab.backends.docker import shaping

        if self.netem is None:
            code, _ = await asyncio.to_thread(self.provision.in_switch, shaping.PROBE)
            self.netem = code == 0
        on_clock = self._on_clock(networks, links)
        kernel_nets = {n: i for n, i in networks.items() if n not in on_clock}
        kernel_links = {k: i for k, i in links.items() if k[1] not in on_clock}
        text = shaping.script(self.provision.ports, kernel_nets, kernel_links, self.netem)
        code, out = await asyncio.to_thread(self.provision.in_switch, text)
        if code != 0:
            raise LabError(f"shaping the lab's segments failed:\n{out}")
        if on_clock or not self.netem:  # the agents' part (shaping.agent_table)
            table = shaping.agent_table(networks, links)
            await asyncio.gather(*(p.pace(*table, sorted(on_clock)) for p in self.handles.values()))
        self.net_impair, self.link_impair = networks, links

    def _on_clock(
        self, networks: dict[str, Impairment], links: dict[tuple[str, str], Impairment]
    ) -> set[str]:
        """The impaired networks whose hosts all run the lab's own services: the agents
        pace every connection on them, on the lab clock (shaping.py)."""
        impaired = set(networks) | {network for _, network in links}
        return {
            network
            for network in impaired
            if not any(
                real_software(self.topology.nodes[node])
                for node, nets in self.addresses.items()
                if network in nets
            )
        }

    async def qdiscs(self, node: str, network: str) -> str:
        """`tc qdisc show` of an attachment: its interface in the host, its switch port."""
        port, netns, ifname = self.provision.ports[(node, network)]
        script = f"tc -n {netns} qdisc show dev {ifname}; tc qdisc show dev {port}"
        _, out = await asyncio.to_thread(self.provision.in_switch, script)
        return str(out)

    async def line_down(self, node: str, network: str) -> None:
        from lab.backends.docker import shaping

        on_clock = self._on_clock(self.net_impair, self.link_impair)
        if network in on_clock:  # the agents' lines: the cut of the connections ends them
            return
        if (node, network) not in self.link_impair and network not in self.net_impair:
            return
        assert self.netem is not None
        text = shaping.script(
            self.provision.ports,
            {n: i for n, i in self.net_impair.items() if n not in on_clock},
            {k: i for k, i in self.link_impair.items() if k[1] not in on_clock},
            self.netem,
            only=(node, network),
        )
        await asyncio.to_thread(self.provision.in_switch, text)

    async def _start(self, nodes: list[str]) -> None:
        async def one(node: str) -> None:
            try:
                await self.handles[node].start(
                    self._offset, self.own_clock.epoch, self.ready_timeout
                )
            except LabError as exc:
                raise await self.provision.failed(node, exc) from None

        await asyncio.gather(*(one(n) for n in nodes))

    async def down(self) -> None:
        await self.own_clock.stop()
        provision = self.provision
        if self.handles:
            with provision.phase("down: settle"), contextlib.suppress(Exception):
                await self.settle(timeout=5.0)
            with provision.phase("down: stop agents"):
                await asyncio.gather(*(p.stop() for p in self._live()), return_exceptions=True)
                for proxy in self.handles.values():
                    await proxy.close()
        with provision.phase("down: remove"):
            await provision.remove()
        self.events.emit("lab", "lab.down")
        self.events.close()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def settle(self, timeout: float = 60.0, quick: bool = False) -> None:
        """Every host idle, and no event anywhere since the last look. `quick`: between
        the steps of a clock advance, where each host awaited what it started."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: tuple[int, ...] | None = None
        while loop.time() < deadline:
            remaining = max(0.1, deadline - loop.time())
            results = await asyncio.gather(*(p.settled(remaining, quick) for p in self._live()))
            counts = tuple(events for events, _ in results)
            if counts == last and all(idle for _, idle in results):
                return
            last = counts

    def _live(self) -> list[HostProxy]:
        return [p for p in self.handles.values() if not p.closed]

    async def reset_hosts(self) -> None:
        """Every agent resets its host at once (a real MTA restarts meanwhile); lab time
        is real time again, in every container."""
        self.own_clock.reset()
        self._offset = 0.0
        await asyncio.gather(*(p.reset(self.own_clock.epoch) for p in self._live()))

    async def cut_far_ends(self, link: str) -> int:
        """A link that drops and refuses: the servers on the far side of its connections
        cut their ends first (each sends its reset while the link is up, and a reply
        written before it is in the link host's socket already); then the link's host
        cuts its own ends and puts its rules in (net.py). A blackhole link cuts only its
        host's ends, after its rules: the far ends time out."""
        spec = self.topology.links[link]
        address = self.addresses[spec.node].get(spec.network)
        if spec.when_down != WhenDown.refuse or address is None:
            return 0
        # no new connection across it meanwhile (its host refuses every SYN), else one
        # opened after the far ends' cut would lose its host's end first
        await self.handles[spec.node].link_closing(link)
        peers = [p for n, p in self.handles.items() if n != spec.node and not p.closed]
        return sum(await asyncio.gather(*(p.cut_served(str(address)) for p in peers)))

    # the clock ---------------------------------------------------------------------------

    def clock_time(self) -> float:
        return time.time() + self._offset

    def clock_offset(self) -> float:
        return self._offset

    def _move_to(self, when: float) -> None:
        """Lab time to `when` (never back), here and on the lab's own clock."""
        self._offset += max(0.0, when - self.clock_time())
        self.own_clock.catch_up(self._offset)

    async def advance(self, seconds: float) -> int:
        """Every host's timers, in lab-time order across hosts, settling after each."""
        if seconds < 0:
            raise ValueError("the lab clock only moves forward")
        await self.settle()
        target = self.clock_time() + seconds
        ran = 0
        while True:
            live = self._live()
            nexts = await asyncio.gather(*(p.next_timer() for p in live))
            due = [n for n in nexts if n is not None and n <= target]
            mine = self.own_clock.next_due()
            if mine is not None and mine <= target and (not due or mine <= min(due)):
                # a scheduled dial first (at a tie too, as in process: it was set first);
                # the hosts' clocks just before it, so their timers at that time follow
                self._move_to(mine)
                before = mine - 1e-6
                await asyncio.gather(*(p.advance_to(before, LONG) for p in self._live()))
                ran += await self.own_clock.advance(0.0)
                await self.settle(quick=True)
                continue
            if not due:
                break
            when = min(due)
            self._move_to(when)
            # Every host's clock at `when` before any timer due then runs: a timer's work
            # that asks another host (a queue run's DNS query) finds it at that time
            # already, not at the last step's (a DNS fault window that ended). The hosts
            # with nothing due go to `when` at once; those with timers to a quarter
            # second before (so that no clock runs into `when` in real time while the
            # others are still moving), and then to `when`, running them.
            at = [p for p, n in zip(live, nexts, strict=True) if n is not None and n <= when]
            rest = [p for p in live if p not in at]
            counts = await asyncio.gather(
                *(p.advance_to(when - STEP_LEAD, LONG) for p in at),
                *(p.advance_to(when, LONG) for p in rest),
            )
            counts += await asyncio.gather(*(p.advance_to(when, LONG) for p in at))
            ran += sum(counts)
            await self.settle(quick=True)
        self._move_to(target)
        await asyncio.gather(*(p.advance_to(target) for p in self._live()))
        await self.settle()
        self.events.emit("lab", "clock.advanced", seconds=seconds, timers=ran)
        return ran

    # what is this backend's own ----------------------------------------------------------

    def _lab_endpoints(self, node: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for service, port in SERVICE_PORTS.items():
            if service not in {s.value for s in self.topology.nodes[node].service_set()}:
                continue
            for network, address in self.addresses[node].items():
                found.setdefault(service, f"{address}:{port}")
                found[f"{service}@{network}"] = f"{address}:{port}"
        return found

    def endpoints(self, node: str) -> dict[str, str]:
        """The operator's forwarded ports: the only addresses of a node's services that
        this machine reaches (the operator container, on a management network of this
        machine). A lab address such as 10.20.0.25 is not one: from here it routes to the
        real network, so a service without a forward is left out (`status` lists it as
        inside the lab)."""
        lab_endpoints = self._lab_endpoints(node)
        endpoints: dict[str, str] = {}
        for service in SERVICE_PORTS:
            forwarded = self.provision.forwards.get((node, service))
            if service in lab_endpoints and forwarded and self.provision.operator_ip:
                endpoints[service] = f"{self.provision.operator_ip}:{forwarded}"
        return endpoints

    def node_status(self, node: str) -> dict[str, Any]:
        return {
            "lab_endpoints": self._lab_endpoints(node),
            "container": self.provision.container_name(node),
        }

    def lab_status(self) -> dict[str, Any]:
        return {"run": self.run}

    def operator_address(self) -> str:
        if self.operator is not None and self.addresses[self.operator]:
            return str(next(iter(self.addresses[self.operator].values())))
        return "127.0.0.1"

    # hands-on ----------------------------------------------------------------------------

    def container_name(self, node: str) -> str:
        return self.provision.container_name(node)

    def logs(self, node: str, tail: int | None = None) -> str:
        return self.provision.logs(node, tail)
