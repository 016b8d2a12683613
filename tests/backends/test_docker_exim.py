"""A real Exim as the hub of home-dialup, on the Docker backend: home-dialup-postfix.yaml
with the hub's software changed to exim, exim4.conf rendered from the same fields. pc1
sends while the modem is down, the message waits in Exim's queue (listed in the built-in
MTA's shape), `link dialup up` flushes it (`exim4 -qff`) to the ISP; local delivery goes
through the aliases; lab time drives Exim's retries, its delay warning and its bounce;
a killed Exim is restarted.

These need a Docker engine (skipped without one, failing under CI=true); the first run
builds the maillab-exim image (about half a minute).
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


def exim_hub(retry: Retry | None = None) -> Topology:
    topology = load(HOME_DIALUP_POSTFIX).model
    hub = topology.nodes["hub"]
    hub.software = ServiceSoftware(smtp=Software.exim)
    if retry is not None:
        hub.retry = retry
    return topology


def test_exim_hub_queues_while_down_and_delivers_on_link_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(exim_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        image = hub.image.tags[0] if hub.image.tags else ""
        assert image.startswith("maillab-exim:"), image

        sent = lab.send(
            "pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"], subject="via Exim"
        )
        assert sent.accepted, sent.to_json()
        assert sent.queue_id and "-" in sent.queue_id, sent.to_json()  # Exim's id

        # the modem is down: Exim defers it, and the queue lists it as the built-in does
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        assert entry["id"] == sent.queue_id
        assert entry["envelope_from"] == "eddy@shofar.org.uk"
        assert entry["recipients"] == ["paulmidgley@freeuk.com"]
        assert entry["attempts"] >= 1
        assert entry["received"] > 0 and entry["next_attempt"] > entry["received"]
        assert entry["last_reply"]
        assert b"Subject: via Exim" in lab.run(lab.backend.queue_content("hub", sent.queue_id))

        # link up: the on_up flush hook runs `exim4 -qff`; the ISP relays it to freeuk
        lab.link("dialup").up()
        message = lab.assert_delivered(
            "paulmidgley@freeuk.com",
            node="freeuk",
            mailbox="paulmidgley",
            envelope_from="eddy@shofar.uklinux.net",  # return_path on remote_smtp
            timeout=30,
        )
        assert message["From"] is not None and "eddy@shofar.uklinux.net" in message["From"]
        assert "(Exim 4." in message.raw and f"id {sent.queue_id}" in message.raw
        assert lab.queue("hub") == []

        kinds = [(e.node, e.kind) for e in lab.trace(sent)]
        assert ("hub", "queue.queued") in kinds
        assert ("hub", "queue.deferred") in kinds
        assert ("hub", "queue.removed") in kinds
        delivered = [
            e
            for e in lab.trace(sent)
            if e.node == "hub" and e.kind == "delivery.result" and e.get("result") == "delivered"
        ]
        assert delivered and delivered[0].get("server") == "mail.uklinux.net"
        assert str(delivered[0].get("reply")).startswith("250")
        assert delivered[0].get("tls") is True  # STARTTLS to the ISP
        assert any(e.node == "isp" for e in lab.trace(sent))

        # `maillab logs hub` shows Exim's own main log
        assert f"{sent.queue_id} <= eddy@shofar.org.uk" in lab.backend.logs("hub")


def test_exim_hub_delivers_locally_through_its_aliases(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(exim_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["NELUG-announce@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        for user in ("eddy", "keith"):
            message = lab.assert_delivered(
                "NELUG-announce@shofar.org.uk", node="hub", mailbox=user, timeout=20
            )
            assert message.envelope_from == "eddy@shofar.org.uk"
        assert [m.envelope_from for m in lab.mailbox("hub", "eddy")] == ["eddy@shofar.org.uk"]
        refused = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["nobody@shofar.org.uk"])
        assert refused.rejected is not None and refused.rejected.code == 550, refused.to_json()
        # Exim's log line reaches the agent through its FIFO just after the reply
        reject = lab.wait_for("policy.reject", node="hub", timeout=10)
        assert reject.get("stage") == "rcpt"


def test_lab_time_drives_exim_retries_delay_warning_and_bounce(
    docker_client: Any, tmp_path: Path
) -> None:
    """The hub's retry schedule becomes Exim's retry rule and delay_warning; `clock
    advance` steps Exim's libfaketime offset from one next try in its retry hints to the
    next and runs the queue there, so the warning and the bounce come in lab time."""
    retry = Retry(intervals=[600.0], warn_after=1800.0, give_up_after=3600.0)
    with Lab.up(exim_hub(retry), backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        # Exim's next try is 10 minutes on, in lab time
        assert 590 <= entry["next_attempt"] - entry["received"] <= 610, entry
        lab.clock.advance("35m")
        assert lab.queue("hub")[0]["attempts"] >= 3
        warning = [e for e in lab.trace(sent) if e.kind == "dsn.sent"]
        assert [e.get("action") for e in warning] == ["delayed"], lab.format_trace(sent)
        assert warning[0].get("recipients") == ["paulmidgley@freeuk.com"]
        lab.clock.advance("40m")
        bounce = lab.assert_bounced(recipient="paulmidgley@freeuk.com", by="hub", timeout=5)
        assert bounce.get("to") == "eddy@shofar.org.uk"
        assert lab.queue("hub") == []
        lab.settle()
        subjects = [str(m["Subject"]) for m in lab.mailbox("hub", "eddy")]
        assert len(subjects) == 2, subjects  # the delay warning, then the bounce
        assert "delayed" in subjects[0].lower() or "warning" in subjects[0].lower(), subjects


def test_a_crashed_exim_is_restarted_with_an_event(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(exim_hub(), backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        killed = hub.exec_run(["sh", "-c", "kill -9 $(pgrep -o -f 'exim4 -bdf')"])
        assert killed.exit_code == 0, killed.output
        exited = lab.wait_for("daemon.exited", node="hub", timeout=10)
        assert exited.get("software") == "exim"
        lab.wait_for("daemon.restarted", node="hub", timeout=30)
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["keith@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        lab.assert_delivered("keith@shofar.org.uk", node="hub", mailbox="keith", timeout=20)
