"""The node agent: one lab host inside a container, run as `python -m lab.backends.docker.agent`.

It runs the host's built-in services (the same `HostServices` as in-process) on the
container's real interfaces, and answers the lab on a control socket (a Unix socket in a
directory the lab shares with the container), in the wire of lab.protocols.wire: one
request and one reply per line, matched by id, answered from a table of `AgentOp`s (most
of them the host's `HostServices` itself); every event the host emits is pushed on the
same connection, so the lab's event log and traces hold the containers' events in the
order they happened.

The agent lives as long as the lab that started it: when the lab's connection closes
(the lab stopped, or its process was killed), the agent stops and the container ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.backends.docker.child import probe_services
from lab.backends.docker.daemon import QUICK, QUIET, RealMta
from lab.backends.docker.net import RealNet, kill_connections
from lab.backends.docker.servers import RealServer
from lab.errors import LabError
from lab.protocols import wire
from lab.protocols.wire import TOPOLOGY_FILE, AgentOp, Handler, LinkState
from lab.runtime.clock import LabClock
from lab.runtime.events import Event, EventBus
from lab.services.host import Host, settle_tasks
from lab.services.hostservices import HostServices
from lab.services.tls import LabCA
from lab.software.adapter import RenderContext, smtp_software
from lab.software.registry import adapter_for, server_adapters
from lab.software.userconfig import config_file_text, config_files_for
from lab.topology.addressing import assign_addresses, hostname_of
from lab.topology.model import Service, Software, Topology
from lab.topology.records import RecordTable

if TYPE_CHECKING:
    from lab.backends.docker.fetchrun import Fetchmail

log = logging.getLogger("maillab.node")

CONNECT_GRACE = 120.0  # seconds to wait for the lab's first connection


class Agent:
    def __init__(self, spec: dict[str, Any], topology: Topology, node: str, state: Path, run: Path):
        self.spec = spec
        self.name = node
        self.topology = topology
        self.me = spec["nodes"][node]
        self.addresses = assign_addresses(self.topology)
        self.records = RecordTable.from_topology(self.topology, self.addresses)
        self.state_dir, self.runtime_dir = state, run
        self.clock = LabClock(settle=self.settle)
        self.events = EventBus(self.clock.time)
        self.events.listen(self._forward)
        self.writer: asyncio.StreamWriter | None = None
        self.quiet = False  # readiness probes are not the lab's business
        self.capture = False  # send queued messages' content with their queue.queued events
        self.services: HostServices | None = None
        self.real: RealMta | None = None  # the node's SMTP service when it is a real MTA
        self.fetchmail: Fetchmail | None = None  # the node's fetch service when fetchmail
        self.servers: list[RealServer] = []  # its other real servers (Dovecot for pop3)
        self.host: Host | None = None
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.forwarders: list[asyncio.AbstractServer] = []
        self.ops: dict[str, Handler] = {
            AgentOp.START: self.start,
            AgentOp.RUN_QUEUES: self._services("run_queues"),
            AgentOp.PING: self.ping,
            AgentOp.SETTLE: self.settled,
            AgentOp.CLOCK_NEXT: self.next_timer,
            AgentOp.CLOCK_ADVANCE_TO: self.advance_to,
            AgentOp.CLOCK_TIME: self.clock_time,
            AgentOp.SUBMIT: self.submit,
            AgentOp.LINK: self.set_link,
            AgentOp.LINK_CLOSING: self.link_closing,
            AgentOp.CUT_SERVED: self.cut_served,
            AgentOp.FLUSH: self.flush,
            AgentOp.FETCH: self.fetch,
            AgentOp.QUEUE: self.queue,
            AgentOp.QUEUE_CONTENT: self.queue_content,
            AgentOp.CAPTURE: self.capture_queued,
            AgentOp.MAILBOX: self.mailbox,
            AgentOp.DNS_SET: self._services("set_dns"),
            AgentOp.DNS_FAULT: self._services("set_dns_fault"),
            AgentOp.DNS_FAULT_RULES: self._services("set_dns_fault_rules"),
            AgentOp.FAULT_ADD: self.add_fault,
            AgentOp.FAULT_CLEAR: self._services("clear_faults"),
            AgentOp.DROPS: self._services("arm_drops"),
            AgentOp.PACE: self.pace,
            AgentOp.RESET: self.reset,
            AgentOp.STOP: self.stop,
        }

    # events ------------------------------------------------------------------------------

    def _forward(self, event: Event) -> None:
        if self.quiet or self.writer is None or self.writer.is_closing():
            return
        if self.capture and event.kind == "queue.queued" and self.services is not None:
            with contextlib.suppress(Exception):  # the content first: it is read on the event
                qid = str(event.get("id"))
                if self.real is not None:  # read at once from the daemon's queue file
                    read = getattr(self.real.adapter, "queued_content", None)
                    raw = read(qid) if read is not None else None
                else:
                    raw = self.services.need_mta().content(qid)
                if raw is not None:
                    captured = {"id": qid, "content": wire.encode_bytes(raw)}
                    self.writer.write(wire.encode({"captured": captured}))
        self.writer.write(wire.encode({"event": wire.encode_event(event)}))

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

    async def start(self, offset: float = 0.0, epoch: float | None = None) -> dict[str, Any]:
        if self.services is not None:
            raise LabError("already started")
        self.clock.catch_up(float(offset))
        if epoch is not None:  # the lab's start: what fault windows count from
            self.clock.epoch = float(epoch)
        self.clock.start()
        self.clock.on_error = lambda timer, exc: self.events.emit(
            self.name, "clock.error", timer=timer, error=f"{type(exc).__name__}: {exc}"
        )
        self._write_system_files()
        subnets = {n: str(self.topology.networks[n].subnet) for n in self.addresses[self.name]}
        links = [link for link in self.topology.links.values() if link.node == self.name]
        net = RealNet(
            {n: str(a) for n, a in self.addresses[self.name].items()},
            self.me.get("dns_server"),
            subnets=subnets,
            interfaces=self.me["interfaces"],
            when_down={link.network: link.when_down.value for link in links},
            down={link.network for link in links if link.state == LinkState.DOWN},
            peers={
                str(a): (n, net) for n, nets in self.addresses.items() for net, a in nets.items()
            },
            node=self.name,
            clock=self.clock,
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
        node = self.topology.nodes[self.name]
        adapter = adapter_for(smtp_software(node), float(self.spec.get("connect_timeout", 3.0)))
        plan = self.me.get("config", {})
        servers = server_adapters(
            node, {s.value: config_file_text(plan, s) for s in (Service.pop3,)}
        )
        mail_uid = RenderContext.uid, RenderContext.gid  # a real server reads the Maildirs
        self.services = HostServices(
            self.host,
            self.records,
            connect_timeout=float(self.spec.get("connect_timeout", 3.0)),
            dns_timeout=float(self.spec.get("dns_timeout", 1.0)),
            durable=bool(self.spec.get("durable", True)),
            addresses=self.addresses,
            builtin_smtp=adapter is None,
            builtin_fetch=node.software_for(Service.fetch) is not Software.fetchmail,
            builtin_pop3=Service.pop3 not in servers,
            mail_owner=mail_uid if servers else None,
        )
        await net.apply_links()
        await self.services.start_dns()
        if adapter is not None or servers:
            tls_chain, tls_ca = self._tls_files()
            ctx = RenderContext(
                name=self.name,
                node=node,
                topology=self.topology,
                hostname=self.host.hostname,
                addresses=dict(self.host.addresses),
                mail_root=str(self.state_dir / "mail"),
                tls_chain=tls_chain,
                tls_ca=tls_ca,
                config_files=config_files_for(plan, Service.smtp),
            )
            if adapter is not None:
                self.real = RealMta(adapter, ctx, self.host, self.runtime_dir)
                await self.real.start()
            for server_adapter in servers.values():
                self.servers.append(RealServer(server_adapter, ctx, self.host))
                await self.servers[-1].start()
        await self.services.start_others()
        if node.software_for(Service.fetch) is Software.fetchmail:  # loaded only then
            from lab.backends.docker.fetchrun import Fetchmail

            self.fetchmail = await Fetchmail.start_for(
                self.host,
                self.records,
                self.runtime_dir,
                self.services.link_up,
                # the user's own .fetchmailrc (config: {fetch: FILE}), carried in the plan
                config_file_text(plan, Service.fetch),
            )
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
        if self.services.dns is not None:
            self.services.dns.probing = True
        if self.real is not None:
            self.real.probing = True
        try:
            probes = await probe_services(self.host)
        finally:
            self.quiet = False
            if self.services.mta is not None:
                self.services.mta.probing = False
            if self.services.dns is not None:
                self.services.dns.probing = False
            if self.real is not None:
                self.real.probing = False
        return {"probes": probes, "hostname": self.host.hostname}

    def _tls_files(self) -> tuple[str, str]:
        """A certificate of the lab CA for a real MTA on this host (its names, addresses):
        (key and chain file, CA file)."""
        assert self.host is not None
        if self.host.tls is None:
            return "", ""
        names = [self.host.hostname, self.name, *self.host.addresses.values()]
        chain, ca = self.host.tls.write_server_files(
            Path("/etc/maillab/tls"), *dict.fromkeys(str(n) for n in names)
        )
        return str(chain), str(ca)

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

    async def settle(self, timeout: float = 60.0) -> None:
        if self.host is not None:
            await settle_tasks([self.host], timeout, clock_wait=self._clock_wait())

    def _clock_wait(self) -> RealNet | None:
        """The host's network, when its connections can wait for the lab clock."""
        net = self.host.net if self.host is not None else None
        return net if isinstance(net, RealNet) and net.paced() else None

    # requests ----------------------------------------------------------------------------

    def _need(self) -> HostServices:
        if self.services is None:
            raise LabError("the node has not been started")
        return self.services

    def _services(self, method: str) -> Handler:
        """A request answered by the host's services themselves (once started)."""

        async def handler(**args: Any) -> Any:
            return await getattr(self._need(), method)(**args)

        handler.__name__ = method
        return handler

    async def ping(self) -> dict[str, Any]:
        return {"node": self.name, "pid": os.getpid()}

    async def settled(self, timeout: float = 60.0, quick: bool = False) -> dict[str, Any]:
        self._need()
        quiet = QUICK if quick else QUIET
        await self.settle(float(timeout))
        if self.real is not None:
            await self.real.settle(float(timeout), quiet)
        wait = self._clock_wait()
        mark = wait.mark() if wait is not None else 0
        busy = self._busy(quiet)
        if busy and wait is not None:  # its tasks may wait only for bytes on the clock
            await asyncio.sleep(QUICK)
            busy = not wait.idle_on_clock(mark) or self._busy(quiet, tasks=False)
        return {"events": len(self.events.events), "idle": not busy}

    def _busy(self, quiet: float = QUIET, tasks: bool = True) -> bool:
        if self.real is not None and self.real.busy(quiet):
            return True
        if self.fetchmail is not None and self.fetchmail.busy():
            return True
        if any(server.busy() for server in self.servers):
            return True
        return tasks and self.host is not None and any(not t.done() for t in self.host.tasks)

    async def next_timer(self) -> float | None:
        self._need()
        pending = self.clock.pending()
        due = [pending[0].when] if pending else []
        if self.real is not None:
            real_due = await self.real.next_due()
            if real_due is not None:
                due.append(max(real_due, self.clock.time()))
        return min(due) if due else None

    async def advance_to(self, when: float) -> int:
        self._need()
        ran = await self.clock.advance_to(float(when))
        if self.real is not None:
            # the daemon's clock follows the host's; what fell due is tried now
            self.real.set_offset(self.clock.offset)
            ran += await self.real.run_due(self.clock.time())
        return ran

    async def clock_time(self) -> dict[str, float]:
        return {"time": self.clock.time(), "offset": self.clock.offset}

    async def submit(
        self, mail_from: str, to: list[str], content: str, via: str | None = None
    ) -> dict[str, Any]:
        result = await self._need().submit(
            mail_from=mail_from, to=list(to), content=wire.decode_bytes(content), via=via
        )
        return wire.encode_submit(result)

    async def queue_content(self, queue_id: str) -> str:
        if self.real is not None:
            return wire.encode_bytes(await self.real.content(queue_id))
        return wire.encode_bytes(await self._need().queue_content(queue_id))

    async def capture_queued(self) -> None:
        """Send the content of every message queued from now on, before its event."""
        if self.real is not None and not hasattr(self.real.adapter, "queued_content"):
            raise LabError(
                f"node {self.name!r}: capturing queued content is not offered for"
                f" {self.real.adapter.software.value} yet"
            )
        if self.real is None:
            self._need().need_mta()
        self.capture = True

    # a real MTA's host answers these from its daemon --------------------------------------

    async def fetch(self) -> int:
        if self.fetchmail is not None:
            return await self.fetchmail.run_all()
        return int(await self._need().fetch())

    async def flush(self) -> int:
        if self.real is not None:
            return await self.real.flush()
        return int(await self._need().flush())

    async def queue(self) -> list[wire.QueueEntry]:
        if self.real is not None:
            return wire.encode_queue(await self.real.queue())
        return await self._need().queue()

    async def mailbox(self, user: str) -> list[wire.MailboxEntry]:
        if self.real is not None:
            return wire.encode_mailbox(self.real.mailbox(user))
        return await self._need().mailbox(user)

    async def set_link(self, link: str, state: str) -> int:
        """As every host: a link that drops cuts the TCP connections on its address,
        the real programs' (Postfix, Dovecot, fetchmail) as the agent's (net.py)."""
        cut = int(await self._need().set_link(link=link, state=state))
        if self.fetchmail is not None:  # fetchmail polls while the links are up
            self.fetchmail.link_changed()
        return cut

    async def pace(
        self, networks: dict[str, Any], links: list[Any], on_clock: list[str] | None = None
    ) -> None:
        """Pace this host's services' connections: all of it on the on_clock networks
        (on the lab clock), elsewhere delay, jitter and loss where there is no netem."""
        net = self.host.net if self.host is not None else None
        if not isinstance(net, RealNet):
            raise LabError(f"node {self.name}: not started")
        net.pace(networks, links, on_clock or [])

    async def link_closing(self, link: str) -> None:
        """One of this host's links is about to drop: no new connection across it."""
        spec = self.topology.links.get(link)
        net = self._need().host.net
        if spec is not None and isinstance(net, RealNet):
            await net.hold_new(spec.network)

    async def cut_served(self, address: str) -> int:
        """Another host's link drops: the connections this host serves to that host's
        address are destroyed first, before that host cuts its own ends (net.py)."""
        return await kill_connections(dst=address, served=True)

    async def add_fault(self, fault: dict[str, Any]) -> None:
        if self.real is not None:
            raise LabError(
                f"node {self.name!r}: faults are the built-in MTA's; this node runs"
                f" {self.real.adapter.software.value}"
            )
        await self._need().add_fault(fault)

    async def reset(self, epoch: float | None = None) -> None:
        """Back to the state the host started in (`Lab.reset()`; the lab has put its links
        as declared): its work cancelled, its clock at real time, its copy of the DNS as
        in the topology, the built-in services' state emptied, and each real program
        (fetchmail, the MTA, Dovecot) stopped, emptied and started again."""
        services = self._need()
        if self.fetchmail is not None:
            await self.fetchmail.stop()
        tasks = [t for t in services.host.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.clock.reset()
        if epoch is not None:
            self.clock.epoch = float(epoch)
        if self.records.version:
            self.records.restore(RecordTable.from_topology(self.topology, self.addresses))
        self.quiet = True  # what the programs say while they restart is not the lab's
        try:
            await services.reset()
            resets = [server.reset() for server in self.servers]
            if self.real is not None:
                resets.append(self.real.reset())
            await asyncio.gather(*resets)
            if self.fetchmail is not None:
                await self.fetchmail.reset()
        finally:
            self.quiet = False
        self.events.events.clear()

    async def stop(self) -> None:
        if self.services is not None:
            await self.settle(timeout=5.0)
            await self.clock.stop()
            await self.services.stop()
            if self.fetchmail is not None:
                await self.fetchmail.stop()
            if self.real is not None:
                await self.real.stop()
            for real_server in self.servers:
                await real_server.stop()
            if self.host is not None:
                await self.host.net.close()
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
        server = await asyncio.start_unix_server(
            self._connection, path=str(path), limit=wire.LINE_LIMIT
        )
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
            writer.write(wire.encode(wire.error("another lab is connected")))
            writer.close()
            return
        self.writer = writer
        self.connected.set()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while line := await reader.readline():
                request = wire.decode(line)
                task = asyncio.get_running_loop().create_task(self._answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (OSError, LabError) as exc:
            log.error("control connection: %s", exc)
        finally:
            self.writer = None
            self.done.set()  # the lab is gone: so is this host

    async def _answer(self, request: dict[str, Any]) -> None:
        def failed(op: str, exc: Exception) -> None:  # the lab shows it; the agent goes on
            log.error("%s failed", op, exc_info=exc)

        reply = await wire.answer(self.ops, request, on_error=failed)
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(wire.encode(reply))


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
    topology = pickle.loads((spec_path.parent / TOPOLOGY_FILE).read_bytes())
    agent = Agent(spec, topology, args.node, Path(args.state), spec_path.parent)
    log.info("agent for %s waiting on %s", args.node, args.control)
    asyncio.run(agent.serve(Path(args.control)))
    log.info("agent for %s stopped", args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
