"""What a Docker lab takes from the engine and gives back: the run's plan (interfaces,
resolvers, /etc/hosts, the operator's forwards), its switch and layer-2 segments, a
container per host, readiness, logs, and removal (see docs/architecture.md).

Every object carries the run's labels (lab.backends.docker.labels); the switch ends when
the process holding the lab ends, and `maillab gc` removes whatever a killed run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import pickle
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab.backends.docker.gc import runtime_dir
from lab.backends.docker.labels import LABEL_CREATED, LABEL_RUN, LABEL_STATE, Owner, labels
from lab.errors import LabError
from lab.protocols.wire import TOPOLOGY_FILE
from lab.runtime.events import EventBus
from lab.services.hostservices import SERVICE_PORTS
from lab.services.tls import LabCA
from lab.software.registry import image_families
from lab.software.userconfig import node_config_files
from lab.topology.addressing import Addresses, hostname_of
from lab.topology.model import Service, Topology

RUNTIME = "/run/maillab"  # in the containers: the run's spec, CA and control sockets
STATE = "/var/lib/maillab"  # in the containers: the host's queue and mailboxes
FORWARD_BASE = 2500  # the operator's forwarded ports: 2501, 2502, ...
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")


def _ifnames(networks: list[str]) -> dict[str, str]:
    """Interface names: the network's name where Linux allows it, ethN otherwise."""
    names: dict[str, str] = {}
    for index, network in enumerate(networks):
        ok = _IFNAME.match(network) and network not in ("lo", "eth0", "res")
        names[network] = network if ok and network not in names.values() else f"eth{index + 1}"
    return names


def _free_subnet(
    taken: list[ipaddress.IPv4Network], candidates: list[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network:
    for candidate in candidates:
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise LabError("no free subnet for the lab's own segments")


class Provision:
    """One run of a Docker lab on the engine: its plan, containers, segments and clean-up."""

    def __init__(
        self,
        topology: Topology,
        addresses: Addresses,
        operator: str | None,
        events: EventBus,
        *,
        state_dir: Path,
        own_dir: bool,
        options: dict[str, Any],
        reap_after: float = 60.0,
        progress: Any = None,
    ):
        self.topology = topology
        self.addresses = addresses
        self.operator = operator
        self.events = events
        self.state_dir = state_dir
        self._own_dir = own_dir
        self.options = options  # connect_timeout, dns_timeout, durable: for the agents
        self.reap_after = reap_after  # seconds: how old a dead owner's run must be to reap
        self.progress = progress
        self.run = secrets.token_hex(4)
        self.owner = Owner.me()
        self.runtime = runtime_dir(self.run)
        self.client: Any = None
        self.image = ""
        self.images: dict[str, str] = {}  # node -> its image, when not the node image
        self.containers: dict[str, Any] = {}  # node (or "_switch") -> Container
        # (node, network) -> its switch port, the host's namespace there, its interface
        self.ports: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.network: Any = None  # the management network of the operator
        self.forwards: dict[tuple[str, str], int] = {}  # (node, service) -> operator port
        self.operator_ip = ""
        self.spec: dict[str, Any] = {}
        self.resolver_addresses: dict[str, str] = {}  # node -> its resolver-segment address
        self.res_net = ipaddress.IPv4Network("100.127.53.0/24")
        self._creating: asyncio.Future[None] | None = None
        # seconds each phase of `up` and `down` took (the bench reports them)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase of bringing the lab up or down (into `timings`)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - began

    # naming ------------------------------------------------------------------------------

    def container_name(self, node: str) -> str:
        return f"maillab-{self.run}-{node}"

    def _labels(self, kind: str, node: str = "") -> dict[str, str]:
        found = labels(self.run, self.topology.name, kind, node, self.owner)
        if self._own_dir:  # a state directory made for this run goes when the run is collected
            found[LABEL_STATE] = str(self.state_dir)
        return found

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def socket(self, node: str) -> Path:
        return self.runtime / f"{node}.sock"

    # the plan ----------------------------------------------------------------------------

    def dns_nodes(self) -> list[str]:
        return [n for n, s in self.topology.nodes.items() if Service.dns in s.service_set()]

    def _plan(self) -> dict[str, Any]:
        """What each host needs to know: interfaces, resolver, /etc/hosts, forwards."""
        topology, addresses = self.topology, self.addresses
        dns_nodes = self.dns_nodes()
        taken = [n.subnet for n in topology.networks.values()]
        res_net = _free_subnet(
            taken, [ipaddress.IPv4Network(f"100.{b}.53.0/24") for b in range(127, 63, -1)]
        )
        res_hosts = res_net.hosts()
        nodes: dict[str, Any] = {}
        self.resolver_addresses = {}
        dns_res = ""
        if dns_nodes:
            dns_res = str(next(res_hosts))
        for name in topology.nodes:
            mine = addresses[name]
            dns_server = None
            for dns_node in dns_nodes:
                shared = [n for n in addresses[dns_node] if n in mine]
                if shared:
                    dns_server = str(addresses[dns_node][shared[0]])
                    break
            if dns_server is None and dns_nodes:
                dns_server = str(next(iter(addresses[dns_nodes[0]].values())))
            reach_dns = dns_nodes and any(n in mine for d in dns_nodes for n in addresses[d])
            resolver = None
            if name in dns_nodes:
                resolver = str(next(iter(mine.values())))
            elif reach_dns:
                resolver = dns_server
            elif dns_nodes:  # a host the lab DNS is not on a network with: a resolver segment
                self.resolver_addresses[name] = str(next(res_hosts))
                resolver = dns_res
            hosts: list[tuple[str, list[str]]] = []
            for other, nets in addresses.items():
                shared = [n for n in nets if n in mine]
                if not shared:
                    continue
                fqdn = hostname_of(topology, other)
                names = list(dict.fromkeys([fqdn, fqdn.split(".")[0], other]))
                hosts.append((str(nets[shared[0]]), names))
            nodes[name] = {
                "interfaces": _ifnames(list(mine)),
                "dns_server": dns_server,
                "resolver": resolver,
                "hosts": hosts,
                "forwards": [],
                "config": node_config_files(topology.nodes[name]),
            }
        if dns_nodes and self.resolver_addresses:
            self.resolver_addresses[dns_nodes[0]] = dns_res
        self.res_net = res_net
        # the operator forwards a port to every server it can reach
        if self.operator is not None:
            port = FORWARD_BASE
            for other in topology.nodes:
                shared = [n for n in addresses[other] if n in addresses[self.operator]]
                if not shared or other == self.operator:
                    continue
                services = {s.value for s in topology.nodes[other].service_set()}
                for service, target_port in SERVICE_PORTS.items():
                    if service in services:
                        port += 1
                        self.forwards[(other, service)] = port
                        nodes[self.operator]["forwards"].append(
                            [port, str(addresses[other][shared[0]]), target_port]
                        )
        return {
            "run": self.run,
            "owner": [os.getuid(), os.getgid()],  # the state files are handed back on stop
            **self.options,
            "nodes": nodes,
        }

    def families(self) -> dict[str, tuple[str, ...]]:
        """node -> the image families it runs, for nodes that run real software."""
        found: dict[str, tuple[str, ...]] = {}
        for name, node in self.topology.nodes.items():
            families = image_families(node)
            if families:
                found[name] = families
        return found

    # bringing it up ----------------------------------------------------------------------

    async def create(self) -> None:
        """The image, the run's directory and spec, the containers, the wiring."""
        from lab.backends.docker.engine import docker_client
        from lab.backends.docker.families import ensure_image
        from lab.backends.docker.image import ensure_node_image

        with self.phase("engine"):
            self.client = await asyncio.to_thread(docker_client)
        with self.phase("reap"):
            await self._reap()
        self.say("checking the node image")
        with self.phase("images"):
            self.image = await asyncio.to_thread(ensure_node_image, self.client, self.progress)
            for node, families in self.families().items():
                self.say(f"checking the {'+'.join(families)} image (node {node})")
                self.images[node] = await asyncio.to_thread(
                    ensure_image, self.client, families, self.progress
                )
        with self.phase("plan"):
            self.runtime.mkdir(parents=True, exist_ok=True)
            ca = LabCA(self.state_dir)
            ca.save_key(self.runtime)
            self.spec = self._plan()
            (self.runtime / "lab.json").write_text(json.dumps(self.spec))
            checkless = self.topology.model_copy(update={"checks": {}})
            (self.runtime / TOPOLOGY_FILE).write_bytes(pickle.dumps(checkless))
        self.say(f"starting {len(self.topology.nodes)} containers (run {self.run})")
        with self.phase("containers"):
            # kept, so that `remove` after an interrupted `create` waits for it first
            self._creating = asyncio.ensure_future(asyncio.to_thread(self._create_containers))
            await asyncio.shield(self._creating)
        self.say("wiring the networks")
        with self.phase("wiring"):
            await asyncio.to_thread(self._wire)

    async def _reap(self) -> None:
        """Remove what labs of processes that are gone left behind (their owners were
        killed before they could clean up): never anything of a live owner or unlabelled."""
        from lab.backends.docker.gc import gc

        def old_runs() -> list[str]:
            """Runs all of whose containers are older than `reap_after` (young ones may be
            a test's or a starting lab's); objects without our created label are left."""
            ages: dict[str, list[float]] = {}
            now = time.time()
            # the low-level listing: one call, nothing fetched per container (a container
            # another process removes meanwhile is no error)
            for raw in self.client.api.containers(all=True, filters={"label": LABEL_RUN}):
                found = raw.get("Labels") or {}
                created = found.get(LABEL_CREATED, "")
                age = now - float(created) if created.isdigit() else -1.0
                ages.setdefault(found[LABEL_RUN], []).append(age)
            return [r for r, a in ages.items() if min(a) >= self.reap_after]

        try:
            runs = await asyncio.to_thread(old_runs)
            collected = await asyncio.to_thread(gc, self.client, runs=runs) if runs else []
        except Exception as exc:  # reaping is a courtesy; the lab comes up all the same
            self.events.emit("lab", "lab.reap_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if collected:
            runs = [info.run for info in collected]
            self.say(f"removed {len(runs)} lab(s) left by processes that are gone")
            self.events.emit("lab", "lab.reaped", runs=runs)

    async def running(self, node: str) -> bool:
        container = self.containers.get(node)
        if container is None:
            return False
        await asyncio.to_thread(container.reload)
        return bool(container.status in ("created", "running"))

    async def failed(self, node: str, why: Exception) -> LabError:
        """What a host that did not come up says: the reason, its log and a hint."""
        logs = await asyncio.to_thread(self.logs, node, 40)
        return LabError(
            f"node {node} did not come up: {why}\n--- its log (last lines) ---\n{logs}"
            f"\nhint: `maillab images build --force` rebuilds the node image;"
            f" `docker logs {self.container_name(node)}` shows the whole log"
            " (while the lab is up)"
        )

    def _create_containers(self) -> None:
        """The switch, the management network and every host's container, at once (the
        operator's once the network is there)."""
        nodes = [n for n in self.topology.nodes if n != self.operator]

        def operator() -> None:
            self._make_network()
            if self.operator is not None:
                container = self._create_node(self.operator)
                self.containers[self.operator] = container
                if self.network is not None:
                    container.reload()
                    settings = container.attrs["NetworkSettings"]["Networks"]
                    self.operator_ip = settings[self.network.name]["IPAddress"]

        with ThreadPoolExecutor(max_workers=min(16, len(nodes) + 2)) as pool:
            jobs = [pool.submit(self._run_switch), pool.submit(operator)]
            made = pool.map(self._create_node, nodes)
            for node, container in zip(nodes, made, strict=True):
                self.containers[node] = container
            for job in jobs:
                job.result()
        # the topology's order (the wiring numbers namespaces by it)
        order = ["_switch", *self.topology.nodes]
        self.containers = {n: self.containers[n] for n in order if n in self.containers}

    def _run_switch(self) -> None:
        client = self.client
        pid = self.owner.pid
        watch = (
            f"start=$(cut -d' ' -f22 /proc/{pid}/stat 2>/dev/null || true); "
            f'if [ "$start" = "{self.owner.start}" ]; then '
            f'while [ "$(cut -d\' \' -f22 /proc/{pid}/stat 2>/dev/null)" = "$start" ];'
            " do sleep 1; done; else sleep infinity; fi"
        )
        self.containers["_switch"] = self._start(
            self.image,
            ["sh", "-c", watch],
            name=self.container_name("switch"),
            labels=self._labels("switch"),
            host_config=client.api.create_host_config(
                network_mode="none",
                pid_mode="host",
                cap_add=["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
            ),
        )

    def _start(self, image: str, command: list[str], **create: Any) -> Any:
        """Create and start a container: two calls to the engine (`containers.run` makes
        a third, a look at the container between the two). Its details are read when
        they are needed (`reload`: the wiring asks every container for its process)."""
        api = self.client.api
        found = api.create_container(image, command, detach=True, **create)
        api.start(found["Id"])
        return self.client.containers.prepare_model({"Id": found["Id"]})

    def _make_network(self) -> None:
        """The operator's management network, on a free subnet (one listing of the
        engine's networks, their address pools in it)."""
        import docker.errors
        import docker.types

        client = self.client
        if self.operator is not None and self.forwards:
            taken = [n.subnet for n in self.topology.networks.values()]
            existing = []
            for net in client.api.networks():
                for cfg in (net.get("IPAM") or {}).get("Config") or []:
                    with contextlib.suppress(KeyError, ValueError):
                        existing.append(ipaddress.IPv4Network(cfg["Subnet"]))
            candidates = [
                ipaddress.IPv4Network(f"172.{b}.{c}.0/24")
                for b in (30, 29, 28, 27)
                for c in secrets.SystemRandom().sample(range(256), 256)
            ]
            for candidate in candidates:
                if any(candidate.overlaps(t) for t in taken + existing):
                    continue
                try:
                    self.network = client.networks.create(
                        f"maillab-{self.run}-mgmt",
                        driver="bridge",
                        internal=True,
                        labels=self._labels("network"),
                        ipam=docker.types.IPAMConfig(
                            pool_configs=[docker.types.IPAMPool(subnet=str(candidate))]
                        ),
                    )
                    break
                except docker.errors.APIError as exc:
                    if "overlap" not in str(exc).lower():
                        raise

    def _create_node(self, node: str) -> Any:
        client = self.client
        uid_state = self.state_dir / "nodes"
        hostname = hostname_of(self.topology, node)
        short, _, domain = hostname.partition(".")
        node_state = uid_state / node
        node_state.mkdir(parents=True, exist_ok=True)
        command = [
            "python",
            "-m",
            "lab.backends.docker.agent",
            "--spec",
            f"{RUNTIME}/lab.json",
            "--node",
            node,
            "--state",
            STATE,
            "--control",
            f"{RUNTIME}/{node}.sock",
        ]
        on_mgmt = node == self.operator and self.network is not None
        network = self.network.name if on_mgmt else "none"
        api = client.api
        return self._start(
            self.images.get(node, self.image),
            command,
            name=self.container_name(node),
            hostname=short,
            domainname=domain,
            labels=self._labels("node", node),
            environment={"MAILLAB_NODE": node, "MAILLAB_RUN": self.run},
            host_config=api.create_host_config(
                network_mode=network,
                cap_add=["NET_ADMIN"],
                binds={
                    str(self.runtime): {"bind": RUNTIME, "mode": "rw"},
                    str(node_state): {"bind": STATE, "mode": "rw"},
                },
            ),
            networking_config=(
                api.create_networking_config({network: api.create_endpoint_config()})
                if on_mgmt
                else None
            ),
        )

    def _wire(self) -> None:
        """Bridges in the switch's namespace, a veth pair per interface, addresses set: one
        exec in the switch, one `ip -batch` for the switch and one per host (not a
        process per command)."""
        pids = self._pids()
        index = {node: i for i, node in enumerate(self.topology.nodes)}
        networks = list(self.topology.networks)
        segments = [(net, self.topology.networks[net].subnet) for net in networks]
        if self.resolver_addresses:
            segments.append(("res", self.res_net))
        names = [s[0] for s in segments]
        switch = [f"netns attach n{i} {pids[node]}" for node, i in index.items()]
        for b in range(len(segments)):
            switch += [f"link add br{b} type bridge", f"link set br{b} up"]
        hosts: dict[int, list[str]] = {}
        v = 0
        for node, i in index.items():
            inside = hosts.setdefault(i, ["link set lo up"])
            attachments = [
                (net, str(addr), self.spec["nodes"][node]["interfaces"][net])
                for net, addr in self.addresses[node].items()
            ]
            if node in self.resolver_addresses:
                attachments.append(("res", self.resolver_addresses[node], "res"))
            for net, addr, ifname in attachments:
                b = names.index(net)
                prefix = dict(segments)[net].prefixlen
                # the host's end is made in its namespace under its final name
                switch += [
                    f"link add v{v} type veth peer name {ifname} netns n{i}",
                    f"link set v{v} master br{b} up",
                ]
                self.ports[(node, net)] = (f"v{v}", f"n{i}", ifname)
                inside += [f"addr add {addr}/{prefix} dev {ifname}", f"link set {ifname} up"]
                v += 1
        lines = ["set -e", "mkdir -p /run/netns", "ip -batch - <<'EOF'", *switch, "EOF"]
        for i, commands in hosts.items():
            lines += [f"ip -n n{i} -batch - <<'EOF'", *commands, "EOF"]
        if self.operator is not None and self.network is not None:
            lines.append(f"ip -n n{index[self.operator]} route del default 2>/dev/null || true")
        script = "\n".join(lines) + "\n"
        result = self.containers["_switch"].exec_run(["sh", "-c", script])
        if result.exit_code != 0:
            output = result.output.decode("utf-8", "replace")
            raise LabError(f"wiring the lab's networks failed:\n{output}")

    def in_switch(self, script: str) -> tuple[int, str]:
        """Run a shell script in the switch (its namespace holds the lab's segments)."""
        result = self.containers["_switch"].exec_run(["sh", "-c", script])
        return int(result.exit_code), result.output.decode("utf-8", "replace")

    def _pids(self) -> dict[str, int]:
        """Each container's process (the switch's and every host's), asked at once."""

        def pid(item: tuple[str, Any]) -> int:
            node, container = item
            container.reload()
            found = int(container.attrs["State"]["Pid"])
            if not found:
                raise LabError(f"container for {node} is not running ({container.status})")
            return found

        items = list(self.containers.items())
        with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
            return dict(zip((n for n, _ in items), pool.map(pid, items), strict=True))

    # taking it down ----------------------------------------------------------------------

    async def remove(self) -> None:
        """Remove every object of the run, and its directory."""
        if self._creating is not None and not self._creating.done():
            # `create` was interrupted while containers were being created: let that
            # finish, so that every container it makes is found and removed below
            await asyncio.wait({self._creating}, timeout=60)
        await asyncio.to_thread(self._remove)
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self.client is not None:  # its connections (one per thread that used it) closed
            with contextlib.suppress(Exception):
                self.client.close()

    def _remove(self) -> None:
        import docker.errors

        if self.client is None:
            return
        api = self.client.api
        ids = {c.id for c in self.containers.values()}
        with contextlib.suppress(docker.errors.APIError):  # the run's label finds the rest
            for raw in api.containers(all=True, filters={"label": f"{LABEL_RUN}={self.run}"}):
                ids.add(raw["Id"])

        networks: list[dict[str, Any]] = []
        with contextlib.suppress(docker.errors.APIError):
            networks = api.networks(filters={"label": f"{LABEL_RUN}={self.run}"})
        on_network = self.containers.get(self.operator or "")  # the one container on it

        def remove(container_id: str) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container_id, force=True, v=True)

        def remove_networks() -> None:
            # as soon as the containers on them are gone, while the others still go
            waits = [jobs[on_network.id]] if on_network is not None else list(jobs.values())
            for job in waits:
                job.exception()
            for net in networks:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.remove_network(net["Id"])

        with ThreadPoolExecutor(max_workers=min(16, len(ids) + 1)) as pool:  # all at once
            jobs = {container_id: pool.submit(remove, container_id) for container_id in ids}
            done = [*jobs.values(), pool.submit(remove_networks)] if networks else [*jobs.values()]
            for job in done:
                job.result()
        self.containers.clear()

    # hands-on ----------------------------------------------------------------------------

    def logs(self, node: str, tail: int | None = None) -> str:
        container = self.containers.get(node)
        if container is None:
            return "(no container)"
        try:
            data = container.logs(tail=tail if tail is not None else "all")
        except Exception as exc:  # the container may be gone already
            return f"(no log: {exc})"
        return str(data.decode("utf-8", "replace"))
