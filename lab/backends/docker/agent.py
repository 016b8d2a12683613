"""The node agent: one lab host inside a container, run as `python -m lab.backends.docker.agent`.

It runs the host's built-in services (the same `HostServices` as in-process) on the
container's real interfaces, and answers the lab on a control socket (a Unix socket in a
directory the lab shares with the container): JSON lines, one request `{"id", "op", ...}`
and one reply `{"id", "ok", "result"|"error"}` each; every event the host emits is pushed
on the same connection as `{"event": {...}}`, so the lab's event log and traces hold the
containers' events in the order they happened.

The agent lives as long as the lab that started it: when the lab's connection closes
(the lab stopped, or its process was killed), the agent stops and the container ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message

from lab.backends.docker.net import RealNet
from lab.errors import LabError
from lab.runtime.clock import LabClock
from lab.runtime.events import Event, EventBus, json_line
from lab.services.client import submit
from lab.services.host import Host, settle_tasks
from lab.services.hostservices import HostServices, submission_target
from lab.services.tls import LabCA
from lab.topology.addressing import assign_addresses, hostname_of
from lab.topology.model import Service, Topology
from lab.topology.records import RecordTable

log = logging.getLogger("maillab.node")

CONNECT_GRACE = 120.0  # seconds to wait for the lab's first connection


class Agent:
    def __init__(self, spec: dict[str, Any], node: str, state_dir: Path, runtime_dir: Path):
        self.spec = spec
        self.name = node
        self.topology = Topology.model_validate(spec["topology"])
        self.me = spec["nodes"][node]
        self.addresses = assign_addresses(self.topology)
        self.records = RecordTable.from_topology(self.topology, self.addresses)
        self.state_dir = state_dir
        self.runtime_dir = runtime_dir
        self.link_states: dict[str, str] = {net: "up" for net in self.addresses[node]}
        for link in self.topology.links.values():
            if link.node == node and link.state == "down":
                self.link_states[link.network] = f"down-{link.when_down.value}"
        self.clock = LabClock(settle=self.settle)
        self.events = EventBus(self.clock.time)
        self.events.listen(self._forward)
        self.writer: asyncio.StreamWriter | None = None
        self.quiet = False  # readiness probes are not the lab's business
        self.capture = False  # send queued messages' content with their queue.queued events
        self.services: HostServices | None = None
        self.host: Host | None = None
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.forwarders: list[asyncio.AbstractServer] = []

    # events ------------------------------------------------------------------------------

    def _forward(self, event: Event) -> None:
        if self.quiet or self.writer is None or self.writer.is_closing():
            return
        data = event.data
        if self.capture and event.kind == "queue.queued" and self.services is not None:
            with contextlib.suppress(Exception):
                content = self.services.queue_content(str(event.get("id")))
                data = {**data, "content_b64": base64.b64encode(content).decode()}
        line = {"event": {"time": event.time, "node": event.node, "kind": event.kind}}
        line["event"]["data"] = data
        self.writer.write(json_line(line))

    # the host ----------------------------------------------------------------------------

    def _write_system_files(self) -> None:
        """/etc/hosts with the lab's hosts this one can reach; the lab DNS as resolver."""
        hosts = ["127.0.0.1\tlocalhost"]
        for address, names in self.me.get("hosts", []):
            hosts.append(f"{address}\t{' '.join(names)}")
        resolver = self.me.get("resolver")
        domain = hostname_of(self.topology, self.name).partition(".")[2]
        resolv = [f"nameserver {resolver}"] if resolver else []
        if domain:
            resolv.append(f"search {domain}")
        resolv.append("options timeout:2 attempts:2")
        for path, lines in (("/etc/hosts", hosts), ("/etc/resolv.conf", resolv)):
            try:
                Path(path).write_text("\n".join(lines) + "\n")
            except OSError as exc:  # not fatal: the services do not read them
                log.warning("cannot write %s: %s", path, exc)

    async def start(self, offset: float) -> dict[str, Any]:
        if self.services is not None:
            raise LabError("already started")
        self.clock._offset = offset
        self.clock.start()
        self.clock.on_error = lambda timer, exc: self.events.emit(
            self.name, "clock.error", timer=timer, error=f"{type(exc).__name__}: {exc}"
        )
        self._write_system_files()
        subnets = {n: str(self.topology.networks[n].subnet) for n in self.addresses[self.name]}
        net = RealNet(
            {n: str(a) for n, a in self.addresses[self.name].items()},
            self.me.get("dns_server"),
            subnets=subnets,
            link_state=lambda network: self.link_states.get(network, "up"),
        )
        self.host = Host(
            name=self.name,
            hostname=hostname_of(self.topology, self.name),
            node=self.topology.nodes[self.name],
            topology=self.topology,
            addresses={n: str(a) for n, a in self.addresses[self.name].items()},
            net=net,
            clock=self.clock,
            events=self.events,
            state_dir=self.state_dir,
            tls=LabCA.load(self.runtime_dir),
        )
        self.services = HostServices(
            self.host,
            self.records,
            connect_timeout=float(self.spec.get("connect_timeout", 3.0)),
            dns_timeout=float(self.spec.get("dns_timeout", 1.0)),
            durable=bool(self.spec.get("durable", True)),
            link_up=self.link_is_up,
        )
        await self._apply_links()
        await self.services.start_dns()
        await self.services.start_others()
        for port, address, target_port in self.me.get("forwards", []):
            self.forwarders.append(
                await asyncio.start_server(
                    functools.partial(self._forward_conn, address=address, port=target_port),
                    host="0.0.0.0",
                    port=port,
                    reuse_address=True,
                )
            )
        self.quiet = True
        if self.services.mta is not None:
            self.services.mta.probing = True
        try:
            probes = await self._probe()
        finally:
            self.quiet = False
            if self.services.mta is not None:
                self.services.mta.probing = False
        return {"probes": probes, "hostname": self.host.hostname}

    async def _probe(self) -> dict[str, str]:
        """Each service answers as a client expects: 220, +OK, a DNS answer."""
        assert self.host is not None
        address = next(iter(self.host.addresses.values()), "127.0.0.1")
        found: dict[str, str] = {}
        services = self.host.node.service_set()
        for service, port, want in ((Service.smtp, 25, b"220"), (Service.pop3, 110, b"+OK")):
            if service in services:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 10)
                line = await asyncio.wait_for(reader.readline(), 10)
                writer.write(b"QUIT\r\n")
                with contextlib.suppress(OSError):
                    await writer.drain()
                writer.close()
                if not line.startswith(want):
                    raise LabError(f"{service.value} on {address}:{port} greeted {line!r}")
                found[service.value] = line.decode("utf-8", "replace").strip()
        if Service.dns in services:
            query = dns.message.make_query(self.host.hostname, "A")
            answer = await dns.asyncquery.udp(query, address, timeout=5)
            found["dns"] = f"{self.host.hostname} -> " + " ".join(
                str(r) for rrset in answer.answer for r in rrset
            )
        return found

    async def _forward_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, port: int
    ) -> None:
        """A person on the machine running the lab, connecting through this host."""
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address, port), 10
            )
        except (OSError, TimeoutError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    def link_is_up(self) -> bool:
        return all(
            self.link_states.get(link.network) == "up"
            for link in self.topology.links.values()
            if link.node == self.name
        )

    async def _apply_links(self) -> None:
        """The filter rules for the links that are down: refuse (resets and ICMP port
        unreachable, at once) or blackhole (nothing comes back), both ways."""
        rules = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for network, state in self.link_states.items():
            if state == "up":
                continue
            iface = self.me["interfaces"][network]
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                if state == "down-refuse":
                    if chain == "OUTPUT":  # the refusals themselves go out
                        rules += [
                            f"-A OUTPUT -o {iface} -p tcp --tcp-flags RST RST -j ACCEPT",
                            f"-A OUTPUT -o {iface} -p icmp --icmp-type destination-unreachable"
                            " -j ACCEPT",
                        ]
                    rules += [
                        f"-A {chain} {flag} {iface} -p tcp -j REJECT --reject-with tcp-reset",
                        f"-A {chain} {flag} {iface} -p udp -j REJECT"
                        " --reject-with icmp-port-unreachable",
                    ]
                rules.append(f"-A {chain} {flag} {iface} -j DROP")
        rules.append("COMMIT")
        proc = await asyncio.create_subprocess_exec(
            "iptables-restore",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(("\n".join(rules) + "\n").encode())
        if proc.returncode != 0:
            raise LabError(f"iptables-restore failed: {out.decode(errors='replace').strip()}")

    async def settle(self, timeout: float = 60.0) -> None:
        if self.host is not None:
            await settle_tasks([self.host], timeout)

    # requests ----------------------------------------------------------------------------

    def _need(self) -> HostServices:
        if self.services is None:
            raise LabError("the node has not been started")
        return self.services

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "start":
            return await self.start(float(args.get("offset", 0.0)))
        if op == "ping":
            return {"node": self.name, "pid": os.getpid()}
        services = self._need()
        if op == "settle":
            await self.settle(float(args.get("timeout", 60.0)))
            return {"events": len(self.events.events), "idle": not self._busy()}
        if op == "clock.next":
            pending = self.clock.pending()
            return pending[0].when if pending else None
        if op == "clock.advance_to":
            return await self.clock.advance(max(0.0, float(args["when"]) - self.clock.time()))
        if op == "clock.time":
            return {"time": self.clock.time(), "offset": self.clock.offset}
        if op == "flush":
            count = await services.flush()
            await self.settle()
            return count
        if op == "fetch":
            count = await services.fetch()
            await self.settle()
            return count
        if op == "queue":
            return services.queue()
        if op == "capture":
            self.capture = True
            return None
        if op == "queue.content":
            return base64.b64encode(services.queue_content(args["id"])).decode()
        if op == "mailbox":
            return services.mailbox(args["user"])
        if op == "send":
            return await self.send(args)
        if op == "link":
            return await self.set_link(args["network"], args["state"])
        if op == "dns.set":
            self.records.set(args["name"], args["type"], args["values"])
            return None
        if op == "dns.fault":
            self.records.set_fault(args["name"], args.get("fault"))
            return None
        if op == "fault.add":
            services.add_fault(args["fault"])
            return None
        if op == "stop":
            await self.stop()
            return None
        raise LabError(f"unknown request {op!r}")

    def _busy(self) -> bool:
        return self.host is not None and any(not t.done() for t in self.host.tasks)

    async def send(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.host is not None
        address, name, port = submission_target(
            self.topology, self.addresses, self.records, self.name, args.get("via")
        )
        result = await submit(
            self.host,
            address,
            server_name=name,
            port=port,
            mail_from=args["mail_from"],
            recipients=list(args["to"]),
            content=base64.b64decode(args["content"]),
            timeout=float(self.spec.get("connect_timeout", 3.0)) + 10,
        )
        return asdict(result)

    async def set_link(self, network: str, state: str) -> dict[str, Any]:
        assert self.host is not None
        self.link_states[network] = state
        cut = 0
        if state != "up":
            cut = self.host.net.cut(network)  # type: ignore[attr-defined]
        await self._apply_links()
        self._need().link_changed()
        return {"cut": cut}

    async def stop(self) -> None:
        if self.services is not None:
            await self.settle(timeout=5.0)
            await self.clock.stop()
            await self.services.stop()
            if self.host is not None:
                await self.host.net.close()  # type: ignore[attr-defined]
        for server in self.forwarders:
            server.close()
        self._hand_back()
        self.done.set()

    def _hand_back(self) -> None:
        """The state files belong to whoever runs the lab, not to root in the container."""
        uid, gid = self.spec.get("owner") or (0, 0)
        if not uid and not gid:
            return
        for path in [self.state_dir, *self.state_dir.rglob("*")]:
            with contextlib.suppress(OSError):
                os.lchown(path, uid, gid)

    # the control connection --------------------------------------------------------------

    async def serve(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self._connection, path=str(path))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.done.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), CONNECT_GRACE)
            if not self.connected.is_set():
                log.error("no lab connected within %ss; stopping", CONNECT_GRACE)
                return
            await self.done.wait()
        finally:
            server.close()
            if self.services is not None and self.host is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.stop(), 10)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:  # one lab per agent
            writer.write(b'{"ok":false,"error":"another lab is connected"}\n')
            writer.close()
            return
        self.writer = writer
        self.connected.set()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while line := await reader.readline():
                request = json.loads(line)
                task = asyncio.get_running_loop().create_task(self._answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (OSError, ValueError) as exc:
            log.error("control connection: %s", exc)
        finally:
            self.writer = None
            self.done.set()  # the lab is gone: so is this host

    async def _answer(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        op = str(request.get("op", ""))
        try:
            result = await self.handle(op, request)
            reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
        except LabError as exc:
            reply = {"id": rid, "ok": False, "error": str(exc)}
        except Exception as exc:  # the lab shows it with the node's name; the agent goes on
            log.exception("%s failed", op)
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json_line(reply))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lab.backends.docker.agent",
        description="Run one maillab host (its built-in services) inside a container, "
        "controlled by the lab over a Unix socket.",
    )
    parser.add_argument("--spec", required=True, help="the lab's JSON spec")
    parser.add_argument("--node", required=True, help="the topology node this host plays")
    parser.add_argument("--state", default="/var/lib/maillab", help="state directory")
    parser.add_argument("--control", required=True, help="control socket path")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {args.node} %(message)s"
    )
    spec_path = Path(args.spec)
    spec = json.loads(spec_path.read_text())
    agent = Agent(spec, args.node, Path(args.state), spec_path.parent)
    log.info("agent for %s waiting on %s", args.node, args.control)
    asyncio.run(agent.serve(Path(args.control)))
    log.info("agent for %s stopped", args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
