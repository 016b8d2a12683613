"""A link's dial schedule expanded into dial windows on the lab clock
(lab.topology.schedule), and its mistakes reported at FILE:LINE:COL."""

from __future__ import annotations

import itertools
import textwrap

import pytest

from lab.errors import TopologyError
from lab.topology import load_text
from lab.topology.schedule import Schedule, dials, next_dial

H = 3600.0


def schedule(**fields: object) -> Schedule:
    return Schedule.model_validate(fields)


def windows(s: Schedule, epoch: float = 0.0, after: float = 0.0, n: int = 4) -> list[tuple]:
    return list(itertools.islice(dials(s, epoch, after), n))


def test_every_hour_for_five_minutes_starts_one_period_in() -> None:
    s = schedule(every="1h", **{"for": "5m"})
    assert windows(s, epoch=1000.0) == [(1000 + k * H, 1000 + k * H + 300) for k in (1, 2, 3, 4)]


def test_first_moves_the_first_dial_and_after_skips_those_begun() -> None:
    s = schedule(every="1h", first="10m")
    assert windows(s, n=2) == [(600.0, 900.0), (4200.0, 4500.0)]
    assert next_dial(s, 0.0, 601.0) == (4200.0, 4500.0)
    assert next_dial(s, 0.0, 4200.0) == (4200.0, 4500.0)  # one starting now is next


def test_at_lists_lab_times_and_joins_the_period() -> None:
    s = schedule(every="2h", at=["30m", "2h", "2026-01-01T00:00:00Z"], **{"for": "10m"})
    epoch = 1_700_000_000.0
    got = windows(s, epoch=epoch, after=epoch, n=3)
    # 30m; 2h from `at` and from `every` are one dial; then 4h
    assert got == [
        (epoch + 1800, epoch + 2400),
        (epoch + 2 * H, epoch + 2 * H + 600),
        (epoch + 4 * H, epoch + 4 * H + 600),
    ]


def test_at_alone_ends() -> None:
    s = schedule(at=["1h", "10m"], **{"for": "1m"})
    assert windows(s, n=5) == [(600.0, 660.0), (3600.0, 3660.0)]
    assert next_dial(s, 0.0, 3601.0) is None


def test_overlapping_at_dials_are_one_window() -> None:
    s = schedule(at=["10m", "12m"], **{"for": "5m"})
    assert windows(s) == [(600.0, 1020.0)]


def test_a_day_of_hourly_dials_is_24() -> None:
    s = schedule(every="1h")
    assert len([w for w in windows(s, n=100) if w[0] <= 24 * H]) == 24


TOPOLOGY = """\
name: t
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup:
    node: hub
    network: internet
    schedule: SCHEDULE
nodes:
  hub: {role: mta, networks: {lan: 192.168.10.1, internet: 10.20.9.201}}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{every: 1h, for: 1h}", "9:15: links.dialup.schedule: a dial must hang up before"),
        ("{for: 5m}", "9:15: links.dialup.schedule: a schedule needs 'every'"),
        ("{at: [10m], first: 5m}", "9:15: links.dialup.schedule: 'first' is the first periodic"),
        ("{every: soon}", "9:23: links.dialup.schedule.every: expected a duration"),
        ("{at: [tomorrow]}", "9:21: links.dialup.schedule.at[0]: expected a lab time"),
        ("{every: 1h, fro: 5m}", "links.dialup.schedule.fro: unknown field 'fro'"),
    ],
)
def test_bad_schedules_are_errors_at_their_place(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as error:
        load_text(textwrap.dedent(TOPOLOGY).replace("SCHEDULE", text), "t.yaml")
    assert message in str(error.value), str(error.value)


def test_dns_faults_need_a_dns_node() -> None:
    text = textwrap.dedent(TOPOLOGY).replace("    schedule: SCHEDULE\n", "")
    text += "dns:\n  faults: [{name: '*', fault: servfail}]\n"
    with pytest.raises(TopologyError) as error:
        load_text(text, "t.yaml")
    assert "t.yaml:12:3: dns.faults: DNS faults are defined but no node runs the dns service" in (
        str(error.value)
    ), str(error.value)
