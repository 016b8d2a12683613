"""Impairments as data: rates and percentages, the model's errors at FILE:LINE:COL, how
impairments combine, the pacing arithmetic, and the tc commands for Docker's segments."""

from __future__ import annotations

import random

import pytest

from lab.backends.docker.shaping import agent_table, qdisc, script
from lab.errors import TopologyError
from lab.services.pacing import OVERHEAD, RTO_MIN, SEGMENT, Pacer, wire_bytes
from lab.topology import load_text
from lab.topology.impair import Impairment, LinkImpairment, combine
from lab.topology.units import format_percent, format_rate, parse_percent, parse_rate

BASE = """\
name: mini
networks:
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: a, network: internet, IMPAIR}
nodes:
  a: {role: mta, networks: {internet: 10.20.0.1}}
  b: {role: mta, networks: {internet: 10.20.0.2}}
"""


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("33.6kbit", 33_600),
        ("56kbps", 56_000),
        ("2mbit", 2_000_000),
        ("1Gbit", 1e9),
        ("9600bit", 9600),
        (" 33.6 kbit ", 33_600),
    ],
)
def test_rates(text: str, bits: float) -> None:
    assert parse_rate(text) == pytest.approx(bits)


@pytest.mark.parametrize("text", ["33.6kbyte", "fast", "0kbit", "33600", 33600, "-1kbit", ""])
def test_bad_rates(text: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_rates_and_percentages_print_as_written() -> None:
    assert format_rate(33_600) == "33.6kbit"
    assert format_rate(2_000_000) == "2mbit"
    assert format_rate(300) == "300bit"
    assert parse_percent("1%") == pytest.approx(0.01)
    assert parse_percent("0.5 %") == pytest.approx(0.005)
    assert parse_percent(0.25) == 0.25
    assert format_percent(0.01) == "1%"
    for bad in ("150%", "-1%", 2, "one", True):
        with pytest.raises(ValueError, match="percentage"):
            parse_percent(bad)


def test_an_impairment_in_a_topology() -> None:
    loaded = load_text(
        BASE.replace("IMPAIR", "impair: {rate: 33.6kbit, delay: 150ms, jitter: 20ms,"
                     " loss: 1%, drop_after: 50KB, drop_at: 90s}"),
        "t.yaml",
    )  # fmt: skip
    impair = loaded.model.links["dialup"].impair
    assert impair is not None
    assert (impair.rate, impair.delay, impair.jitter) == (33_600, 0.15, 0.02)
    assert (impair.loss, impair.drop_after, impair.drop_at) == (0.01, 50_000, 90)
    dumped = impair.model_dump(mode="json", exclude_defaults=True)
    assert dumped == {
        "rate": "33.6kbit",
        "delay": "150ms",
        "jitter": "20ms",
        "loss": "1%",
        "drop_after": 50000,
        "drop_at": "1m30s",
    }
    assert LinkImpairment.model_validate(dumped) == impair


@pytest.mark.parametrize(
    ("impair", "expected"),
    [
        (
            "impair: {rate: 33.6kbyte}",
            "t.yaml:5:55: links.dialup.impair.rate: expected a rate such as 33.6kbit, 56kbps or"
            " 2mbit (units bit kbit mbit gbit), got '33.6kbyte'",
        ),
        (
            "impair: {loss: 150%}",
            "t.yaml:5:55: links.dialup.impair.loss: expected a percentage such as 1% or 0.5%"
            " (or a fraction from 0 to 1), got '150%'",
        ),
        (
            "impair: {jitter: 20ms}",
            "t.yaml:5:48: links.dialup.impair: jitter varies the delay: give a delay too"
            " (e.g. delay: 150ms)",
        ),
        (
            "impair: {drop_after: lots}",
            "t.yaml:5:61: links.dialup.impair.drop_after: expected a size in bytes or such as"
            " 512KB, 10MB, 1MiB, got 'lots'",
        ),
        (
            "impair: {rate: 1mbit, latency: 5ms}",
            "t.yaml:5:62: links.dialup.impair.latency: unknown field 'latency' (expected one of:"
            " rate, delay, jitter, loss, drop_after, drop_at)",
        ),
    ],
)
def test_errors_point_at_the_knob(impair: str, expected: str) -> None:
    with pytest.raises(TopologyError) as info:
        load_text(BASE.replace("IMPAIR", impair), "t.yaml")
    assert str(info.value).splitlines()[0] == expected


def test_a_network_cannot_hang_up() -> None:
    text = BASE.replace(", IMPAIR", "").replace(
        "internet: {subnet: 10.20.0.0/16}",
        "internet: {subnet: 10.20.0.0/16, impair: {drop_after: 5KB}}",
    )
    with pytest.raises(TopologyError) as info:
        load_text(text, "t.yaml")
    assert str(info.value).splitlines()[0] == (
        "t.yaml:3:45: networks.internet.impair.drop_after: unknown field 'drop_after'"
        " (expected one of: rate, delay, jitter, loss)"
    )


def test_impairments_combine_along_a_path() -> None:
    link = Impairment(rate="33.6kbit", delay="100ms", loss="1%")
    net = Impairment(rate="2mbit", delay="20ms", jitter="5ms", loss="2%")
    shape = combine([link, net])
    assert shape["rate"] == 33_600  # the slowest line
    assert shape["delay"] == pytest.approx(0.12)
    assert shape["jitter"] == pytest.approx(0.005)
    assert shape["loss"] == pytest.approx(1 - 0.99 * 0.98)
    assert combine([]) == {"rate": 0.0, "delay": 0.0, "jitter": 0.0, "loss": 0.0}


# pacing ------------------------------------------------------------------------------


def test_wire_bytes_add_the_headers_of_each_segment() -> None:
    assert wire_bytes(0) == 0
    assert wire_bytes(1) == 1 + OVERHEAD
    assert wire_bytes(SEGMENT) == SEGMENT + OVERHEAD
    assert wire_bytes(SEGMENT + 1) == SEGMENT + 1 + 2 * OVERHEAD


def test_100_kb_at_33_6_kbit_takes_about_25_seconds() -> None:
    pacer = Pacer(rate=33_600)
    due = 0.0
    for _ in range(25):  # as a relay gives it: 4 KB pieces, all at once
        due = pacer.due(0.0, 4000)
    assert due == pytest.approx(25 * wire_bytes(4000) * 8 / 33_600)
    assert 24 <= due <= 27


def test_the_line_is_shared_and_idle_time_is_not_saved_up() -> None:
    pacer = Pacer(rate=8000)  # 1000 bytes a second
    first = pacer.due(10.0, 1000 - OVERHEAD)
    assert first == pytest.approx(11.0)
    assert pacer.due(10.5, 1000 - OVERHEAD) == pytest.approx(12.0)  # waits for the first
    assert pacer.due(100.0, 1000 - OVERHEAD) == pytest.approx(101.0)  # idle line: at once


def test_delay_and_jitter_keep_the_bytes_in_order() -> None:
    pacer = Pacer(delay=0.15, jitter=0.1, rng=random.Random(7))
    dues = [pacer.due(i * 0.001, 100) for i in range(200)]
    assert dues == sorted(dues)
    assert all(d - i * 0.001 >= 0.05 - 1e-9 for i, d in enumerate(dues))
    assert max(d - i * 0.001 for i, d in enumerate(dues)) <= 0.25 + 1e-9
    assert Pacer(delay=0.15).due(1.0, 100) == pytest.approx(1.15)


def test_each_lost_segment_waits_for_its_retransmission() -> None:
    lossless = Pacer(rate=33_600).due(0.0, 100_000)
    lossy = Pacer(rate=33_600, loss=0.1, delay=0.05, rng=random.Random(1))
    due = lossy.due(0.0, 100_000)
    extra = due - lossless - 0.05
    rto = RTO_MIN + 2 * 0.05
    lost = round(extra / rto)
    assert extra == pytest.approx(lost * rto)
    assert 2 <= lost <= 20  # about 10% of 70 segments
    again = Pacer(rate=33_600, loss=0.1, delay=0.05, rng=random.Random(1)).due(0.0, 100_000)
    assert again == due  # the same seed, the same losses


# Docker's qdiscs -----------------------------------------------------------------------------


def test_qdiscs_with_and_without_netem() -> None:
    modem = Impairment(rate="33.6kbit", delay="150ms", jitter="20ms", loss="1%")
    assert qdisc([modem], netem=True) == "netem delay 150ms 20ms loss 1% rate 33600bit"
    # without netem the kernel shapes the rate; delay, jitter and loss are the agents'
    assert qdisc([modem], netem=False) == "tbf rate 33600bit burst 2000 limit 262144"
    assert qdisc([Impairment(delay="150ms")], netem=False) is None
    assert qdisc([], netem=False) is None
    networks, links = agent_table(
        {"internet": Impairment(delay="20ms")}, {("hub", "internet"): modem}
    )
    assert networks == {"internet": {"delay": "20ms"}}
    # the rate too: an agent paces it on the networks it paces on the lab clock
    assert links == [
        ["hub", "internet", {"rate": "33.6kbit", "delay": "150ms", "jitter": "20ms", "loss": "1%"}]
    ]


def test_the_script_touches_only_the_lab_segments() -> None:
    ports = {
        ("hub", "internet"): ("v3", "n1", "internet"),
        ("isp", "internet"): ("v4", "n2", "internet"),
        ("hub", "lan"): ("v2", "n1", "lan"),
    }
    link = Impairment(rate="33.6kbit")
    net = Impairment(rate="2mbit")
    text = script(ports, {"internet": net}, {("hub", "internet"): link}, netem=False)
    lines = text.splitlines()
    assert lines[0] == "set -e"
    assert "tc -n n1 qdisc replace dev internet root tbf rate 33600bit" in text
    assert "tc qdisc replace dev v3 root tbf rate 33600bit" in text  # the slower of the two
    assert "tc qdisc replace dev v4 root tbf rate 2000000bit" in text
    assert "tc -n n2 qdisc del dev internet root 2>/dev/null || true" in text
    assert "tc qdisc del dev v2 root 2>/dev/null || true" in text
    assert all(" dev eth" not in line and " dev docker" not in line for line in lines)
    flushed = script(ports, {}, {("hub", "internet"): link}, netem=False, only=("hub", "internet"))
    assert flushed.splitlines()[1:] == [
        "tc -n n1 qdisc del dev internet root 2>/dev/null || true",
        "tc -n n1 qdisc add dev internet root tbf rate 33600bit burst 2000 limit 262144",
        "tc qdisc del dev v3 root 2>/dev/null || true",
        "tc qdisc add dev v3 root tbf rate 33600bit burst 2000 limit 262144",
    ]
