"""Checks across the whole topology: names that must refer to something, addresses that
must fit their subnets and not clash, services a setting needs.

The model (model.py) checks each field on its own; this module checks how they fit
together. Every problem found is returned, each with its place in the file.

Besides problems (the file cannot be used), the checks find warnings: things that work
but probably not as meant, such as an MX record or a smarthost whose name has no address
in the lab DNS. Mail to it bounces, which may be the point of a scenario, so the file is
still valid; `maillab validate` and `maillab up` print them.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from lab.errors import Problem
from lab.topology.addressing import AddressPoolExhausted, assign_addresses, hostname_of
from lab.topology.fields import NAME_RE
from lab.topology.model import Node, Service, Topology
from lab.topology.positions import PathT, Positions
from lab.topology.records import Rcode, RecordTable, normalise
from lab.topology.software import (
    CONFIG_DIRECTORY,
    CONFIG_WANTED,
    SOFTWARE_SERVICES,
    Software,
    example,
)

# What gives a node each service, for messages about a service it does not run.
_SERVICE_HINT = {
    Service.smtp: "expected role: mta, hub or isp",
    Service.pop3: "expected mailboxes, or role: isp or pop3",
    Service.fetch: "expected fetch jobs, or role: hub",
}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _split_hostport(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return value, None


class _Checker:
    def __init__(self, topology: Topology, positions: Positions):
        self.t = topology
        self.pos = positions
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.services = {name: node.service_set() for name, node in topology.nodes.items()}
        self.hostnames = {normalise(hostname_of(topology, n)): n for n in topology.nodes}

    def add(self, path: PathT, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.pos.problem(path, message, at_key=at_key))

    def warn(self, path: PathT, message: str, *, at_key: bool = False) -> None:
        self.warnings.append(self.pos.problem(path, message, at_key=at_key))

    def nodes_with(self, service: Service) -> list[str]:
        return [n for n, s in self.services.items() if service in s]

    # ---------------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        self.names()
        self.networks()
        self.addresses()
        self.links()
        # Built even when some address is wrong (that is reported already), so that names
        # in the lab DNS still resolve and one mistake does not cause a second report.
        table = None
        try:
            table = RecordTable.from_topology(self.t, assign_addresses(self.t))
        except AddressPoolExhausted as exc:
            self.add(("nodes", exc.node, "networks", exc.network), str(exc))
        self.dns()
        if table is not None:
            self.mail_exchangers(table)
        for name, node in self.t.nodes.items():
            self.node(name, node, table)
        self.operator()
        self.checks()
        self.matrix()
        return self.problems

    def names(self) -> None:
        for section in ("networks", "nodes", "links", "checks"):
            for key in getattr(self.t, section):
                if not NAME_RE.match(key):
                    self.add(
                        (section, key),
                        f"{key!r} is not a usable name; expected letters, digits, '-' and '_',"
                        " starting with a letter",
                        at_key=True,
                    )

    def networks(self) -> None:
        items = list(self.t.networks.items())
        for i, (name, net) in enumerate(items):
            for other, other_net in items[:i]:
                if net.subnet.overlaps(other_net.subnet):
                    self.add(
                        ("networks", name, "subnet"),
                        f"{net.subnet} overlaps network {other!r} ({other_net.subnet});"
                        " expected separate subnets",
                    )

    def addresses(self) -> bool:
        ok = True
        seen: dict[ipaddress.IPv4Address, str] = {}
        for node_name, node in self.t.nodes.items():
            if not node.networks:
                self.add(("nodes", node_name, "networks"), "a node needs at least one network")
                ok = False
            for net_name, value in node.networks.items():
                path = ("nodes", node_name, "networks", net_name)
                net = self.t.networks.get(net_name)
                if net is None:
                    self.add(
                        path,
                        f"unknown network {net_name!r}; expected one of: "
                        f"{', '.join(self.t.networks)}",
                        at_key=True,
                    )
                    ok = False
                    continue
                if value == "auto":
                    continue
                address = ipaddress.IPv4Address(value)
                if address not in net.subnet:
                    self.add(path, f"{address} is not inside {net_name} ({net.subnet})")
                    ok = False
                elif net.subnet.prefixlen < 31 and address in (
                    net.subnet.network_address,
                    net.subnet.broadcast_address,
                ):
                    self.add(
                        path,
                        f"{address} is the network or broadcast address of"
                        f" {net.subnet}; expected a host address",
                    )
                    ok = False
                elif address in seen:
                    self.add(path, f"address {address} is already used by node {seen[address]!r}")
                    ok = False
                else:
                    seen[address] = node_name
        return ok

    def links(self) -> None:
        pairs: dict[tuple[str, str], str] = {}
        for name, link in self.t.links.items():
            path = ("links", name)
            node = self.t.nodes.get(link.node)
            if node is None:
                self.add((*path, "node"), self._unknown("node", link.node, self.t.nodes))
            if link.network not in self.t.networks:
                self.add(
                    (*path, "network"), self._unknown("network", link.network, self.t.networks)
                )
            elif node is not None and link.network not in node.networks:
                self.add(
                    (*path, "network"),
                    f"node {link.node!r} is not attached to network"
                    f" {link.network!r}; expected one of its networks:"
                    f" {', '.join(node.networks)}",
                )
            pair = (link.node, link.network)
            if pair in pairs:
                self.add(
                    path,
                    f"link {pairs[pair]!r} already joins {link.node!r} to {link.network!r}",
                    at_key=True,
                )
            pairs[pair] = name
            if (
                "fetch" in link.on_up
                and node is not None
                and not node.fetch
                and node.config_for(Service.fetch) is None  # its own .fetchmailrc
            ):
                self.add(
                    (*path, "on_up"),
                    f"the fetch hook needs fetch jobs (or a fetchmail config:) on {link.node!r}",
                )
            if (
                "flush" in link.on_up
                and node is not None
                and Service.smtp not in node.service_set()
            ):
                self.add((*path, "on_up"), f"the flush hook needs an MTA (smtp) on {link.node!r}")

    def dns(self) -> None:
        servers = self.nodes_with(Service.dns)
        if len(servers) > 1:
            self.add(
                ("nodes", servers[1]),
                f"only one node may run the lab DNS (already {servers[0]!r})",
                at_key=True,
            )
        if self.t.dns.zones and not servers:
            self.add(
                ("dns", "zones"),
                "zones are defined but no node runs the dns service;"
                " expected a node with role: dns",
                at_key=True,
            )
        if self.t.dns.faults and not servers:
            self.add(
                ("dns", "faults"),
                "DNS faults are defined but no node runs the dns service;"
                " expected a node with role: dns",
                at_key=True,
            )
        for zone, entries in self.t.dns.zones.items():
            zone_n = normalise(zone)
            for label in entries:
                if label.endswith(".") and not (
                    normalise(label) == zone_n or normalise(label).endswith("." + zone_n)
                ):
                    self.add(
                        ("dns", "zones", zone, label),
                        f"{label!r} is not inside zone"
                        f" {zone!r}; expected a name ending in .{zone_n}.",
                        at_key=True,
                    )

    def mail_exchangers(self, table: RecordTable) -> None:
        """An MX whose exchange has no address: mail for its name bounces (a warning)."""
        for zone, entries in self.t.dns.zones.items():
            for label, records in entries.items():
                for i, mx in enumerate(records.MX):
                    if mx.exchange not in (".", "") and _no_address(table, mx.exchange):
                        self.warn(
                            ("dns", "zones", zone, label, "MX", i),
                            f"mail exchanger {mx.exchange!r} has no address in the lab DNS,"
                            " so mail sent to this name bounces"
                            f"{self._host_hint(mx.exchange, table)} (expected a node's"
                            " hostname or a name with an A record in dns.zones)",
                        )

    def smarthost(self, name: str, node: Node, table: RecordTable | None) -> None:
        """A smarthost must resolve in the lab DNS (the MTA looks it up there); one that
        does not makes every relayed message bounce: a warning, not a problem."""
        target = node.smarthost
        if not target or table is None:
            return
        host, _ = _split_hostport(target)
        if _is_ip(host):
            return
        lookup = hostname_of(self.t, host) if host in self.t.nodes else host
        if _no_address(table, lookup):
            via = f" (node {host!r} is {lookup!r})" if lookup != host else ""
            self.warn(
                ("nodes", name, "smarthost"),
                f"smarthost {target!r} has no address in the lab DNS{via}, so mail relayed"
                f" through it bounces{self._host_hint(host, table)} (expected a node name,"
                " a node's hostname, an IP address or a name with an A record in dns.zones)",
            )

    def _host_hint(self, name: str, table: RecordTable | None) -> str:
        """'; did you mean X?' for a mistyped host: a node name close to it (as for any
        unknown node), else a host name only a letter or two away from it."""
        hint = self._did_you_mean(name, self.t.nodes)
        if hint:
            return hint
        names = [hostname_of(self.t, n) for n in self.t.nodes]
        if table is not None:
            names += [n for n, rec in table.names.items() if rec.A or rec.CNAME]
        close = [n for n in dict.fromkeys(names) if n != name and _edits(name, n) <= 2]
        return self._did_you_mean(name, close)

    def resolvable(self, target: str, table: RecordTable | None) -> bool:
        host, _ = _split_hostport(target)
        if host in self.t.nodes or normalise(host) in self.hostnames or _is_ip(host):
            return True
        # Without a table (no free address) a name cannot be checked: do not report it.
        return table is None or table.resolves(host)

    def relay_domains(self, name: str, node: Node, table: RecordTable | None) -> None:
        """A relay domain is somebody else's: not one of the node's own domains, and with
        mail exchangers (or an address) in the lab's DNS to relay its mail to."""
        own = {normalise(d) for d in node.local_domains}
        own |= {normalise(d) for box in node.mailboxes.values() for d in box.domains}
        for i, domain in enumerate(node.relay_domains):
            path = ("nodes", name, "relay_domains", i)
            if normalise(domain) in own:
                self.add(
                    path,
                    f"{domain!r} is delivered here (local_domains or a maildrop's domains);"
                    " expected a domain this node relays to its mail exchangers",
                )
            elif table is not None and not (
                table.lookup(domain, "MX").values("MX") or table.resolves(domain)
            ):
                self.add(
                    path,
                    f"{domain!r} has no MX and no address in the lab's DNS, so its mail would"
                    " have nowhere to go; expected an MX record for it under dns.zones",
                )

    def node(self, name: str, node: Node, table: RecordTable | None) -> None:
        path: PathT = ("nodes", name)
        services = self.services[name]
        smtp = Service.smtp in services
        mta_fields = (
            "local_domains",
            "users",
            "aliases",
            "relay_from",
            "relay_domains",
            "smarthost",
            "masquerade",
            "faults",
        )
        if not smtp:
            for field in mta_fields:
                if field in node.model_fields_set and getattr(node, field):
                    self.add(
                        (*path, field),
                        f"{field} is an MTA setting but node {name!r} runs"
                        " no smtp service; expected role: mta, hub or isp",
                        at_key=True,
                    )
        self.software(name, node)
        self.smarthost(name, node, table)
        for i, item in enumerate(node.relay_from):
            if item in self.t.networks:
                continue
            try:
                ipaddress.IPv4Network(item, strict=False)
            except ValueError:
                self.add(
                    (*path, "relay_from", i),
                    f"{item!r} is neither a network of this lab"
                    f" ({', '.join(self.t.networks)}) nor a CIDR such as 10.20.1.0/24",
                )
        self.relay_domains(name, node, table)
        local = set(node.users) | set(node.aliases) | {"postmaster"}
        for alias, targets in node.aliases.items():
            for i, target in enumerate(targets):
                if "@" not in target and target not in local:
                    self.add(
                        (*path, "aliases", alias, i),
                        f"{target!r} is not a local user or"
                        " alias; expected one of the users, another alias, or a remote"
                        " address user@domain",
                    )
        for i, job in enumerate(node.fetch):
            jpath = (*path, "fetch", i)
            if not smtp:
                self.add(
                    jpath,
                    f"fetch jobs hand mail to the local MTA, but {name!r} runs no"
                    " smtp service; expected role: hub",
                )
            if not self.resolvable(job.server, table):
                self.add((*jpath, "server"), self._unresolved(job.server, table))
            users: list[tuple[str | tuple[str, str], str]] = [("to", job.to)] if job.to else []
            users += [(("multidrop", k), v or k) for k, v in (job.multidrop or {}).items()]
            users.append(("postmaster", job.postmaster))
            for where, user in users:
                if user not in local:
                    sub = where if isinstance(where, tuple) else (where,)
                    self.add(
                        (*jpath, *sub),
                        f"{user!r} is not a local user of {name!r};"
                        f" expected one of: {', '.join(sorted(local))}",
                    )
        if Service.client in services:
            if node.submit_to is None:
                mtas = [
                    n
                    for n in self.nodes_with(Service.smtp)
                    if set(self.t.nodes[n].networks) & set(node.networks)
                ]
                if not mtas:
                    self.add(
                        path, "a client needs submit_to (no MTA shares its networks)", at_key=True
                    )
            elif not self.resolvable(node.submit_to, table):
                self.add((*path, "submit_to"), self._unresolved(node.submit_to, table))
        if node.mailboxes and Service.pop3 not in services:  # pragma: no cover - implied
            self.add((*path, "mailboxes"), "mailboxes need the pop3 service")

    def software(self, name: str, node: Node) -> None:
        """Real software for services the node runs; config and settings only beside it."""
        services = self.services[name]
        for service in SOFTWARE_SERVICES:
            software = node.software_for(service)
            runs = service in services
            no_service = f"node {name!r} runs no {service.value} service; {_SERVICE_HINT[service]}"
            if software is not Software.builtin and not runs:
                self.add(
                    self._per_service(name, "software", service),
                    f"{software.value} runs {service.value}, but {no_service}",
                    at_key=True,
                )
            config = node.config_for(service)
            if config is not None:
                where = self._per_service(name, "config", service)
                if not runs:
                    self.add(where, f"config for {service.value}, but {no_service}", at_key=True)
                elif software is Software.builtin:
                    self.add(
                        where,
                        f"config is for real software, but {service.value} runs builtin on"
                        f" node {name!r}; name its software too ({example(service)})",
                        at_key=True,
                    )
                else:
                    problem = config_problem(software, config)
                    if problem:
                        self.add(where, problem)
            settings = node.settings_for(service)
            if settings:
                where = self._per_service(name, "settings", service)
                if not runs:
                    self.add(where, f"settings for {service.value}, but {no_service}", at_key=True)
                elif software is Software.builtin:
                    self.add(
                        where,
                        f"settings are passed to real software, but {service.value} runs builtin"
                        f" on node {name!r} (the built-in software takes the node's own fields);"
                        f" name its software too ({example(service)})",
                        at_key=True,
                    )

    def _per_service(self, name: str, field: str, service: Service) -> PathT:
        """Where a service's entry stands: its key in the mapping form, else the field
        (the short form for smtp)."""
        path: PathT = ("nodes", name, field, service.value)
        return path if path in self.pos.keys else ("nodes", name, field)

    def operator(self) -> None:
        op = self.t.operator
        if op is None:
            return
        if op not in self.t.nodes:
            self.add(("operator",), self._unknown("node", op, self.t.nodes))
        elif Service.client not in self.services[op]:
            self.add(("operator",), f"{op!r} is not a client; expected a node with role: client")

    def checks(self) -> None:
        for check, steps in self.t.checks.items():
            for i, step in enumerate(steps):
                path: PathT = ("checks", check, i)
                if step.send:
                    self._node_ref((*path, "send", "from"), step.send.from_)
                    if step.send.via:
                        self._node_ref((*path, "send", "via"), step.send.via, Service.smtp)
                if step.link:
                    for link in step.link:
                        if link not in self.t.links:
                            self.add(
                                (*path, "link", link),
                                self._unknown("link", link, self.t.links),
                                at_key=True,
                            )
                if step.flush:
                    self._node_ref((*path, "flush"), step.flush, Service.smtp)
                if step.fetch:
                    self._node_ref((*path, "fetch"), step.fetch, Service.fetch)
                if step.expect:
                    e = step.expect
                    for kind in ("delivered", "not_delivered"):
                        d = getattr(e, kind)
                        if d and d.node:
                            self._node_ref((*path, "expect", kind, "node"), d.node)
                    if e.queued:
                        self._node_ref((*path, "expect", "queued", "on"), e.queued.on, Service.smtp)
                    if e.bounced and e.bounced.by:
                        self._node_ref((*path, "expect", "bounced", "by"), e.bounced.by)
                    if e.rejected and e.rejected.by:
                        self._node_ref((*path, "expect", "rejected", "by"), e.rejected.by)

    def matrix(self) -> None:
        dut = self.t.matrix.dut
        if dut:
            self._node_ref(("matrix", "dut"), dut, Service.smtp)
        marked = [("not_on", c) for c in self.t.matrix.not_on]
        marked += [("notes", c) for c in self.t.matrix.notes]
        for key, check in marked:
            if check not in self.t.checks:
                self.add(
                    ("matrix", key, check),
                    self._unknown("check", check, self.t.checks),
                    at_key=True,
                )

    # helpers ------------------------------------------------------------------------

    def _node_ref(self, path: PathT, name: str, service: Service | None = None) -> None:
        if name not in self.t.nodes:
            self.add(path, self._unknown("node", name, self.t.nodes))
        elif service and service not in self.services[name]:
            self.add(path, f"node {name!r} runs no {service.value} service")

    @staticmethod
    def _did_you_mean(name: str, known: Iterable[str]) -> str:
        """'; did you mean X?' for the known name closest to a mistyped one, or ''."""
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close and close[0] != name else ""

    @classmethod
    def _unknown(cls, kind: str, name: str, known: Iterable[str]) -> str:
        names = list(known)
        hint = cls._did_you_mean(name, names)
        return f"unknown {kind} {name!r}{hint} (expected one of: {', '.join(names) or 'none'})"

    def _unresolved(self, target: str, table: RecordTable | None) -> str:
        host, _ = _split_hostport(target)
        return (
            f"{target!r} does not resolve in the lab{self._host_hint(host, table)} (expected a"
            " node name, a node's hostname, an IP address or a name with an A record in"
            " dns.zones)"
        )


def config_problem(software: Software, path: Path) -> str | None:
    """What is wrong with `path` as `software`'s configuration, or None."""
    wanted = f"{software.value} takes {CONFIG_WANTED[software]}"
    files = CONFIG_DIRECTORY.get(software)
    kind = "directory" if files else "file"
    if not path.exists():
        return f"no such {kind} {path} ({wanted})"
    if files:
        if not path.is_dir():
            return f"{path} is not a directory; {wanted}"
        if not any((path / f).is_file() for f in files):
            held = files[0] if len(files) == 1 else f"neither {' nor '.join(files)}"
            return f"{path} holds {held}; {wanted}"
    elif path.is_dir():
        return f"{path} is a directory; {wanted}"
    return None


def _edits(a: str, b: str) -> int:
    """Characters inserted, deleted or replaced between two names (as difflib sees it)."""
    matcher = difflib.SequenceMatcher(None, a, b)
    return sum(
        max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
    )


def _no_address(table: RecordTable, name: str) -> bool:
    """True when `name` has no address in the lab DNS and no fault entry (SERVFAIL,
    NXDOMAIN, ...) on its way says that is the point."""
    answer = table.lookup(name, "A")
    if answer.values("A"):
        return False
    if answer.rcode not in (Rcode.noerror, Rcode.nxdomain):
        return False  # a fault on purpose
    end = str(answer.records[-1][2]) if answer.records else name  # where the CNAMEs lead
    record = table.names.get(normalise(end))
    return not (record and record.fault)


def semantic_check(topology: Topology, positions: Positions) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings): what makes the topology unusable, and what works but
    probably not as meant."""
    checker = _Checker(topology, positions)
    problems = checker.run()
    return problems, sorted(checker.warnings, key=lambda p: (p.line, p.column, p.path))


def semantic_problems(topology: Topology, positions: Positions) -> list[Problem]:
    return semantic_check(topology, positions)[0]
