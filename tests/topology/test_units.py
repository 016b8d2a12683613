"""Units (durations, sizes), address allocation and the lab DNS table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import RecordTable, Topology, assign_addresses, hostname_of, load, load_text
from lab.topology.addressing import AddressPoolExhausted, network_of
from lab.topology.loader import parse_yaml
from lab.topology.records import Rcode, qualify, reverse_name
from lab.topology.units import format_duration, parse_duration, parse_size

HOME_DIALUP = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"
IP = ipaddress.IPv4Address

# ---------------------------------------------------------------------------------------
# durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("1w", 604800.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5h", 5400.0),
        ("4H", 14400.0),
        (" 1h 30m ", 5400.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected a duration such as 90s, 30m, 4h, 5d or 1h30m (units ms s m h d w), got ''"),
        ("4x", "got '4x'"),
        ("1hour", "got '1hour'"),
        ("h", "got 'h'"),
        ("-5m", "got '-5m'"),
        (-1, "expected a duration of zero or more, got -1"),
        (True, "expected a duration such as 90s, 30m, 4h, 5d or 1h30m, got true"),
        (None, "got None"),
        ([1], "got [1]"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (1800, "30m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (14400, "4h"),
        (86400, "1d"),
        (432000, "5d"),
        (93784, "1d2h3m4s"),
        (0.5, "500ms"),
        (1.25, "1s250ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 0.5, 1, 61, 1800, 5400, 86399, 432000, 1209600])
def test_format_then_parse_is_identity(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# ---------------------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("100b", 100),
        ("512k", 512_000),
        ("512KB", 512_000),
        ("10MB", 10_000_000),
        ("10 MB", 10_000_000),
        ("10mb", 10_000_000),
        ("1KiB", 1024),
        ("1MiB", 1_048_576),
        ("2GiB", 2 * 1024**3),
        ("1G", 1_000_000_000),
        ("1.5KB", 1500),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10 megs", "expected a size in bytes or such as 512KB, 10MB, 1MiB, got '10 megs'"),
        ("MB", "got 'MB'"),
        ("", "got ''"),
        ("1TB", "got '1TB'"),
        (-1, "expected a size of zero or more, got -1"),
        (True, "expected a size in bytes or such as 512KB, 10MB, 1MiB, got true"),
        (1.5, "got 1.5"),
        (None, "got None"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert message in str(info.value)


def test_durations_and_sizes_in_a_topology_are_numbers() -> None:
    topology = load(HOME_DIALUP).model
    retry = topology.nodes["hub"].retry
    assert retry.intervals == [1800.0]
    assert retry.warn_after == 14400.0
    assert retry.give_up_after == 432000.0
    assert topology.nodes["hub"].policy.max_size == 10_000_000
    dumped = topology.nodes["hub"].retry.model_dump(mode="json")
    assert dumped == {"intervals": ["30m"], "warn_after": "4h", "give_up_after": "5d"}


# ---------------------------------------------------------------------------------------
# addresses


def topology(nodes: dict[str, object], subnet: str = "10.0.0.0/29") -> Topology:
    return Topology.model_validate(
        {"name": "alloc", "networks": {"net": {"subnet": subnet}}, "nodes": nodes}
    )


def test_auto_addresses_in_file_order() -> None:
    t = topology(
        {
            "a": {"role": "mta", "networks": ["net"]},
            "b": {"role": "mta", "networks": {"net": "auto"}},
            "c": {"role": "mta", "networks": {"net": None}},
        }
    )
    assert assign_addresses(t) == {
        "a": {"net": IP("10.0.0.1")},
        "b": {"net": IP("10.0.0.2")},
        "c": {"net": IP("10.0.0.3")},
    }


def test_explicit_addresses_are_reserved_first() -> None:
    """c's explicit .1 is taken before a and b are allocated, though c comes last."""
    t = topology(
        {
            "a": {"role": "mta", "networks": ["net"]},
            "b": {"role": "mta", "networks": ["net"]},
            "c": {"role": "mta", "networks": {"net": "10.0.0.1"}},
            "d": {"role": "mta", "networks": {"net": "10.0.0.3"}},
        }
    )
    assert assign_addresses(t) == {
        "a": {"net": IP("10.0.0.2")},
        "b": {"net": IP("10.0.0.4")},
        "c": {"net": IP("10.0.0.1")},
        "d": {"net": IP("10.0.0.3")},
    }


def test_allocation_is_deterministic() -> None:
    nodes = {f"n{i}": {"role": "mta", "networks": ["net"]} for i in range(5)}
    nodes["x"] = {"role": "mta", "networks": {"net": "10.0.0.2"}}
    first = assign_addresses(topology(nodes))
    for _ in range(3):
        assert assign_addresses(topology(nodes)) == first
    assert [first[f"n{i}"]["net"] for i in range(5)] == [
        IP("10.0.0.1"),
        IP("10.0.0.3"),
        IP("10.0.0.4"),
        IP("10.0.0.5"),
        IP("10.0.0.6"),
    ]


def test_exhausted_subnet() -> None:
    """A /30 has two host addresses; the third node finds none."""
    t = topology(
        {name: {"role": "mta", "networks": ["net"]} for name in ("a", "b", "c")},
        subnet="10.0.0.0/30",
    )
    with pytest.raises(AddressPoolExhausted) as info:
        assign_addresses(t)
    assert str(info.value) == "no free address left in 10.0.0.0/30 for node 'c'"
    assert (info.value.node, info.value.network) == ("c", "net")


def test_exhausted_subnet_is_a_validation_problem() -> None:
    text = """\
name: tiny
networks:
  net: {subnet: 10.0.0.0/30}
nodes:
  a: {role: mta, networks: [net]}
  b: {role: mta, networks: {net: 10.0.0.1}}
  c: {role: mta, networks: [net]}
"""
    with pytest.raises(TopologyError) as info:
        load_text(text, "tiny.yaml")
    assert str(info.value) == (
        "tiny.yaml:7:28: nodes.c.networks.net: no free address left in 10.0.0.0/30 for node 'c'"
    )


def test_home_dialup_addresses() -> None:
    t = load(HOME_DIALUP).model
    addresses = assign_addresses(t)
    assert addresses["hub"] == {"lan": IP("192.168.10.1"), "internet": IP("10.20.9.201")}
    assert addresses["pc1"] == {"lan": IP("192.168.10.11")}
    assert network_of(t, IP("192.168.10.77")) == "lan"
    assert network_of(t, IP("10.20.200.1")) == "internet"
    assert network_of(t, IP("172.16.0.1")) is None


def test_hostname_of() -> None:
    t = topology({"Relay": {"role": "mta", "networks": ["net"]}})
    assert hostname_of(t, "Relay") == "relay.alloc.test"
    home = load(HOME_DIALUP).model
    assert hostname_of(home, "hub") == "moriah.shofar.org.uk"


# ---------------------------------------------------------------------------------------
# the lab DNS table


@pytest.fixture(scope="module")
def table() -> RecordTable:
    t = load(HOME_DIALUP).model
    return RecordTable.from_topology(t, assign_addresses(t))


def test_mx_lookup(table: RecordTable) -> None:
    answer = table.lookup("freeuk.com", "MX")
    assert answer.rcode is Rcode.noerror
    assert answer.ok
    assert answer.values("MX") == [(10, "scrabble.freeuk.net")]
    assert table.lookup("FreeUK.com.", "MX").values("MX") == [(10, "scrabble.freeuk.net")]


def test_mx_exchange_resolves(table: RecordTable) -> None:
    assert table.lookup("scrabble.freeuk.net", "A").values("A") == [IP("10.20.1.25")]


def test_cname_chain(table: RecordTable) -> None:
    answer = table.lookup("pop.uklinux.net", "A")
    assert answer.rcode is Rcode.noerror
    assert answer.records == [
        ("pop.uklinux.net", "CNAME", "mail.uklinux.net"),
        ("mail.uklinux.net", "A", IP("10.20.0.25")),
    ]
    assert table.resolves("pop.uklinux.net")


def test_cname_query_is_not_followed(table: RecordTable) -> None:
    answer = table.lookup("pop.uklinux.net", "CNAME")
    assert answer.records == [("pop.uklinux.net", "CNAME", "mail.uklinux.net")]


def test_ptr_auto(table: RecordTable) -> None:
    assert reverse_name(IP("10.20.0.25")) == "25.0.20.10.in-addr.arpa"
    answer = table.lookup("25.0.20.10.in-addr.arpa", "PTR")
    assert answer.rcode is Rcode.noerror
    assert answer.values("PTR") == ["mail.uklinux.net"]
    # a host on two networks has a PTR on both
    assert table.lookup("1.10.168.192.in-addr.arpa", "PTR").values("PTR") == [
        "moriah.shofar.org.uk"
    ]
    assert table.lookup("201.9.20.10.in-addr.arpa", "PTR").values("PTR") == ["moriah.shofar.org.uk"]


def test_hosts_auto(table: RecordTable) -> None:
    assert table.lookup("moriah.shofar.org.uk", "A").values("A") == [
        IP("192.168.10.1"),
        IP("10.20.9.201"),
    ]
    assert table.lookup("pc1.shofar.org.uk", "A").values("A") == [IP("192.168.10.11")]


def test_hosts_auto_beside_an_mx_at_the_same_name(table: RecordTable) -> None:
    """lug.org.uk is both a zone apex with an MX and the hostname of node lug: it keeps
    the MX and still gets the node's address."""
    assert table.lookup("lug.org.uk", "MX").values("MX") == [(10, "lug.org.uk")]
    assert table.lookup("lug.org.uk", "A").values("A") == [IP("10.20.3.25")]
    assert table.lookup("25.3.20.10.in-addr.arpa", "PTR").values("PTR") == ["lug.org.uk"]


def test_nxdomain_for_a_bare_name(table: RecordTable) -> None:
    answer = table.lookup("home", "A")
    assert answer.rcode is Rcode.nxdomain
    assert answer.records == []
    assert not answer.ok
    assert not table.resolves("home")


@pytest.mark.parametrize(
    ("name", "rtype", "rcode"),
    [
        ("freeuk.com", "A", Rcode.noerror),  # exists (MX), no A: NODATA
        ("freeuk.net", "MX", Rcode.noerror),  # an empty zone's apex exists
        ("uklinux.net", "TXT", Rcode.noerror),
        ("mail.uklinux.net", "MX", Rcode.noerror),
        ("shofar.org.uk", "A", Rcode.noerror),  # no records, but names below it
        ("nosuch.freeuk.com", "A", Rcode.nxdomain),
        ("nosuch.freeuk.com", "MX", Rcode.nxdomain),
        ("example.org", "MX", Rcode.nxdomain),  # outside every lab zone
        ("shofar.org.uk.invalid", "A", Rcode.nxdomain),
    ],
)
def test_nodata_versus_nxdomain(table: RecordTable, name: str, rtype: str, rcode: Rcode) -> None:
    answer = table.lookup(name, rtype)
    assert answer.rcode is rcode
    assert answer.records == []
    assert not answer.ok


def with_zone_text(extra: str) -> RecordTable:
    """home-dialup with extra record lines in the freeuk.com zone."""
    text = HOME_DIALUP.read_text(encoding="utf-8")
    anchor = '      "@": {MX: "10 scrabble.freeuk.net"}\n'
    assert text.count(anchor) == 1
    t = load_text(text.replace(anchor, anchor + extra), "home-dialup.yaml").model
    return RecordTable.from_topology(t, assign_addresses(t))


@pytest.mark.parametrize(
    ("fault", "rcode"),
    [
        ("servfail", Rcode.servfail),
        ("timeout", Rcode.timeout),
        ("nxdomain", Rcode.nxdomain),
        ("refused", Rcode.refused),
    ],
)
def test_fault_entries_in_the_topology(fault: str, rcode: Rcode) -> None:
    table = with_zone_text(f"      broken: {{fault: {fault}}}\n")
    for rtype in ("A", "MX", "TXT"):
        answer = table.lookup("broken.freeuk.com", rtype)
        assert answer.rcode is rcode
        assert not answer.ok
    assert table.lookup("freeuk.com", "MX").ok


def test_fault_beside_records_wins() -> None:
    table = with_zone_text("      www: {A: 10.20.1.80, fault: servfail}\n")
    assert table.lookup("www.freeuk.com", "A").rcode is Rcode.servfail


def test_cname_to_a_faulty_name() -> None:
    table = with_zone_text(
        "      broken: {fault: servfail}\n      alias: {CNAME: broken.freeuk.com}\n"
    )
    answer = table.lookup("alias.freeuk.com", "A")
    assert answer.rcode is Rcode.servfail
    assert answer.records == [("alias.freeuk.com", "CNAME", "broken.freeuk.com")]


def test_set_fault_while_running() -> None:
    t = load(HOME_DIALUP).model
    table = RecordTable.from_topology(t, assign_addresses(t))
    table.set_fault("freeuk.com", "servfail")
    assert table.lookup("freeuk.com", "MX").rcode is Rcode.servfail
    table.set_fault("freeuk.com", None)
    assert table.lookup("freeuk.com", "MX").values("MX") == [(10, "scrabble.freeuk.net")]


def test_editing_the_table() -> None:
    t = load(HOME_DIALUP).model
    table = RecordTable.from_topology(t, assign_addresses(t))
    table.set("freeuk.com", "MX", [(20, "backup.freeuk.net."), (5, "scrabble.freeuk.net")])
    assert table.lookup("freeuk.com", "MX").values("MX") == [
        (20, "backup.freeuk.net"),
        (5, "scrabble.freeuk.net"),
    ]
    table.set("new.freeuk.com", "A", ["10.20.1.99"])
    assert table.lookup("new.freeuk.com", "A").values("A") == [IP("10.20.1.99")]
    table.set("new.freeuk.com", "TXT", ["v=spf1 -all"])
    assert table.lookup("new.freeuk.com", "TXT").values("TXT") == ["v=spf1 -all"]
    table.remove("new.freeuk.com")
    assert table.lookup("new.freeuk.com", "A").rcode is Rcode.nxdomain


def test_cname_loop_is_servfail() -> None:
    table = RecordTable()
    table.zones.add("loop.test")
    table.set("a.loop.test", "CNAME", ["b.loop.test"])
    table.set("b.loop.test", "CNAME", ["a.loop.test"])
    answer = table.lookup("a.loop.test", "A")
    assert answer.rcode is Rcode.servfail


def test_ptr_none_and_hosts_none() -> None:
    text = HOME_DIALUP.read_text(encoding="utf-8")
    assert text.count("  ptr: auto\n") == 1
    text = text.replace("  ptr: auto\n", "  ptr: none\n  hosts: none\n")
    # Validation would (rightly) refuse this file: pop.freeserve.net no longer resolves.
    t = Topology.model_validate(parse_yaml(text, "home-dialup.yaml")[0])
    table = RecordTable.from_topology(t, assign_addresses(t))
    assert table.lookup("25.0.20.10.in-addr.arpa", "PTR").rcode is Rcode.nxdomain
    # hosts: none -- moriah.shofar.org.uk is in no zone and gets no A
    assert table.lookup("moriah.shofar.org.uk", "A").rcode is Rcode.nxdomain
    # a CNAME to a name with no address now leads nowhere
    assert not table.resolves("pop.uklinux.net")


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("@", "freeuk.com"),
        ("mx", "mx.freeuk.com"),
        ("MX", "mx.freeuk.com"),
        ("mail.freeuk.com.", "mail.freeuk.com"),
    ],
)
def test_qualify(label: str, name: str) -> None:
    assert qualify(label, "freeuk.com") == name
