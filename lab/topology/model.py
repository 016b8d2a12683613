"""The topology format: a small mail world as data.

A topology names networks, the hosts (nodes) on them and the services each host runs,
the dial-up links that come and go, the lab's DNS zones, and named checks. It is pure
data: nothing here opens a socket or starts a container (that is the Lab's job).

Every model forbids unknown keys, so a typo is an error with a suggestion rather than a
silently ignored setting. Field descriptions become the JSON Schema that editors use.
The small value types the models share are in fields.py, the checks' steps in checks.py.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from lab.topology.checks import Step
from lab.topology.faults import (  # noqa: F401  (re-exported)
    DnsFault,
    DnsFaultRule,
    Fault,
    FaultStage,
    RateLimit,
)
from lab.topology.fields import (
    EXCHANGE_PATTERN,
    AddressOrAuto,
    Base,
    Hostname,
    Service,
    check_address,
    check_hostname,
    check_name,
    listify,
    one_or_many,
)
from lab.topology.impair import Impairment, LinkImpairment
from lab.topology.matrix import Matrix
from lab.topology.mx import parse_mx
from lab.topology.schedule import Schedule
from lab.topology.software import (
    ConfigField,
    ServiceConfig,
    ServiceSettings,
    ServiceSoftware,
    Setting,
    SettingsField,
    Software,
    SoftwareField,
    _kind,
)
from lab.topology.units import Duration, Size

# Service (in fields.py) and Software (in software.py) are imported here too, so that code
# keeps reading them from lab.topology.model.


SERVICE_ALIASES = {"mta": Service.smtp}

# Roles are presets of services (a name -> value table, as Mininet maps names to classes).
ROLES: dict[str, tuple[Service, ...]] = {
    "dns": (Service.dns,),
    "mta": (Service.smtp,),
    "hub": (Service.smtp, Service.fetch),
    "isp": (Service.smtp, Service.pop3),
    "pop3": (Service.pop3,),
    "client": (Service.client,),
}


# ---------------------------------------------------------------------------------------
# Networks and links


class Network(Base):
    """An IP network the lab's hosts attach to (a LAN, "the internet")."""

    subnet: ipaddress.IPv4Network = Field(description="the network in CIDR form, e.g. 10.20.0.0/16")
    description: str | None = None
    impair: Impairment | None = Field(
        None, description="rate, delay, jitter, loss of every connection on it (docs/links.md)"
    )

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"expected an IPv4 network in CIDR form such as 192.168.10.0/24, got {value!r}"
                    f" ({exc})"
                ) from None
        raise ValueError(
            f"expected an IPv4 network in CIDR form such as 10.20.0.0/16, got {value!r}"
        )


class WhenDown(StrEnum):
    refuse = "refuse"
    blackhole = "blackhole"


class Hook(StrEnum):
    flush = "flush"
    fetch = "fetch"


class Link(Base):
    """A host's attachment to a network that can be up or down: the dial-up line.

    While down, the host cannot reach that network and nobody there can reach it:
    `refuse` makes connections fail at once (the modem is off), `blackhole` makes them
    time out (the line is up but nothing answers). Taking a link down cuts connections
    already open across it. When it comes up, the `on_up` hooks run in order, as an
    ip-up script would (`flush` = sendmail -q, `fetch` = fetchmail).
    """

    node: str = Field(description="the host whose attachment this is")
    network: str = Field(description="the network the host attaches to over this link")
    state: Literal["up", "down"] = Field("up", description="the state when the lab comes up")
    when_down: WhenDown = Field(
        WhenDown.refuse, description="refuse: fail at once; blackhole: time out"
    )
    on_up: list[Hook] = Field(
        default_factory=list, description="run in order when the link comes up"
    )
    schedule: Schedule | None = Field(
        None,
        description="dial on the lab clock: {every: 1h, for: 5m} and/or {at: [10m, 2h]};"
        " each dial raises the link (running on_up) and drops it after 'for'",
    )
    impair: LinkImpairment | None = Field(
        None,
        description="rate, delay, jitter, loss across it, and a hang-up (docs/links.md)",
    )


# ---------------------------------------------------------------------------------------
# DNS


class MxRecord(Base):
    preference: int = Field(ge=0, le=65535)
    exchange: str = Field(
        pattern=EXCHANGE_PATTERN,
        description="the mail exchanger host name, or '.' for a null MX",
    )


MX_PATTERN = r"^\s*\d{1,5}\s+\S+\s*$"
_MX_ITEM_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": MX_PATTERN},
        {
            "type": "object",
            "properties": {
                "preference": {"type": "integer", "minimum": 0, "maximum": 65535},
                "exchange": {"type": "string"},
            },
            "required": ["preference", "exchange"],
            "additionalProperties": False,
        },
    ],
    "description": "'PREFERENCE HOST', e.g. '10 mx.freeuk.com', or {preference, exchange}",
}


class RecordSet(Base):
    """The records of one name. A value may be one item or a list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    A: Annotated[
        list[ipaddress.IPv4Address],
        one_or_many({"type": "string", "format": "ipv4"}, "IPv4 addresses"),
    ] = Field(default_factory=list)
    MX: Annotated[
        list[Annotated[MxRecord, BeforeValidator(parse_mx)]],
        one_or_many(_MX_ITEM_SCHEMA, "mail exchangers"),
    ] = Field(default_factory=list)
    CNAME: Hostname | None = Field(None, description="canonical name (alone at its name)")
    TXT: Annotated[list[str], one_or_many({"type": "string"}, "text records, e.g. v=spf1 ...")] = (
        Field(default_factory=list)
    )
    NS: Annotated[list[str], one_or_many({"type": "string"}, "name servers")] = Field(
        default_factory=list
    )
    PTR: Annotated[list[str], one_or_many({"type": "string"}, "reverse names (in-addr.arpa)")] = (
        Field(default_factory=list)
    )
    fault: DnsFault | None = Field(
        None, description="answer every query for this name with this fault instead"
    )
    ttl: int | None = Field(None, ge=0)

    @field_validator("A", "MX", "TXT", "NS", "PTR", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return listify(value)

    @model_validator(mode="after")
    def _cname_alone(self) -> RecordSet:
        if self.CNAME and (self.A or self.MX or self.TXT or self.NS or self.PTR):
            raise ValueError("a CNAME cannot stand beside other records at the same name")
        return self


class Dns(Base):
    """The lab's DNS: zones of records, served by the node with the dns service."""

    zones: dict[Hostname, dict[str, RecordSet]] = Field(
        default_factory=dict,
        description="zone name -> record name ('@' for the apex, a relative label, or an FQDN"
        " ending in '.') -> records",
    )
    ptr: Literal["auto", "none"] = Field(
        "auto", description="auto: answer reverse lookups from the A records"
    )
    hosts: Literal["auto", "none"] = Field(
        "auto", description="auto: each node's hostname resolves to its addresses"
    )
    ttl: int = Field(300, ge=0)
    faults: list[DnsFaultRule] = Field(
        default_factory=list,
        description="answer matching names with SERVFAIL, silence, NXDOMAIN or REFUSED, in a"
        " lab-time window and/or by chance",
    )


# ---------------------------------------------------------------------------------------
# MTA


class Masquerade(Base):
    """Rewrite local addresses on mail leaving the host (sendmail MASQUERADE_AS & friends)."""

    as_: str = Field(
        alias="as",
        description="the domain to masquerade as (shofar.uklinux.net), or a whole address"
        " (joe.bloggs@isp.com) that replaces every masqueraded address",
    )
    domains: list[Hostname] = Field(
        default_factory=list,
        description="domains whose addresses are masqueraded (default: the local domains)",
    )
    entire_domain: bool = Field(False, description="subdomains of those domains too")
    header: bool = Field(True, description="rewrite From:, Sender: and Reply-To:")
    envelope: bool = Field(False, description="rewrite the envelope sender (MAIL FROM)")
    recipients: bool = Field(False, description="rewrite To: and Cc: too (allmasquerade)")

    @field_validator("as_")
    @classmethod
    def _as(cls, value: str) -> str:
        if "@" in value:
            return check_address(value)
        return check_hostname(value)


class StartTls(StrEnum):
    off = "off"
    offer = "offer"
    require = "require"


class HeloCheck(StrEnum):
    off = "off"
    warn = "warn"
    reject = "reject"


class SpfCheck(StrEnum):
    off = "off"
    tag = "tag"
    reject = "reject"


class Greylist(Base):
    enabled: bool = True
    delay: Duration = Field(300.0, description="how long a new triplet is refused with 451")


class Policy(Base):
    """What an MTA refuses, and how."""

    verify_sender_domain: bool = Field(
        False, description="refuse MAIL FROM whose domain has no MX or A (553; 451 on DNS failure)"
    )
    helo_rdns: HeloCheck = Field(HeloCheck.off, description="compare the HELO name with the rDNS")
    spf: SpfCheck = Field(SpfCheck.off, description="check SPF (TXT) for the envelope sender")
    vrfy: Literal[250, 252, 502] = Field(
        252, description="252: cannot verify (default); 250: answer; 502: disabled"
    )
    expn: Literal[250, 502] = Field(502, description="502: disabled (default); 250: expand lists")
    max_size: Size = Field(10_000_000, description="largest message accepted (552 above)")
    max_recipients: int = Field(100, ge=1, description="more RCPTs get 452")
    max_received: int = Field(25, ge=1, description="more Received: headers is a loop (5.4.6)")
    greylist: Greylist | None = None
    starttls: StartTls = Field(StartTls.offer)
    tls_outbound: Literal["opportunistic", "require", "off"] = Field(
        "opportunistic", description="use STARTTLS when delivering if the server offers it"
    )


class Retry(Base):
    """When deferred mail is retried, warned about and returned (RFC 5321 section 4.5.4.1)."""

    intervals: list[Duration] = Field(
        default_factory=lambda: [1800.0],
        description="waits between attempts; the last one repeats (default 30m)",
    )
    warn_after: Duration | None = Field(
        4 * 3600.0, description="send a delay DSN after this long (default 4h; null: never)"
    )
    give_up_after: Duration = Field(5 * 86400.0, description="bounce after this long (default 5d)")

    @field_validator("intervals")
    @classmethod
    def _nonempty(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("expected at least one retry interval, each longer than zero")
        return value


# ---------------------------------------------------------------------------------------
# POP3 and fetching


class Mailbox(Base):
    """A POP3 maildrop. With domains it is a multidrop box: all mail for those domains."""

    password: str
    domains: list[Hostname] = Field(
        default_factory=list, description="domains whose mail all lands here (multidrop)"
    )
    apop: bool = Field(True, description="allow APOP login")


class FetchJob(Base):
    """A fetchmail poll: collect a POP3 maildrop and hand each message to the local MTA."""

    server: Hostname = Field(description="the POP3 server: a node name or a name in the lab DNS")
    protocol: Literal["pop3"] = "pop3"
    port: int = Field(110, ge=1, le=65535)
    user: str
    password: str
    to: str | None = Field(None, description="single-drop: everything goes to this local user")
    multidrop: dict[str, str | None] | None = Field(
        None,
        description="multidrop: remote name -> local user (null: the same name), as in"
        " fetchmail's 'to eddy nelug=eddy ... here'",
    )
    aka: list[Hostname] = Field(
        default_factory=list, description="domains that count as ours in multidrop headers"
    )
    postmaster: str = Field("postmaster", description="where unmatched multidrop names go")
    keep: bool = Field(False, description="leave messages on the server (remember UIDLs)")
    poll: Duration | None = Field(300.0, description="poll interval while the link is up")
    stls: bool = Field(False, description="use STLS")

    @model_validator(mode="after")
    def _drop(self) -> FetchJob:
        if self.to and self.multidrop is not None:
            raise ValueError("a fetch job is single-drop (to) or multidrop, not both")
        if not self.to and self.multidrop is None:
            raise ValueError("a fetch job needs a single-drop user (to) or a multidrop map")
        return self


# ---------------------------------------------------------------------------------------
# Nodes


class Node(Base):
    """A host: a name, addresses on networks, and the services it runs."""

    role: str | None = Field(
        None,
        description="a preset of services: " + ", ".join(ROLES),
        json_schema_extra={"enum": list(ROLES)},
    )
    services: list[str] | None = Field(
        None,
        description="explicit services (instead of, or added to, the role): smtp (mta), pop3,"
        " dns, fetch, client",
        json_schema_extra={"items": {"enum": [*(s.value for s in Service), "mta"]}},
    )
    hostname: Hostname | None = Field(None, description="the fully qualified host name")
    networks: Annotated[
        dict[str, AddressOrAuto],
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    },
                    {"type": "array", "items": {"type": "string"}},
                ],
                "description": "network name -> address ('auto' or empty: allocated), or a"
                " list of network names",
            }
        ),
    ] = Field(
        description="network name -> address on it ('auto' or empty: allocated from the subnet);"
        " a list of network names allocates every address"
    )
    software: SoftwareField = Field(
        default_factory=ServiceSoftware,
        description="what runs each service: one name for smtp (builtin, postfix, exim,"
        " sendmail), or service -> software (smtp; pop3: builtin, dovecot; fetch: builtin,"
        " fetchmail). Default: builtin",
    )
    config: ConfigField = Field(
        default_factory=ServiceConfig,
        description="the user's own configuration of real software, relative to the topology"
        " file: one path for smtp, or service -> path (postfix: a directory with main.cf"
        " and/or master.cf; dovecot: a dovecot.conf; fetchmail: a .fetchmailrc)",
    )
    settings: SettingsField = Field(
        default_factory=ServiceSettings,
        description="raw settings passed to real software as they are (postconf key=value"
        " for postfix): key: value for smtp, or service -> key: value",
    )
    # MTA
    local_domains: list[Hostname] = Field(
        default_factory=list, description="domains delivered here"
    )
    users: list[str] = Field(default_factory=list, description="local users with mailboxes")
    aliases: dict[str, list[str]] = Field(
        default_factory=dict, description="alias -> local users, other aliases or remote addresses"
    )
    relay_from: list[str] = Field(
        default_factory=list, description="clients allowed to relay: network names or CIDRs"
    )
    relay_domains: list[Hostname] = Field(
        default_factory=list, description="domains relayed for anyone, to their MX (a backup MX)"
    )
    smarthost: str | None = Field(
        None, description="send all non-local mail here (HOST or HOST:PORT, a node or a DNS name)"
    )
    masquerade: Masquerade | None = None
    policy: Policy = Field(default_factory=Policy)
    retry: Retry = Field(default_factory=Retry)
    faults: list[Fault] = Field(default_factory=list, description="scripted misbehaviour")
    # POP3
    mailboxes: dict[str, Mailbox] = Field(default_factory=dict, description="POP3 maildrops")
    # fetch
    fetch: list[FetchJob] = Field(default_factory=list, description="fetchmail polls")
    # client
    submit_to: str | None = Field(None, description="the MTA this client submits to (node or host)")
    submit_port: int = Field(25, ge=1, le=65535)

    @field_validator("networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            if wrong := [_kind(item) for item in value if not isinstance(item, str)]:
                raise ValueError(f"expected a list of network names, got {wrong[0]} in it")
            return {name: "auto" for name in value}
        return value

    @field_validator("services", mode="before")
    @classmethod
    def _services(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str) or (
                    item not in Service.__members__ and item not in SERVICE_ALIASES
                ):
                    raise ValueError(
                        f"unknown service {item!r}; expected one of: smtp (or mta), pop3, dns,"
                        " fetch, client"
                    )
        return value

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and value not in ROLES:
            raise ValueError(f"unknown role {value!r}; expected one of: {', '.join(ROLES)}")
        return value

    @field_validator("local_domains", "relay_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [check_hostname(v) for v in value]

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return check_hostname(value) if value is not None else None

    @model_validator(mode="after")
    def _has_services(self) -> Node:
        if self.role is None and not self.services:
            raise ValueError("a node needs a role or a list of services")
        return self

    def software_for(self, service: Service) -> Software:
        """The software that runs `service` on this node (builtin unless one is named)."""
        return self.software.of(service) or Software.builtin

    def config_for(self, service: Service) -> Path | None:
        """The user's own configuration for `service`'s software (an absolute path), if any."""
        return self.config.of(service)

    def settings_for(self, service: Service) -> dict[str, Setting]:
        """The raw settings for `service`'s software (empty unless some are given)."""
        return dict(self.settings.of(service) or {})

    def service_set(self) -> set[Service]:
        result: set[Service] = set(ROLES.get(self.role or "", ()))
        for item in self.services or ():
            result.add(SERVICE_ALIASES.get(item) or Service(item))
        if self.fetch:
            result.add(Service.fetch)
        if self.mailboxes:
            result.add(Service.pop3)
        return result


# ---------------------------------------------------------------------------------------
# The topology


class Topology(Base):
    """A small mail world."""

    name: str = Field(description="the lab's name")
    description: str | None = None
    networks: dict[str, Network] = Field(description="network name -> subnet")
    links: dict[str, Link] = Field(default_factory=dict, description="links that go up and down")
    dns: Dns = Field(default_factory=Dns)
    nodes: dict[str, Node] = Field(description="host name in the lab -> host")
    seed: int | None = Field(
        None,
        ge=0,
        description="the seed of every chance (a fault's 'chance'): the same seed replays the"
        " same run (default: a new one each run, printed when a check fails)",
    )
    operator: str | None = Field(
        None,
        description="the client node whose address a person on the host machine appears to"
        " connect from (default: the first client)",
    )
    checks: dict[str, list[Step]] = Field(
        default_factory=dict, description="named checks: lists of steps"
    )
    matrix: Matrix = Field(
        default_factory=Matrix,
        description="the fidelity matrix: the device under test, checks that do not apply",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)
