"""The lab DNS over the wire: dig from the host machine, dnspython over UDP and TCP, the
faults it can play, records edited while the lab runs, and lookups from a node whose
link is down."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from lab.harness import Lab
from lab.services.resolver import DnsNotFound, DnsTemporaryError, MxHost, Resolver

WORLD = """
name: dnslab
networks:
  net: {subnet: 10.60.0.0/16}
  lan: {subnet: 192.168.60.0/24}
links:
  dialup: {node: hub, network: net, state: up}
dns:
  zones:
    freeuk.com:
      "@":
        MX: ["20 backup.freeuk.net", "10 scrabble.freeuk.net"]
        TXT: "v=spf1 ip4:10.60.1.25 -all"
        NS: ns.lab.test
      www: {CNAME: scrabble.freeuk.net}
      broken: {fault: servfail}
      silent: {fault: timeout}
    freeuk.net:
      scrabble: {A: 10.60.1.25}
      backup: {A: 10.60.1.26}
  ptr: auto
nodes:
  dns: {role: dns, hostname: ns.lab.test, networks: {net: 10.60.0.53}}
  hub: {role: mta, hostname: hub.home.test, networks: {lan: 192.168.60.1, net: 10.60.9.1},
        local_domains: [home.test], users: [eddy]}
  freeuk: {role: mta, hostname: scrabble.freeuk.net, networks: {net: 10.60.1.25},
           local_domains: [freeuk.com], users: [paul]}
  pc: {role: client, hostname: pc.home.test, networks: {lan: 192.168.60.11}, submit_to: hub}
"""


# In process: they ask the lab DNS from here (no route to it on Docker) or use the vnet.
pytestmark = pytest.mark.lab_backend("inprocess")


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(WORLD)


def endpoint(lab: Lab) -> tuple[str, int]:
    host, _, port = lab.status()["nodes"]["dns"]["endpoints"]["dns"].rpartition(":")
    return host, int(port)


def ask(
    lab: Lab, name: str, rtype: str, transport: str = "udp", timeout: float = 2.0
) -> dns.message.Message:
    host, port = endpoint(lab)
    query = dns.message.make_query(name, rtype)
    send = dns.query.udp if transport == "udp" else dns.query.tcp
    return send(query, host, port=port, timeout=timeout)


def texts(response: dns.message.Message, rtype: str) -> list[str]:
    want = dns.rdatatype.from_text(rtype)
    return sorted(rd.to_text() for rrset in response.answer if rrset.rdtype == want for rd in rrset)


def require_dig() -> str:
    path = shutil.which("dig") or ("/usr/bin/dig" if os.path.exists("/usr/bin/dig") else None)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(
            "dig is not installed, and CI=true: the CI machine must have it"
            " (Debian package bind9-dnsutils)"
        )
    pytest.skip("dig is not installed (Debian package bind9-dnsutils)")


def dig(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = endpoint(lab)
    return subprocess.run(
        [require_dig(), f"@{host}", "-p", str(port), *args, "+tries=1", "+time=2"],
        capture_output=True,
        text=True,
        timeout=20,
    )


# --- dig from the host machine --------------------------------------------------------------


def test_dig_mx_short(lab: Lab) -> None:
    done = dig(lab, "MX", "freeuk.com", "+short")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()) == ["10 scrabble.freeuk.net.", "20 backup.freeuk.net."]


def test_dig_over_tcp_and_the_status_line(lab: Lab) -> None:
    done = dig(lab, "A", "www.freeuk.com", "+tcp")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: NOERROR" in done.stdout
    assert "flags: qr aa" in done.stdout
    answer = [
        line.split() for line in done.stdout.splitlines() if line and not line.startswith(";")
    ]
    # NAME TTL CLASS TYPE DATA
    assert [(a[0], a[3], a[4]) for a in answer] == [
        ("www.freeuk.com.", "CNAME", "scrabble.freeuk.net."),
        ("scrabble.freeuk.net.", "A", "10.60.1.25"),
    ]
    missing = dig(lab, "A", "nosuch.freeuk.com")
    assert "status: NXDOMAIN" in missing.stdout


# --- dnspython, over UDP and over TCP -------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_record_types(lab: Lab, transport: str) -> None:
    a = ask(lab, "scrabble.freeuk.net", "A", transport)
    assert a.rcode() == dns.rcode.NOERROR
    assert a.flags & dns.flags.AA
    assert texts(a, "A") == ["10.60.1.25"]

    assert texts(ask(lab, "freeuk.com", "MX", transport), "MX") == [
        "10 scrabble.freeuk.net.",
        "20 backup.freeuk.net.",
    ]

    cname = ask(lab, "www.freeuk.com", "A", transport)
    assert texts(cname, "CNAME") == ["scrabble.freeuk.net."]
    assert texts(cname, "A") == ["10.60.1.25"]
    assert texts(ask(lab, "www.freeuk.com", "CNAME", transport), "CNAME") == [
        "scrabble.freeuk.net."
    ]

    txt = ask(lab, "freeuk.com", "TXT", transport)
    assert [b"".join(rd.strings) for rrset in txt.answer for rd in rrset] == [
        b"v=spf1 ip4:10.60.1.25 -all"
    ]

    assert texts(ask(lab, "freeuk.com", "NS", transport), "NS") == ["ns.lab.test."]

    # hosts: auto gives every node's hostname its addresses; ptr: auto the way back
    assert texts(ask(lab, "hub.home.test", "A", transport), "A") == ["10.60.9.1", "192.168.60.1"]
    assert texts(ask(lab, "1.9.60.10.in-addr.arpa", "PTR", transport), "PTR") == ["hub.home.test."]
    assert texts(ask(lab, "25.1.60.10.in-addr.arpa", "PTR", transport), "PTR") == [
        "scrabble.freeuk.net."
    ]
    assert texts(ask(lab, "11.60.168.192.in-addr.arpa", "PTR", transport), "PTR") == [
        "pc.home.test."
    ]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_nxdomain_and_no_data(lab: Lab, transport: str) -> None:
    missing = ask(lab, "nosuch.freeuk.com", "A", transport)
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.answer == []
    outside = ask(lab, "example.invalid", "MX", transport)
    assert outside.rcode() == dns.rcode.NXDOMAIN  # the lab is the whole world
    nodata = ask(lab, "scrabble.freeuk.net", "MX", transport)
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_servfail_fault(lab: Lab, transport: str) -> None:
    response = ask(lab, "broken.freeuk.com", "A", transport)
    assert response.rcode() == dns.rcode.SERVFAIL
    assert response.answer == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_timeout_fault_gets_no_answer(lab: Lab, transport: str) -> None:
    with pytest.raises(dns.exception.Timeout):
        ask(lab, "silent.freeuk.com", "A", transport, timeout=0.5)
    # the server is still there for other names
    assert ask(lab, "freeuk.com", "MX", transport).rcode() == dns.rcode.NOERROR
    silent = [
        e for e in lab.events if e.kind == "dns.answer" and e.get("name") == "silent.freeuk.com"
    ]
    assert silent and {e.get("rcode") for e in silent} == {"TIMEOUT"}


def test_queries_and_answers_are_events(lab: Lab) -> None:
    since = lab.events[-1].seq
    ask(lab, "freeuk.com", "MX")
    query = lab.wait_for("dns.query", node="dns", since=since, name="freeuk.com")
    assert query.get("type") == "MX" and query.get("transport") == "udp"
    assert query.get("peer") == "192.168.60.11"  # the host machine is seen as the operator
    answer = lab.wait_for("dns.answer", node="dns", since=since, name="freeuk.com")
    assert answer.get("rcode") == "NOERROR"
    assert sorted(answer.get("answers")) == ["MX 10 scrabble.freeuk.net", "MX 20 backup.freeuk.net"]


def test_garbage_gets_no_answer_and_the_server_lives_on(lab: Lab) -> None:
    """Too short for a header: no reply (test_dns_hostile.py has the rest of the rules)."""
    import socket

    host, port = endpoint(lab)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(b"\x00\x01not dns", (host, port))
        with pytest.raises(TimeoutError):
            sock.recv(512)
    assert ask(lab, "freeuk.com", "MX").rcode() == dns.rcode.NOERROR


# --- editing while the lab runs -------------------------------------------------------------


def test_set_dns_and_faults_change_answers_at_once(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(WORLD) as lab:
        assert texts(ask(lab, "freeuk.com", "MX"), "MX") == [
            "10 scrabble.freeuk.net.",
            "20 backup.freeuk.net.",
        ]
        lab.set_dns("freeuk.com", "MX", [(5, "relay.freeuk.net")])
        assert texts(ask(lab, "freeuk.com", "MX"), "MX") == ["5 relay.freeuk.net."]
        assert texts(ask(lab, "freeuk.com", "MX", "tcp"), "MX") == ["5 relay.freeuk.net."]

        assert ask(lab, "relay.freeuk.net", "A").rcode() == dns.rcode.NXDOMAIN
        lab.set_dns("relay.freeuk.net", "A", ["10.60.1.99"])
        assert texts(ask(lab, "relay.freeuk.net", "A"), "A") == ["10.60.1.99"]

        lab.set_dns("freeuk.com", "TXT", ["v=spf1 -all"])
        txt = ask(lab, "freeuk.com", "TXT")
        assert [b"".join(rd.strings) for rrset in txt.answer for rd in rrset] == [b"v=spf1 -all"]

        lab.set_dns_fault("scrabble.freeuk.net", "servfail")
        assert ask(lab, "scrabble.freeuk.net", "A").rcode() == dns.rcode.SERVFAIL
        lab.set_dns_fault("scrabble.freeuk.net", "nxdomain")
        assert ask(lab, "scrabble.freeuk.net", "A").rcode() == dns.rcode.NXDOMAIN
        lab.set_dns_fault("scrabble.freeuk.net", "refused")
        assert ask(lab, "scrabble.freeuk.net", "A").rcode() == dns.rcode.REFUSED
        lab.set_dns_fault("scrabble.freeuk.net", None)
        assert texts(ask(lab, "scrabble.freeuk.net", "A"), "A") == ["10.60.1.25"]

        changes = [e for e in lab.events if e.kind in ("dns.changed", "dns.fault")]
        assert [e.kind for e in changes] == ["dns.changed"] * 3 + ["dns.fault"] * 4


# --- lookups from a node ----------------------------------------------------------------------


def test_lookups_from_a_node_go_over_its_link(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(WORLD) as lab:
        resolver = Resolver(lab.backend.hosts["hub"].net, timeout=1.0)

        async def lookups() -> tuple[list[MxHost], list[str], list[str], list[str]]:
            return (
                await resolver.mx("freeuk.com"),
                await resolver.addresses("www.freeuk.com"),
                await resolver.txt("freeuk.com"),
                await resolver.ptr("10.60.1.25"),
            )

        mx, addresses, txt, ptr = lab.run(lookups())
        assert mx == [MxHost(10, "scrabble.freeuk.net"), MxHost(20, "backup.freeuk.net")]
        assert addresses == ["10.60.1.25"]
        assert txt == ["v=spf1 ip4:10.60.1.25 -all"]
        assert ptr == ["scrabble.freeuk.net"]
        query = lab.wait_for("dns.query", node="dns", name="freeuk.com", type="MX")
        assert query.get("peer") == "10.60.9.1"  # the hub's address on that network

        with pytest.raises(DnsNotFound):
            lab.run(resolver.mx("nosuch.freeuk.com"))
        with pytest.raises(DnsTemporaryError, match="SERVFAIL"):
            lab.run(resolver.addresses("broken.freeuk.com"))
        with pytest.raises(DnsTemporaryError, match="timeout"):
            lab.run(resolver.addresses("silent.freeuk.com"))
        assert lab.run(resolver.domain_exists("freeuk.com")) is True
        assert lab.run(resolver.domain_exists("home")) is False

        lab.link("dialup").down()
        since = lab.events[-1].seq
        with pytest.raises(DnsTemporaryError, match="link to net is down"):
            lab.run(resolver.mx("freeuk.com"))
        assert not lab.backend.events.find(kind="dns.query", since=since)

        lab.link("dialup").up()
        assert lab.run(resolver.mx("freeuk.com"))[0] == MxHost(10, "scrabble.freeuk.net")


def test_udp_and_tcp_share_the_printed_port(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(WORLD) as lab:
        vnet = lab.backend.vnet
        udp = vnet.endpoint("10.60.0.53", 53, "udp")
        tcp = vnet.endpoint("10.60.0.53", 53, "tcp")
        assert udp is not None and tcp is not None
        assert (udp.real_host, udp.real_port) == (tcp.real_host, tcp.real_port)
        assert (
            lab.status()["nodes"]["dns"]["endpoints"]["dns"] == f"{tcp.real_host}:{tcp.real_port}"
        )
