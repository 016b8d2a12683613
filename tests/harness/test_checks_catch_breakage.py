"""The scenario checks can fail: break the setting a scenario is about, and the check that
guards it fails with a message that says what was expected and what happened instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.harness.checks import run_check
from lab.topology import load
from lab.topology.model import Topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def topology(name: str) -> Topology:
    return load(TOPOLOGIES / f"{name}.yaml").model


def test_the_unbroken_scenarios_pass() -> None:
    for file, check in [
        ("lg45-envelope-fixed", "envelope-rewritten-delivered"),
        ("open-relay", "foreign-client-foreign-rcpt-refused"),
        ("home-dialup", "multidrop-nelug-is-eddy"),
    ]:
        result = run_check(topology(file), check)
        assert result.ok, result.report()


def test_envelope_masquerading_turned_off_is_caught() -> None:
    broken = topology("lg45-envelope-fixed")
    masquerade = broken.nodes["heaven"].masquerade
    assert masquerade is not None
    masquerade.envelope = False
    result = run_check(broken, "envelope-rewritten-delivered")
    assert not result.ok
    failed = result.failed_step
    assert failed is not None and failed.index == 2
    report = result.report()
    assert "expected" in report and "friend@picky.org" in report
    # what happened instead: picky refused the unrewritten envelope sender
    assert "5.1.8" in report and "joe@home" in report


def test_an_opened_relay_is_caught() -> None:
    broken = topology("open-relay")
    broken.nodes["christian"].relay_from = ["internet"]
    result = run_check(broken, "foreign-client-foreign-rcpt-refused")
    assert not result.ok
    failed = result.failed_step
    assert failed is not None and failed.index == 2
    report = result.report()
    assert "expected a rejection with 550 at rcpt" in report
    assert "accepted" in report


@pytest.mark.parametrize("mapping", ["nelug"])
def test_a_dropped_multidrop_mapping_is_caught(mapping: str) -> None:
    broken = topology("home-dialup")
    job = next(j for j in broken.nodes["hub"].fetch if j.multidrop is not None)
    assert job.multidrop is not None
    del job.multidrop[mapping]
    result = run_check(broken, "multidrop-nelug-is-eddy")
    assert not result.ok
    failed = result.failed_step
    assert failed is not None
    report = result.report()
    # nelug@ now falls through to the postmaster: the delivery to eddy is missing,
    # or the postmaster got it
    assert "eddy" in report or "postmaster" in report
