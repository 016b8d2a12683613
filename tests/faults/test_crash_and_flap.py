"""Faults measured end to end on home-dialup (faultlab.py runs them; as a script it gives
the figures of docs/reliability.md): the process holding the lab killed with SIGKILL in
the middle of a flush and the lab started again over its state; the dial-up link
flapping under a flush. Nothing lost, nothing stuck; only the crash doubles what was
in flight."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultlab import crash, flap

pytestmark = pytest.mark.slow


def test_a_lab_killed_mid_flush_sends_again_only_what_was_in_flight(tmp_path: Path) -> None:
    outcome = crash(tmp_path / "lab", 1000, kill_at=1 / 3)
    assert outcome.killed_after >= 333  # it died in the middle of the flush
    assert outcome.lost == 0, outcome
    assert outcome.stuck == 0, outcome
    assert outcome.doubled <= 20, outcome  # at most 2%: what was in flight at the kill


def test_a_flapping_link_delivers_each_message_once(tmp_path: Path) -> None:
    outcome = flap(tmp_path / "lab", 1000, period=0.1, seconds=10.0)
    assert outcome.toggles >= 20, outcome
    assert (outcome.lost, outcome.stuck) == (0, 0), outcome
    # The ISP hands a message to delivery only once its 250 went out, and the drop cuts
    # the ISP's end first: a 250 written before is read by the hub, one after fails and
    # the ISP withdraws its copy (docs/reliability.md, flapping). Nothing is doubled.
    assert outcome.doubled == 0, outcome
