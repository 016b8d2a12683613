"""A Docker host's own lines (lab.backends.docker.net.RealNet): on a network of built-in
hosts the agent paces its connections whole on its lab clock, drop_after counted
exactly; elsewhere only delay, jitter and loss, in real time (the rate is tbf's)."""

from __future__ import annotations

from lab.backends.docker.net import RealNet
from lab.runtime.clock import LabClock

MODEM = {"rate": "33.6kbit", "delay": "150ms"}


def hub_net() -> RealNet:
    return RealNet(
        {"internet": "10.20.9.201", "lan": "192.168.10.1"},
        None,
        interfaces={"internet": "internet", "lan": "lan"},
        peers={"10.20.0.25": ("isp", "internet"), "192.168.10.11": ("pc1", "lan")},
        node="hub",
        clock=LabClock(),
    )


def test_on_the_lab_clock_the_rate_too_and_one_line_per_peer() -> None:
    net = hub_net()
    net.pace({}, [["hub", "internet", MODEM]], ["internet"])
    found = net._pacers("10.20.0.25")
    assert found is not None
    (there, _back), lab = found
    assert lab and there.rate == 33_600 and there.delay == 0.15
    again = net._pacers("10.20.0.25")
    assert again is not None and again[0][0] is there  # a second connection shares the line
    assert net._pacers("192.168.10.11") is None  # the LAN is not impaired


def test_elsewhere_the_rate_is_the_kernels() -> None:
    net = hub_net()
    net.pace({}, [["hub", "internet", MODEM]], [])  # a real daemon on the network
    found = net._pacers("10.20.0.25")
    assert found is not None
    (there, _), lab = found
    assert not lab and there.rate == 0.0 and there.delay == 0.15
    assert net._pacers("10.20.0.25")[0][0] is not there  # type: ignore[index]


def test_drop_after_on_the_lab_clock_counts_the_bytes_exactly() -> None:
    net = hub_net()
    net.pace({}, [["hub", "internet", MODEM]], ["internet"])
    hung: list[str] = []
    net.watch_bytes("internet", 6000, lambda: hung.append("hung up"))
    assert "internet" not in net.watchers  # no byte counters: the relays count
    assert net.crossed("internet", 4096) == 4096 and not hung
    assert net.crossed("internet", 4096) == 1904 and hung == ["hung up"]
    assert net.crossed("internet", 4096) == 4096  # once


def test_bytes_waiting_for_the_clock_count_as_settled() -> None:
    net = hub_net()
    assert not net.paced()
    net.pace({}, [["hub", "internet", MODEM]], ["internet"])
    assert net.paced()
    mark = net.mark()
    assert not net.idle_on_clock(mark)  # nothing waits
    net.moved(1)  # a piece is held for its due time
    assert not net.idle_on_clock(mark)  # it moved since the mark
    assert net.idle_on_clock(net.mark())
    net.moved(-1)
    assert not net.idle_on_clock(net.mark())
