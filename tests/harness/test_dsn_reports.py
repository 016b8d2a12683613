"""A check's `dsn:` expectation reads the DSN as it landed (its message/delivery-status
part), and fails when the action, recipient or status differ, or when the message is
no DSN at all; and the queue-lifecycle checks built on it fail when the hub does not
warn or does not give up."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from lab.harness.checks import run_check
from lab.harness.reports import dsn_mismatch, recipient_blocks
from lab.services.mta.dsn import build_dsn
from lab.services.mta.queue import QueuedMessage, Recipient
from lab.topology import load
from lab.topology.checks import DsnExpect

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def _dsn(action: str, status: str) -> email.message.Message:
    rcpt = Recipient(address="paulmidgley@freeuk.com", original="paulmidgley@freeuk.com")
    rcpt.status = status
    message = QueuedMessage(
        id="Q1", envelope_from="eddy@shofar.org.uk", recipients=[rcpt], received=0.0
    )
    raw = build_dsn(
        hostname="moriah.shofar.org.uk",
        message=message,
        content=b"Subject: hi\r\n\r\nbody\r\n",
        recipients=[rcpt],
        action=action,
        now=3600.0,
        to="eddy@shofar.org.uk",
    )
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_the_blocks_of_a_dsn_are_read() -> None:
    blocks = recipient_blocks(_dsn("delayed", "4.4.1"))
    assert [(b["action"], b["status"]) for b in blocks] == [("delayed", "4.4.1")]
    assert blocks[0]["final-recipient"] == "rfc822; paulmidgley@freeuk.com"


def test_a_dsn_as_expected_matches() -> None:
    want = DsnExpect(action="delayed", recipient="paulmidgley@freeuk.com", status="4.")
    assert dsn_mismatch(_dsn("delayed", "4.4.1"), want) is None


def test_another_action_recipient_or_status_is_a_mismatch() -> None:
    warning = _dsn("delayed", "4.4.1")
    wrong = dsn_mismatch(warning, DsnExpect(action="failed"))
    assert wrong is not None and "Action: delayed, Status: 4.4.1" in wrong
    assert dsn_mismatch(warning, DsnExpect(action="delayed", recipient="x@freeuk.com"))
    assert dsn_mismatch(warning, DsnExpect(action="delayed", status="5."))


def test_a_message_that_is_no_dsn_is_a_mismatch() -> None:
    plain = email.message_from_string("Subject: Delayed Mail\n\nnot a report\n")
    wrong = dsn_mismatch(plain, DsnExpect(action="delayed"))
    assert wrong is not None and "not a DSN" in wrong


def test_no_warning_and_no_give_up_are_caught() -> None:
    topology = load(TOPOLOGIES / "queue-lifecycle.yaml").model
    retry = topology.nodes["hub"].retry
    for check in ("delay-warning-after-4h", "returned-after-5-days"):
        expect = topology.checks[check][5].expect
        assert expect is not None
        expect.within = 0.5  # in process the DSN is there at once, or never
    retry.warn_after = None
    result = run_check(topology, "delay-warning-after-4h")
    assert not result.ok and result.failed_step is not None
    assert result.failed_step.index == 6, result.report()
    retry.give_up_after = 30 * 86400.0
    result = run_check(topology, "returned-after-5-days")
    assert not result.ok and result.failed_step is not None
    assert result.failed_step.index == 6, result.report()


def test_a_fetch_hook_needs_fetch_jobs_or_a_fetchmailrc() -> None:
    """nelug-sendmail's hub fetches with the article's own .fetchmailrc (config: fetch),
    no fetch jobs: its link's fetch hook is valid; without either it is refused."""
    import pytest

    from lab.errors import TopologyError
    from lab.topology import load_text

    file = str(TOPOLOGIES / "nelug-sendmail.yaml")
    text = Path(file).read_text()
    assert load_text(text, file).model.nodes["hub"].fetch == []
    bare = text.replace(", fetch: nelug-sendmail/fetchmailrc", "")
    assert bare != text
    with pytest.raises(TopologyError, match="the fetch hook needs fetch jobs"):
        load_text(bare, file)
