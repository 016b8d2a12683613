"""Where a recipient goes: a local user, a POP3 maildrop, or another host.

Local parts are compared without regard to case, as sendmail does for aliases. The host's
own address literals (`user@[192.168.10.1]` on the host with that address) are local
domains, as for sendmail and Postfix.
`postmaster` always exists (RFC 5321 section 4.5.1): its alias, else a user of that
name, else root, else a maildrop named postmaster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lab.protocols.smtp import split_address
from lab.topology.model import Node

MAX_ALIAS_DEPTH = 20


class AliasLoop(Exception):
    pass


@dataclass(frozen=True)
class Destination:
    address: str
    kind: str  # local | mailbox | remote
    target: str = ""  # local user / maildrop name


class AddressBook:
    def __init__(self, node: Node, hostname: str, addresses: Iterable[str] = ()):
        self.node = node
        self.hostname = hostname.lower()
        self.local_domains = (
            {d.lower() for d in node.local_domains}
            | {self.hostname}
            | {f"[{a}]" for a in addresses}
        )
        self.relay_domains = {d.lower() for d in node.relay_domains}
        self.users = {u.lower(): u for u in node.users}
        self.aliases = {a.lower(): targets for a, targets in node.aliases.items()}
        self.maildrops = {m.lower(): m for m in node.mailboxes}
        self.maildrop_domains = {
            d.lower(): name for name, box in node.mailboxes.items() for d in box.domains
        }
        self.primary_domain = node.local_domains[0].lower() if node.local_domains else self.hostname

    def is_local_domain(self, domain: str) -> bool:
        domain = domain.lower()
        return domain == "" or domain in self.local_domains or domain in self.maildrop_domains

    def knows(self, address: str) -> bool:
        """True when a local address has somewhere to go."""
        local, domain = split_address(address)
        if domain in self.maildrop_domains:
            return True
        name = local.lower()
        return (
            name in self.users
            or name in self.aliases
            or name in self.maildrops
            or name == "postmaster"
        )

    def expand(self, address: str) -> list[Destination]:
        """Final destinations for an address (aliases expanded); raises AliasLoop."""
        result: list[Destination] = []
        self._expand(address, [], result)
        if not result:
            raise AliasLoop(f"alias loop for {address}")
        seen: set[Destination] = set()
        unique = []
        for dest in result:
            if dest not in seen:
                seen.add(dest)
                unique.append(dest)
        return unique

    def _expand(self, address: str, chain: list[str], out: list[Destination]) -> None:
        local, domain = split_address(address)
        if domain and not self.is_local_domain(domain):
            out.append(Destination(address, "remote"))
            return
        if domain in self.maildrop_domains:
            out.append(Destination(address, "mailbox", self.maildrop_domains[domain]))
            return
        name = local.lower()
        if name in chain:
            return  # loop: this branch ends here
        if len(chain) > MAX_ALIAS_DEPTH:
            return
        if name in self.aliases:
            for target in self.aliases[name]:
                if target.lower() == name:  # alias to itself means the user
                    if name in self.users:
                        out.append(
                            Destination(self.qualify(self.users[name]), "local", self.users[name])
                        )
                    continue
                self._expand(target, [*chain, name], out)
            return
        if name in self.users:
            out.append(Destination(self.qualify(self.users[name]), "local", self.users[name]))
        elif name in self.maildrops:
            out.append(
                Destination(self.qualify(self.maildrops[name]), "mailbox", self.maildrops[name])
            )
        elif name == "postmaster":
            if "root" in self.users:
                out.append(Destination(self.qualify("root"), "local", "root"))
            else:
                out.append(Destination(self.qualify("postmaster"), "local", "postmaster"))

    def qualify(self, local: str) -> str:
        return f"{local}@{self.primary_domain}"

    def postmaster(self) -> list[Destination]:
        return self.expand("postmaster")
