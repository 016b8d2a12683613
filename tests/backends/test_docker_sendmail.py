"""A real sendmail as the hub of home-dialup, on the Docker backend: home-dialup-
postfix.yaml with the hub's software changed to sendmail, sendmail.mc rendered from the
same fields (and home-dialup-sendmail.yaml: the article's own .mc). pc1 sends while the
modem is down, the message waits in sendmail's queue (its qf file, listed in the built-in
MTA's shape), `link dialup up` flushes it (`sendmail -q`) to the ISP; local delivery goes
through the aliases into the users' mboxes (mail.local); lab time drives the queue runs,
sendmail's delay warning and its return; a killed sendmail is restarted.

These need a Docker engine (skipped without one, failing under CI=true); the first run
builds the maillab-sendmail image (a few minutes: sendmail's postinst is slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load
from lab.topology.model import Retry, Topology
from lab.topology.software import ServiceSoftware, Software

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP_POSTFIX = ROOT / "topologies" / "home-dialup-postfix.yaml"

pytestmark = pytest.mark.docker


def sendmail_hub(retry: Retry | None = None) -> Topology:
    topology = load(HOME_DIALUP_POSTFIX).model
    hub = topology.nodes["hub"]
    hub.software = ServiceSoftware(smtp=Software.sendmail)
    if retry is not None:
        hub.retry = retry
    return topology


def test_sendmail_hub_queues_while_down_and_delivers_on_link_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(sendmail_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        image = hub.image.tags[0] if hub.image.tags else ""
        assert image.startswith("maillab-sendmail:"), image

        sent = lab.send(
            "pc1",
            mail_from="eddy@shofar.org.uk",
            to=["paulmidgley@freeuk.com"],
            subject="via sendmail",
        )
        assert sent.accepted, sent.to_json()
        assert sent.queue_id and len(sent.queue_id) == 14, sent.to_json()  # sendmail's id

        # the modem is down: sendmail defers it, and the queue lists it as the built-in does
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        assert entry["id"] == sent.queue_id
        assert entry["envelope_from"] == "eddy@shofar.org.uk"
        assert entry["recipients"] == ["paulmidgley@freeuk.com"]
        assert entry["attempts"] >= 1
        assert entry["received"] > 0 and entry["next_attempt"] > entry["received"]
        assert entry["last_reply"]
        assert b"Subject: via sendmail" in lab.run(lab.backend.queue_content("hub", sent.queue_id))

        # link up: the on_up flush hook runs `sendmail -q`; the ISP relays it to freeuk
        lab.link("dialup").up()
        message = lab.assert_delivered(
            "paulmidgley@freeuk.com",
            node="freeuk",
            mailbox="paulmidgley",
            envelope_from="eddy@shofar.uklinux.net",  # FEATURE(masquerade_envelope)
            timeout=30,
        )
        assert message["From"] is not None and "eddy@shofar.uklinux.net" in message["From"]
        assert "(8.17" in message.raw and f"id {sent.queue_id}" in message.raw
        assert lab.queue("hub") == []

        kinds = [(e.node, e.kind) for e in lab.trace(sent)]
        assert ("hub", "queue.queued") in kinds
        assert ("hub", "queue.deferred") in kinds, lab.backend.logs("hub")[-3000:]
        assert ("hub", "queue.removed") in kinds
        delivered = [
            e
            for e in lab.trace(sent)
            if e.node == "hub" and e.kind == "delivery.result" and e.get("result") == "delivered"
        ]
        assert delivered and delivered[0].get("server") == "mail.uklinux.net"
        assert delivered[0].get("remote_id"), delivered[0]
        assert any(e.node == "isp" for e in lab.trace(sent))

        # `maillab logs hub` shows sendmail's own syslog lines
        assert f"{sent.queue_id}: from=<eddy@shofar.org.uk>" in lab.backend.logs("hub")


def test_sendmail_hub_delivers_locally_through_its_aliases(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(sendmail_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["NELUG-announce@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        for user in ("eddy", "keith"):
            message = lab.assert_delivered(
                "NELUG-announce@shofar.org.uk", node="hub", mailbox=user, timeout=20
            )
            # the local mailer masquerades too (sendmail's own behaviour)
            assert message.envelope_from == "eddy@shofar.uklinux.net"
            assert message.id == sent.queue_id
        assert len(lab.mailbox("hub", "eddy")) == 1
        refused = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["nosuchuser@shofar.org.uk"])
        assert refused.rejected is not None and refused.rejected.code == 550, refused.to_json()
        # sendmail's log line reaches the agent through syslog just after the reply
        reject = lab.wait_for("policy.reject", node="hub", timeout=10)
        assert reject.get("stage") == "rcpt"


def test_lab_time_drives_sendmail_retries_delay_warning_and_return(
    docker_client: Any, tmp_path: Path
) -> None:
    """The hub's retry schedule becomes Timeout.queuewarn and Timeout.queuereturn; `clock
    advance` steps sendmail's libfaketime offset to each message's next try (from its qf
    file) and runs the queue there, so the warning and the return come in lab time."""
    retry = Retry(intervals=[600.0], warn_after=1800.0, give_up_after=3600.0)
    with Lab.up(sendmail_hub(retry), backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        assert 590 <= entry["next_attempt"] - entry["received"] <= 610, entry
        lab.clock.advance("35m")
        assert lab.queue("hub")[0]["attempts"] >= 3
        warning = [e for e in lab.trace(sent) if e.kind == "dsn.sent"]
        assert [e.get("action") for e in warning] == ["delayed"], lab.format_trace(sent)
        lab.clock.advance("40m")
        bounce = lab.assert_bounced(recipient="paulmidgley@freeuk.com", by="hub", timeout=10)
        assert bounce.get("to") == "eddy@shofar.org.uk"
        assert lab.queue("hub") == []
        lab.settle()
        subjects = [str(m["Subject"]) for m in lab.mailbox("hub", "eddy")]
        assert len(subjects) == 2, subjects  # the delay warning, then the return
        assert "warning" in subjects[0].lower(), subjects


def test_a_crashed_sendmail_is_restarted_with_an_event(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(sendmail_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        killed = hub.exec_run(["sh", "-c", "kill -9 $(pgrep -o -f 'sendmail')"])
        assert killed.exit_code == 0, killed.output
        exited = lab.wait_for("daemon.exited", node="hub", timeout=10)
        assert exited.get("software") == "sendmail"
        lab.wait_for("daemon.restarted", node="hub", timeout=30)
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["keith@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        lab.assert_delivered("keith@shofar.org.uk", node="hub", mailbox="keith", timeout=20)
