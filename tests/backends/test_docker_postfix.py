"""A real Postfix as the hub of home-dialup, on the Docker backend (the user story of the
first real MTA): pc1 sends through the hub while the modem is down, the message waits in
Postfix's queue (listed in the built-in MTA's shape), `link dialup up` flushes it
(`postqueue -f`) to the ISP, and the hub's hops are events read from Postfix's log.

These need a Docker engine (skipped without one, failing under CI=true); the first run
builds the maillab-postfix image (about half a minute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP_POSTFIX = ROOT / "topologies" / "home-dialup-postfix.yaml"

pytestmark = pytest.mark.docker


def test_postfix_hub_queues_while_down_and_delivers_on_link_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(HOME_DIALUP_POSTFIX, backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        image = hub.image.tags[0] if hub.image.tags else ""
        assert image.startswith("maillab-postfix:"), image

        captured = lab.capture_queued("hub")  # read from Postfix's queue file
        sent = lab.send(
            "pc1",
            mail_from="eddy@shofar.org.uk",
            to=["paulmidgley@freeuk.com"],
            subject="via Postfix",
        )
        assert sent.accepted, sent.to_json()
        assert sent.queue_id, sent.to_json()  # Postfix's "queued as ID"

        # the modem is down: Postfix defers it, and the queue lists it as the built-in does
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        assert entry["id"] == sent.queue_id
        assert entry["envelope_from"] == "eddy@shofar.org.uk"
        assert entry["recipients"] == ["paulmidgley@freeuk.com"]
        assert entry["attempts"] >= 1
        assert entry["received"] > 0 and entry["next_attempt"] > entry["received"]
        assert entry["last_reply"]
        assert b"Subject: via Postfix" in lab.run(lab.backend.queue_content("hub", sent.queue_id))
        content = captured[sent.queue_id]
        assert b"\r\nSubject: via Postfix\r\n" in content, content
        assert content.startswith(b"Received: from ") and f"id {sent.queue_id}".encode() in content

        # link up: the on_up flush hook runs `postqueue -f`; the ISP relays it to freeuk
        lab.link("dialup").up()
        message = lab.assert_delivered(
            "paulmidgley@freeuk.com",
            node="freeuk",
            mailbox="paulmidgley",
            envelope_from="eddy@shofar.uklinux.net",  # smtp_generic_maps
            timeout=30,
        )
        assert message["From"] is not None and "eddy@shofar.uklinux.net" in message["From"]
        assert "(Postfix)" in message.raw and f"id {sent.queue_id}" in message.raw
        assert lab.queue("hub") == []

        # the hub's hops, from Postfix's log: queued, deferred, delivered to the ISP, removed
        kinds = [(e.node, e.kind) for e in lab.trace(sent)]
        assert ("hub", "queue.queued") in kinds
        queued = next(e for e in lab.trace(sent) if e.node == "hub" and e.kind == "queue.queued")
        assert queued.get("recipients") == ["paulmidgley@freeuk.com"]  # from its queue file
        assert ("hub", "queue.deferred") in kinds
        assert ("hub", "queue.removed") in kinds
        delivered = [
            e
            for e in lab.trace(sent)
            if e.node == "hub" and e.kind == "delivery.result" and e.get("result") == "delivered"
        ]
        assert delivered and delivered[0].get("server") == "mail.uklinux.net"
        assert str(delivered[0].get("reply")).startswith("250")
        # the ISP's hop is in the same trace (followed by Message-ID)
        assert any(e.node == "isp" for e in lab.trace(sent))

        # `maillab logs hub` shows Postfix's own log
        assert "postfix/qmgr" in lab.backend.logs("hub")


def test_postfix_hub_delivers_locally_through_its_aliases(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(HOME_DIALUP_POSTFIX, backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["NELUG-announce@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        for user in ("eddy", "keith"):
            message = lab.assert_delivered(
                "NELUG-announce@shofar.org.uk", node="hub", mailbox=user, timeout=20
            )
            assert message.envelope_from == "eddy@shofar.org.uk"
        assert [m.envelope_from for m in lab.mailbox("hub", "eddy")] == ["eddy@shofar.org.uk"]


def test_lab_time_drives_postfix_retries_delay_warning_and_bounce(
    docker_client: Any, tmp_path: Path
) -> None:
    """The hub's retry schedule becomes Postfix's backoff, delay_warning_time and
    maximal_queue_lifetime; `clock advance` moves Postfix's libfaketime offset from one
    due time to the next and tries what fell due, so the warning and the bounce come in
    lab time."""
    from lab.topology.model import Retry

    topology = load(HOME_DIALUP_POSTFIX).model
    topology.nodes["hub"].retry = Retry(intervals=[600.0], warn_after=1800.0, give_up_after=3600.0)
    with Lab.up(topology, backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        entry = lab.assert_queued("hub", to="paulmidgley@freeuk.com")
        # Postfix's next try is 10 minutes on, in lab time
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
        subjects = [str(m["Subject"]) for m in lab.mailbox("hub", "eddy")]
        assert len(subjects) == 2, subjects  # the delay warning, then the bounce


def test_a_crashed_postfix_is_restarted_with_an_event(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(HOME_DIALUP_POSTFIX, backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]
        killed = hub.exec_run(["sh", "-c", "kill -9 $(cat /var/spool/postfix/pid/master.pid)"])
        assert killed.exit_code == 0, killed.output
        exited = lab.wait_for("daemon.exited", node="hub", timeout=10)
        assert exited.get("software") == "postfix"
        lab.wait_for("daemon.restarted", node="hub", timeout=30)
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["keith@shofar.org.uk"])
        assert sent.accepted, sent.to_json()
        lab.assert_delivered("keith@shofar.org.uk", node="hub", mailbox="keith", timeout=20)


def test_a_dropped_link_cuts_postfixs_sessions_across_it(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(HOME_DIALUP_POSTFIX, backend="docker", state_dir=tmp_path / "lab") as lab:
        lab.link("dialup").up()
        hold = lab.backend.containers["isp"].exec_run(
            [
                "python3",
                "-c",
                "import socket; s = socket.create_connection(('10.20.9.201', 25), timeout=20)\n"
                "print(s.recv(100)); print('open', flush=True)\n"
                "try:\n  d = s.recv(100); print('closed' if not d else d)\n"
                "except OSError as e: print('cut', e.errno)",
            ],
            stream=True,
        )
        first = b""
        for chunk in hold.output:
            first += chunk
            if b"open" in first:
                break
        assert b"220 moriah.shofar.org.uk ESMTP Postfix" in first, first
        lab.link("dialup").down()
        rest = b"".join(hold.output).decode()
        assert "cut 104" in rest or "closed" in rest, rest  # a reset, not a timeout
        down = [e for e in lab.events if e.kind == "link.down"]
        assert down and down[-1].get("cut") >= 1


def test_the_users_own_main_cf_runs_with_only_the_labs_part_set(
    docker_client: Any, tmp_path: Path
) -> None:
    """topologies/office-postfix/: the administrator's main.cf and maps go in as they
    are (postmap builds the maps); postconf sets only what the lab owns on top."""
    office = ROOT / "topologies" / "office-postfix.yaml"
    with Lab.up(office, backend="docker", state_dir=tmp_path / "lab") as lab:
        hub = lab.backend.containers["hub"]

        def postconf(*names: str) -> dict[str, str]:
            code, out = hub.exec_run(["postconf", *names])
            assert code == 0, out
            pairs = (line.partition(" =") for line in out.decode().splitlines())
            return {k: v.strip() for k, _, v in pairs}

        mine = postconf("smtpd_banner", "relayhost", "delay_warning_time", "sender_canonical_maps")
        assert mine == {
            "smtpd_banner": "$myhostname ESMTP office mail",
            "relayhost": "[smtp.isp.example]",
            "delay_warning_time": "2h",
            "sender_canonical_maps": "hash:/etc/postfix/sender_canonical",
        }
        owned = postconf("myhostname", "maillog_file", "mail_spool_directory", "home_mailbox")
        assert owned["myhostname"] == "hub.office.example"
        assert owned["maillog_file"] == "/dev/stdout"
        assert owned["mail_spool_directory"].endswith("/mail/")
        assert owned["home_mailbox"] == ""
        code, _ = hub.exec_run(["test", "-s", "/etc/postfix/access.db"])
        assert code == 0, "postmap built the access map"

        refused = lab.send("pc1", mail_from="sam@office.example", to=["jo@office.example"])
        assert refused.rejected is not None and refused.rejected.code == 550, refused.to_json()
        assert "Jo left the office" in refused.rejected.text
        sent = lab.send("pc1", mail_from="sam@office.example", to=["alex@partner.example"])
        got = lab.assert_delivered(to="alex@partner.example", node="partner", mailbox="alex")
        assert got.envelope_from == "sam.taylor@office.example"
        hops = [e.node for e in lab.trace(sent) if e.kind == "delivery.result"]
        assert hops[0] == "hub", lab.format_trace(sent)


def test_a_built_in_hosts_bounce_reaches_the_postfix_hubs_user(
    docker_client: Any, tmp_path: Path
) -> None:
    """The other way from Postfix's own DSNs: the ISP's built-in MTA accepts from the
    Postfix hub, the remote refuses the recipient, the ISP returns the message to the
    (masqueraded) sender, whose MX is the ISP's multidrop box; the hub fetches it and
    Postfix delivers it to eddy."""
    with Lab.up(HOME_DIALUP_POSTFIX, backend="docker", state_dir=tmp_path / "lab") as lab:
        lab.link("dialup").up()
        sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["nobody@freeuk.com"])
        assert sent.accepted, sent.to_json()
        bounce = lab.assert_bounced(recipient="nobody@freeuk.com", by="isp", timeout=10)
        assert bounce.get("to") == "eddy@shofar.uklinux.net", lab.format_trace(sent)
        # the DSN is in the ISP's multidrop box before the hub fetches it
        lab.assert_delivered(to="eddy@shofar.uklinux.net", node="isp", mailbox="shofar")
        lab.fetch("hub")
        lab.settle()
        got = [m for m in lab.mailbox("hub", "eddy") if "nobody@freeuk.com" in m.raw]
        assert len(got) == 1, lab.format_trace(sent)
        assert got[0].envelope_from == ""  # a DSN has the null sender
        delivered = [e for e in lab.events if e.kind == "mailbox.delivered" and e.node == "hub"]
        assert delivered and delivered[-1].get("user") == "eddy"
