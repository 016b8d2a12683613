"""The Docker backend: a container per host, with the topology's own addresses.

Each host of the topology is a container running the agent (`python -m
lab.backends.docker.agent`): the same built-in services as in-process, on real
interfaces. The lab's networks are layer-2 segments of the run's own: a small "switch"
container per run holds one Linux bridge per network in its network namespace, and a
veth pair joins each host's interface to its bridge. So every host has exactly the
addresses the topology gives it (192.168.10.11, not a remapped one), policies, Received
headers and rDNS read as in the file, and two labs of the same topology never collide:
their segments live in different namespaces, and Docker's address pools are not involved
(see docs/architecture.md).

A link that goes down is a filter on the host's interface (refuse: resets and ICMP
unreachable at once; blackhole: silence), both ways, after the host has cut the
connections that crossed it. The lab clock, queue listing, flush, fetch, mailboxes and
events go through each agent's control socket, a Unix socket in a directory the run
shares with its containers. A person reaches the lab from this machine through the
operator node (a LAN client): it forwards ports on a small management network to the
servers it can reach, so the hub sees them come from the LAN, as in the seeds.

Every object carries the run's labels (lab.backends.docker.labels); the switch ends when
the process holding the lab ends, the agents when their control connection closes, and
`maillab gc` removes whatever a killed run left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab.backends.base import BackendCommon
from lab.backends.docker.gc import runtime_dir
from lab.backends.docker.labels import LABEL_CREATED, LABEL_RUN, LABEL_STATE, Owner, labels
from lab.errors import LabError
from lab.protocols.smtp import Reply
from lab.runtime.events import EventBus
from lab.services.client import SubmitResult
from lab.services.hostservices import SERVICE_PORTS
from lab.services.tls import LabCA
from lab.software import check_supported
from lab.topology.addressing import hostname_of
from lab.topology.model import Service, Topology

RUNTIME = "/run/maillab"  # in the containers: the run's spec, CA and control sockets
STATE = "/var/lib/maillab"  # in the containers: the host's queue and mailboxes
FORWARD_BASE = 2500  # the operator's forwarded ports: 2501, 2502, ...
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")


class NodeControl:
    """The lab's end of one agent's control socket: requests, replies and events."""

    def __init__(self, name: str, path: Path, events: EventBus):
        self.name = name
        self.path = path
        self.events = events
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = 0
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.captured: dict[str, bytes] = {}

    async def connect(self, timeout: float, alive: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(
                    str(self.path), limit=2**26
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline or not await alive():
                    raise LabError(
                        f"node {self.name}: its agent did not open {self.path}"
                    ) from None
                await asyncio.sleep(0.05)
        self.task = loop.create_task(self._read(), name=f"control:{self.name}")

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while line := await self.reader.readline():
                message = json.loads(line)
                if "event" in message:
                    e = message["event"]
                    data = e.get("data") or {}
                    if "content_b64" in data:  # a capture_queued copy
                        content = base64.b64decode(data.pop("content_b64"))
                        self.captured[str(data.get("id"))] = content
                    self.events.record(e["time"], e["node"], e["kind"], data)
                    continue
                future = self.pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    if message.get("ok"):
                        future.set_result(message.get("result"))
                    else:
                        future.set_exception(LabError(f"{self.name}: {message.get('error')}"))
        except (OSError, ValueError):
            pass
        finally:
            self.closed = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(LabError(f"node {self.name}: its agent went away"))
            self.pending.clear()

    async def call(self, op: str, *, timeout: float | None = 120.0, **args: Any) -> Any:
        if self.writer is None or self.closed:
            raise LabError(f"node {self.name}: not connected")
        self.ids += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = future
        self.writer.write(json.dumps({"id": self.ids, "op": op, **args}).encode() + b"\n")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise LabError(f"node {self.name}: no answer to {op!r} within {timeout}s") from None
        finally:
            self.pending.pop(self.ids, None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
        if self.task is not None:
            self.task.cancel()


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


class DockerBackend(BackendCommon):
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
        self.reap_after = reap_after  # seconds: how old a dead owner's run must be to reap
        self.progress = progress
        self.run = secrets.token_hex(4)
        self.owner = Owner.me()
        self.runtime = runtime_dir(self.run)
        self._offset = 0.0  # lab time = real time + offset, the same in every container
        self.events = EventBus(self.now, self.state_dir / "events.jsonl")
        self.link_states: dict[str, str] = {n: link.state for n, link in topology.links.items()}
        self.client: Any = None
        self.image = ""
        self.containers: dict[str, Any] = {}  # node (or "_switch") -> Container
        self.network: Any = None  # the management network of the operator
        self.controls: dict[str, NodeControl] = {}
        self.forwards: dict[tuple[str, str], int] = {}  # (node, service) -> operator port
        self.operator_ip = ""
        self.spec: dict[str, Any] = {}
        self.resolver_addresses: dict[str, str] = {}  # node -> its resolver-segment address
        self.res_net = ipaddress.IPv4Network("100.127.53.0/24")
        self._creating: asyncio.Future[None] | None = None

    # naming ------------------------------------------------------------------------------

    def container_name(self, node: str) -> str:
        return f"maillab-{self.run}-{node}"

    def _labels(self, kind: str, node: str = "") -> dict[str, str]:
        found = labels(self.run, self.topology.name, kind, node, self.owner)
        if self._own_dir:  # a state directory made for this run goes when the run is collected
            found[LABEL_STATE] = str(self.state_dir)
        return found

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    # the plan ----------------------------------------------------------------------------

    def _dns_nodes(self) -> list[str]:
        return [n for n, s in self.topology.nodes.items() if Service.dns in s.service_set()]

    def _plan(self) -> dict[str, Any]:
        """What each host needs to know: interfaces, resolver, /etc/hosts, forwards."""
        topology, addresses = self.topology, self.addresses
        dns_nodes = self._dns_nodes()
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
            "topology": topology.model_dump(
                mode="json", by_alias=True, exclude_none=True, exclude={"checks"}
            ),
            "run": self.run,
            "owner": [os.getuid(), os.getgid()],  # the state files are handed back on stop
            "connect_timeout": self.connect_timeout,
            "dns_timeout": self.dns_timeout,
            "durable": self.durable,
            "nodes": nodes,
        }

    # lifecycle ---------------------------------------------------------------------------

    async def up(self) -> None:
        for name, node in self.topology.nodes.items():
            check_supported(name, node.software.value, self.name)
        from lab.backends.docker.engine import docker_client
        from lab.backends.docker.image import ensure_node_image

        self.client = await asyncio.to_thread(docker_client)
        await self._reap()
        self._say("checking the node image")
        self.image = await asyncio.to_thread(ensure_node_image, self.client, self.progress)
        self.runtime.mkdir(parents=True, exist_ok=True)
        ca = LabCA(self.state_dir)
        ca.save_key(self.runtime)
        self.spec = self._plan()
        (self.runtime / "lab.json").write_text(json.dumps(self.spec))
        self._say(f"starting {len(self.topology.nodes)} containers (run {self.run})")
        # kept, so that `down` after an interrupted `up` waits for it before removing
        self._creating = asyncio.ensure_future(asyncio.to_thread(self._create_containers))
        await asyncio.shield(self._creating)
        self._say("wiring the networks")
        await asyncio.to_thread(self._wire)
        for name in self.topology.nodes:
            self.controls[name] = NodeControl(name, self.runtime / f"{name}.sock", self.events)

        async def connect(node: str, control: NodeControl) -> None:
            try:
                await control.connect(self.ready_timeout, lambda: self._running(node))
            except LabError as exc:
                raise await self._failed(node, exc) from None

        await asyncio.gather(*(connect(n, c) for n, c in self.controls.items()))
        self._say("waiting for the services to answer")
        dns_first = self._dns_nodes()
        await self._start(dns_first)
        await self._start([n for n in self.topology.nodes if n not in dns_first])
        for link_name, link in self.topology.links.items():
            self.events.emit(link.node, "link.initial", link=link_name, state=link.state)
        self.events.emit(
            "lab", "lab.up", backend=self.name, nodes=list(self.topology.nodes), run=self.run
        )

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
            self._say(f"removed {len(runs)} lab(s) left by processes that are gone")
            self.events.emit("lab", "lab.reaped", runs=runs)

    async def _running(self, node: str) -> bool:
        container = self.containers.get(node)
        if container is None:
            return False
        await asyncio.to_thread(container.reload)
        return bool(container.status in ("created", "running"))

    async def _start(self, nodes: list[str]) -> None:
        async def one(node: str) -> None:
            try:
                await self.controls[node].call(
                    "start", offset=self._offset, timeout=self.ready_timeout
                )
            except LabError as exc:
                raise await self._failed(node, exc) from None

        await asyncio.gather(*(one(n) for n in nodes))

    async def _failed(self, node: str, why: Exception) -> LabError:
        """What a host that did not come up says: the reason, its log and a hint."""
        logs = await asyncio.to_thread(self.logs, node, 40)
        return LabError(
            f"node {node} did not come up: {why}\n--- its log (last lines) ---\n{logs}"
            f"\nhint: `maillab images build --force` rebuilds the node image;"
            f" `docker logs {self.container_name(node)}` shows the whole log"
            " (while the lab is up)"
        )

    def _create_containers(self) -> None:
        import docker.errors

        client = self.client
        pid = self.owner.pid
        watch = (
            f"start=$(cut -d' ' -f22 /proc/{pid}/stat 2>/dev/null || true); "
            f'if [ "$start" = "{self.owner.start}" ]; then '
            f'while [ "$(cut -d\' \' -f22 /proc/{pid}/stat 2>/dev/null)" = "$start" ];'
            " do sleep 1; done; else sleep infinity; fi"
        )
        self.containers["_switch"] = client.containers.run(
            self.image,
            ["sh", "-c", watch],
            name=self.container_name("switch"),
            detach=True,
            network_mode="none",
            pid_mode="host",
            cap_add=["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
            labels=self._labels("switch"),
            auto_remove=False,
        )
        if self.operator is not None and self.forwards:
            taken = [n.subnet for n in self.topology.networks.values()]
            existing = []
            for net in client.networks.list():
                for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
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
                    import docker.types

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
        uid_state = self.state_dir / "nodes"

        def create(node: str) -> Any:
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
            return client.containers.run(
                self.image,
                command,
                name=self.container_name(node),
                hostname=short,
                domainname=domain,
                detach=True,
                network=self.network.name if on_mgmt else None,
                network_mode=None if on_mgmt else "none",
                cap_add=["NET_ADMIN"],
                labels=self._labels("node", node),
                volumes={
                    str(self.runtime): {"bind": RUNTIME, "mode": "rw"},
                    str(node_state): {"bind": STATE, "mode": "rw"},
                },
                environment={"MAILLAB_NODE": node, "MAILLAB_RUN": self.run},
            )

        nodes = list(self.topology.nodes)
        with ThreadPoolExecutor(max_workers=min(8, len(nodes) or 1)) as pool:
            for node, container in zip(nodes, pool.map(create, nodes), strict=True):
                self.containers[node] = container
        if self.network is not None and self.operator in self.containers:
            container = self.containers[self.operator]
            container.reload()
            settings = container.attrs["NetworkSettings"]["Networks"]
            self.operator_ip = settings[self.network.name]["IPAddress"]

    def _wire(self) -> None:
        """Bridges in the switch's namespace, a veth pair per interface, addresses set."""
        pids: dict[str, int] = {}
        for node, container in self.containers.items():
            container.reload()
            pids[node] = int(container.attrs["State"]["Pid"])
            if not pids[node]:
                raise LabError(f"container for {node} is not running ({container.status})")
        lines = ["set -e", "mkdir -p /run/netns"]
        index = {node: i for i, node in enumerate(self.topology.nodes)}
        for node, i in index.items():
            lines.append(f"ln -sf /proc/{pids[node]}/ns/net /run/netns/n{i}")
            lines.append(f"ip -n n{i} link set lo up")
        networks = list(self.topology.networks)
        segments = [(net, self.topology.networks[net].subnet) for net in networks]
        if self.resolver_addresses:
            segments.append(("res", self.res_net))
        for b in range(len(segments)):
            lines += [f"ip link add br{b} type bridge", f"ip link set br{b} up"]
        v = 0
        for node, i in index.items():
            attachments = [
                (net, str(addr), self.spec["nodes"][node]["interfaces"][net])
                for net, addr in self.addresses[node].items()
            ]
            if node in self.resolver_addresses:
                attachments.append(("res", self.resolver_addresses[node], "res"))
            for net, addr, ifname in attachments:
                b = [s[0] for s in segments].index(net)
                prefix = dict(segments)[net].prefixlen
                lines += [
                    f"ip link add v{v} type veth peer name p{v} netns n{i}",
                    f"ip link set v{v} master br{b} up",
                    f"ip -n n{i} link set p{v} name {ifname}",
                    f"ip -n n{i} addr add {addr}/{prefix} dev {ifname}",
                    f"ip -n n{i} link set {ifname} up",
                ]
                v += 1
            if node == self.operator and self.network is not None:
                lines.append(f"ip -n n{i} route del default 2>/dev/null || true")
        script = "\n".join(lines) + "\n"
        result = self.containers["_switch"].exec_run(["sh", "-c", script])
        if result.exit_code != 0:
            output = result.output.decode("utf-8", "replace")
            raise LabError(f"wiring the lab's networks failed:\n{output}")

    async def down(self) -> None:
        if self._creating is not None and not self._creating.done():
            # `up` was interrupted while containers were being created: let that finish,
            # so that every container it makes is found and removed below
            await asyncio.wait({self._creating}, timeout=60)
        if self.controls:
            with contextlib.suppress(Exception):
                await self.settle(timeout=5.0)
            await asyncio.gather(
                *(c.call("stop", timeout=10) for c in self.controls.values() if not c.closed),
                return_exceptions=True,
            )
            for control in self.controls.values():
                await control.close()
        await asyncio.to_thread(self._remove)
        self.events.emit("lab", "lab.down")
        self.events.close()
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _remove(self) -> None:
        import docker.errors

        if self.client is None:
            return
        api = self.client.api
        ids = {c.id for c in self.containers.values()}
        with contextlib.suppress(docker.errors.APIError):  # the run's label finds the rest
            for raw in api.containers(all=True, filters={"label": f"{LABEL_RUN}={self.run}"}):
                ids.add(raw["Id"])

        def remove(container_id: str) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container_id, force=True, v=True)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(remove, ids))
        with contextlib.suppress(docker.errors.APIError):
            for net in api.networks(filters={"label": f"{LABEL_RUN}={self.run}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_network(net["Id"])
        self.containers.clear()

    async def settle(self, timeout: float = 60.0) -> None:
        """Every host idle, and no event anywhere since the last look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: tuple[int, ...] | None = None
        while loop.time() < deadline:
            remaining = max(0.1, deadline - loop.time())
            results = await asyncio.gather(
                *(c.call("settle", timeout=remaining + 5) for c in self._live())
            )
            counts = tuple(r["events"] for r in results)
            if counts == last and all(r["idle"] for r in results):
                return
            last = counts

    def _live(self) -> list[NodeControl]:
        return [c for c in self.controls.values() if not c.closed]

    # acting ------------------------------------------------------------------------------

    def _control(self, node: str) -> NodeControl:
        self.check_node(node)
        return self.controls[node]

    def _services(self, node: str) -> set[Service]:
        return self.topology.nodes[node].service_set()

    def _need_mta(self, node: str) -> NodeControl:
        control = self._control(node)
        if Service.smtp not in self._services(node):
            raise LabError(f"node {node!r} runs no MTA (smtp service)")
        return control

    async def send(
        self, node: str, *, mail_from: str, to: list[str], content: bytes, via: str | None = None
    ) -> SubmitResult:
        found = await self._control(node).call(
            "send",
            mail_from=mail_from,
            to=to,
            content=base64.b64encode(content).decode(),
            via=via,
        )

        def reply(value: Any) -> Reply | None:
            return None if value is None else Reply(int(value["code"]), str(value["text"]))

        return SubmitResult(
            server=found["server"],
            greeting=reply(found["greeting"]),
            helo_reply=reply(found["helo_reply"]),
            mail_reply=reply(found["mail_reply"]),
            rcpt_replies={
                k: Reply(int(v["code"]), v["text"]) for k, v in found["rcpt_replies"].items()
            },
            data_reply=reply(found["data_reply"]),
            error=found["error"],
        )

    async def set_link(self, link: str, up: bool) -> None:
        self.check_link(link)
        spec = self.topology.links[link]
        state = "up" if up else "down"
        if self.link_states[link] == state:
            self.events.emit(spec.node, "link.unchanged", link=link, state=state)
            return
        self.link_states[link] = state
        wire_state = "up" if up else f"down-{spec.when_down.value}"
        result = await self._control(spec.node).call("link", network=spec.network, state=wire_state)
        self.events.emit(
            spec.node,
            "link.up" if up else "link.down",
            link=link,
            network=spec.network,
            cut=result["cut"],
        )
        if up:
            for hook in spec.on_up:
                self.events.emit(spec.node, "link.hook", link=link, hook=hook.value)
                if hook.value == "flush" and Service.smtp in self._services(spec.node):
                    await self._control(spec.node).call("flush", timeout=600)
                elif hook.value == "fetch" and Service.fetch in self._services(spec.node):
                    await self._control(spec.node).call("fetch", timeout=600)
                await self.settle()

    def link_state(self, link: str) -> str:
        return self.link_states[link]

    def now(self) -> float:
        return time.time() + self._offset

    async def advance(self, seconds: float) -> int:
        """Every host's timers, in lab-time order across hosts, settling after each."""
        if seconds < 0:
            raise ValueError("the lab clock only moves forward")
        await self.settle()
        target = self.now() + seconds
        ran = 0
        while True:
            nexts = await asyncio.gather(*(c.call("clock.next") for c in self._live()))
            due = [n for n in nexts if n is not None and n <= target]
            if not due:
                break
            when = min(due)
            self._offset += max(0.0, when - self.now())
            counts = await asyncio.gather(
                *(c.call("clock.advance_to", when=when, timeout=600) for c in self._live())
            )
            ran += sum(counts)
            await self.settle()
        self._offset += max(0.0, target - self.now())
        await asyncio.gather(*(c.call("clock.advance_to", when=target) for c in self._live()))
        await self.settle()
        self.events.emit("lab", "clock.advanced", seconds=seconds, timers=ran)
        return ran

    async def flush(self, node: str) -> int:
        count = int(await self._need_mta(node).call("flush", timeout=600))
        await self.settle()
        return count

    async def fetch(self, node: str) -> int:
        self._control(node)
        if Service.fetch not in self._services(node):
            raise LabError(f"node {node!r} has no fetch jobs")
        count = int(await self._control(node).call("fetch", timeout=600))
        await self.settle()
        return count

    async def queue(self, node: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._need_mta(node).call("queue")
        return found

    async def capture_queued(self, node: str) -> dict[str, bytes]:
        """Queue id -> content of every message `node` queues from now on, read by the
        host as it is queued (DSNs included: they may be gone from the queue a moment later)."""
        control = self._need_mta(node)
        await control.call("capture")
        return control.captured

    async def queue_content(self, node: str, queue_id: str) -> bytes:
        return base64.b64decode(await self._need_mta(node).call("queue.content", id=queue_id))

    async def mailbox(self, node: str, user: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._control(node).call("mailbox", user=user)
        return found

    def status(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for name, node in self.topology.nodes.items():
            services = {s.value for s in node.service_set()}
            addresses = {n: str(a) for n, a in self.addresses[name].items()}
            endpoints: dict[str, str] = {}
            lab_endpoints: dict[str, str] = {}
            for service, port in SERVICE_PORTS.items():
                if service not in services:
                    continue
                for network, address in addresses.items():
                    lab_endpoints.setdefault(service, f"{address}:{port}")
                    lab_endpoints[f"{service}@{network}"] = f"{address}:{port}"
                forwarded = self.forwards.get((name, service))
                if forwarded and self.operator_ip:
                    endpoints[service] = f"{self.operator_ip}:{forwarded}"
                else:
                    endpoints[service] = lab_endpoints[service]
            nodes[name] = {
                "hostname": hostname_of(self.topology, name),
                "services": sorted(services),
                "addresses": addresses,
                "endpoints": endpoints,
                "lab_endpoints": lab_endpoints,
                "container": self.container_name(name),
            }
        links = {
            name: {"state": self.link_states[name], "node": link.node, "network": link.network}
            for name, link in self.topology.links.items()
        }
        operator_address = ""
        if self.operator is not None and self.addresses[self.operator]:
            operator_address = str(next(iter(self.addresses[self.operator].values())))
        return {
            "name": self.topology.name,
            "backend": self.name,
            "run": self.run,
            "nodes": nodes,
            "links": links,
            "operator": {"node": self.operator, "address": operator_address or "127.0.0.1"},
            "clock": {"time": self.now(), "offset": self._offset},
            "state_dir": str(self.state_dir),
            "ca": str(self.state_dir / "lab-ca.pem"),
        }

    async def set_dns(self, name: str, rtype: str, values: list[Any]) -> None:
        self.records.set(name, rtype, values)
        values = [str(v) for v in values]
        # every host: the DNS servers answer from their copy, and the others' resolvers
        # drop what they had cached when theirs changes
        for node in self.controls:
            await self.controls[node].call("dns.set", name=name, type=rtype, values=values)
        self.events.emit("lab", "dns.changed", name=name, type=rtype, values=values)

    async def set_dns_fault(self, name: str, fault: str | None) -> None:
        self.records.set_fault(name, fault)
        for node in self.controls:  # (as set_dns)
            await self.controls[node].call("dns.fault", name=name, fault=fault)
        self.events.emit("lab", "dns.fault", name=name, fault=fault or "none")

    async def add_fault(self, node: str, fault: dict[str, Any]) -> None:
        await self._need_mta(node).call("fault.add", fault={k: v for k, v in fault.items()})
        self.events.emit(node, "fault.added", **{k: str(v) for k, v in fault.items()})

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
