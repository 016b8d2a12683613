"""The core of timed faults (lab.services.faultgate): a lab-time window, a rate limit per
client counted in lab time, and a chance drawn from a generator seeded by (seed, node,
index), so that the same seed draws the same way whatever else happens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lab.services.faultgate import Gates, RateCounter, fault_rng, in_window
from lab.topology.model import DnsFaultRule, Fault, RateLimit

EPOCH = 1_800_000_000.0


def fault(**fields: object) -> Fault:
    return Fault.model_validate({"on": "mail", "reply": "451 4.3.0 later", **fields})


def test_the_window_counts_from_lab_start_and_ends_before_until() -> None:
    spec = fault(**{"from": "10m", "until": "1h"})
    assert not in_window(spec, EPOCH + 599.9, EPOCH)
    assert in_window(spec, EPOCH + 600, EPOCH)
    assert in_window(spec, EPOCH + 3599.9, EPOCH)
    assert not in_window(spec, EPOCH + 3600, EPOCH)


def test_an_absolute_window_ignores_lab_start() -> None:
    start = datetime(2027, 1, 15, 3, 0, tzinfo=UTC)
    spec = fault(**{"from": "2027-01-15T03:00:00Z", "until": "2027-01-15T04:00"})
    assert not in_window(spec, start.timestamp() - 1, EPOCH)
    assert in_window(spec, start.timestamp(), EPOCH)
    assert not in_window(spec, start.timestamp() + 3600, 0.0)


def test_an_open_window_is_always() -> None:
    assert in_window(fault(), 0.0, EPOCH)
    assert in_window(fault(until="1h"), EPOCH - 10, EPOCH)


def test_a_rate_limit_counts_per_client_in_a_sliding_period() -> None:
    counter = RateCounter(RateLimit(messages=2, per=60.0))
    t = EPOCH
    assert [counter.over("10.0.0.1", t + i) for i in range(4)] == [False, False, True, True]
    assert counter.over("10.0.0.2", t + 3) is False  # another client has its own count
    assert counter.over("10.0.0.1", t + 59.9) is True
    assert counter.over("10.0.0.1", t + 60.0) is False  # the first one has aged out
    assert counter.over("10.0.0.1", t + 61.0) is False
    assert counter.over("10.0.0.1", t + 61.5) is True


def test_the_same_seed_node_and_index_draw_the_same_numbers() -> None:
    a = [fault_rng(7, "isp", 0).random() for _ in range(3)]
    assert a == [fault_rng(7, "isp", 0).random() for _ in range(3)]
    assert fault_rng(7, "isp", 0).random() != fault_rng(8, "isp", 0).random()
    assert fault_rng(7, "isp", 0).random() != fault_rng(7, "hub", 0).random()
    assert fault_rng(7, "isp", 0).random() != fault_rng(7, "isp", 1).random()


def strikes(gates: Gates, index: int, spec: Fault, n: int) -> list[bool]:
    gate = gates.gate(index, spec, spec.rate)
    return [gate.strikes(EPOCH + i, EPOCH, "c", spec.times)[0] for i in range(n)]


def test_a_chance_strikes_about_that_often_and_replays_with_the_seed() -> None:
    spec = fault(chance=0.3)
    first = strikes(Gates(42, "isp"), 0, spec, 1000)
    assert 250 <= sum(first) <= 350
    assert strikes(Gates(42, "isp"), 0, spec, 1000) == first
    assert strikes(Gates(43, "isp"), 0, spec, 1000) != first


def test_draws_of_one_fault_do_not_depend_on_another_being_asked() -> None:
    spec, other = fault(chance=0.5), fault(chance=0.5, on="rcpt")
    alone = strikes(Gates(1, "isp"), 0, spec, 50)
    gates = Gates(1, "isp")
    gate, noise = gates.gate(0, spec), gates.gate(1, other)
    mixed = []
    for i in range(50):
        noise.strikes(EPOCH + i, EPOCH)  # the other fault is asked in between
        mixed.append(gate.strikes(EPOCH + i, EPOCH)[0])
    assert mixed == alone


def test_times_window_rate_and_chance_combine() -> None:
    spec = fault(times=2, **{"from": "5s"})
    assert strikes(Gates(0, "n"), 0, spec, 10) == [False] * 5 + [True, True] + [False] * 3
    limited = fault(rate={"messages": 3, "per": "1m"})
    assert strikes(Gates(0, "n"), 0, limited, 5) == [False, False, False, True, True]
    gate = Gates(0, "n").gate(0, limited, limited.rate)
    assert gate.strikes(EPOCH, EPOCH, "c")[1] == "under the rate limit"
    assert limited.answer() == "451 4.3.0 later"  # the fault's own reply
    bare = Fault.model_validate({"on": "mail", "rate": {"messages": 1, "per": "1m"}})
    assert bare.answer() == "421 4.7.0 too many messages, slow down"
    assert fault(rate={"messages": 1, "per": 1, "reply": "450 4.7.1 slow"}).answer() == (
        "450 4.7.1 slow"
    )


def test_a_gate_is_made_afresh_for_a_new_spec_at_the_same_index() -> None:
    gates = Gates(0, "n")
    once = fault(times=1)
    assert strikes(gates, 0, once, 2) == [True, False]
    assert strikes(gates, 0, fault(times=1), 2) == [True, False]  # another fault now
    gates.forget_from(0)
    assert gates.hits(0) == 0


def test_dns_rules_share_the_gate() -> None:
    rule = DnsFaultRule.model_validate(
        {"name": "*.ISP.test.", "fault": "servfail", "until": "1m", "chance": 1.0}
    )
    assert rule.name == "*.isp.test"
    gate = Gates(0, "dns").gate(0, rule)
    assert gate.strikes(EPOCH + 1, EPOCH)[0] is True
    assert gate.strikes(EPOCH + 61, EPOCH) == (False, "outside its window")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chance": 1.5}, "less than or equal to 1"),
        ({"from": "1h", "until": "10m"}, "must end ('until') after it begins"),
        ({"from": "yesterday"}, "expected a lab time"),
        ({"rate": {"messages": 0, "per": "1m"}}, "greater than or equal to 1"),
        ({"rate": {"messages": 1, "per": 0}}, "period must be longer than zero"),
        ({"rate": {"messages": 1, "per": "1m", "reply": "busy"}}, "expected an SMTP reply"),
    ],
)
def test_bad_knobs_are_refused_clearly(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fault(**fields)
