"""A real Dovecot as the ISPs' POP3 server of home-dialup, on the Docker backend: mail the
ISP's built-in MTA delivers into a mailbox is served by Dovecot over real POP3 (USER/PASS,
APOP, STLS verified against the lab CA), the hub's built-in fetch collects it from Dovecot
when the modem comes up, a wrong password gets -ERR, Dovecot's log is the container's log
and its login, delete and logout lines are the lab's pop3 events.

The POP3 clients run inside the lab (in freeuk's container, on the internet segment), with
Python's poplib. These need a Docker engine (skipped without one, failing under CI=true);
the first run builds the maillab-dovecot image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP_DOVECOT = ROOT / "topologies" / "home-dialup-dovecot.yaml"
ISP = "10.20.0.25"  # mail.uklinux.net

pytestmark = pytest.mark.docker

# A POP3 session in a container: the steps as JSON in argv[1], the results as JSON out.
CLIENT = r"""
import json, poplib, ssl, sys
steps = json.loads(sys.argv[1])
out = {}
try:
    p = poplib.POP3(steps["host"], 110, timeout=20)
    out["greeting"] = p.getwelcome().decode()
    if steps.get("stls"):
        ctx = ssl.create_default_context(cafile="/run/maillab/lab-ca.pem")
        p.stls(ctx)
        p.sock.getpeercert()
        out["tls"] = p.sock.version()
    if steps.get("apop"):
        out["login"] = p.apop(steps["user"], steps["password"]).decode()
    else:
        p.user(steps["user"])
        out["login"] = p.pass_(steps["password"]).decode()
    out["uidl"] = [line.decode() for line in p.uidl()[1]]
    out["messages"] = [b"\n".join(p.retr(i + 1)[1]).decode() for i in range(len(out["uidl"]))]
    for i in range(len(out["uidl"]) if steps.get("delete") else 0):
        p.dele(i + 1)
    out["quit"] = p.quit().decode()
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def pop3(lab: Lab, node: str = "freeuk", **steps: Any) -> dict[str, Any]:
    """A POP3 session from `node`'s container against the ISP (or steps['host'])."""
    steps.setdefault("host", ISP)
    result = lab.backend.containers[node].exec_run(["python3", "-c", CLIENT, json.dumps(steps)])
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output.decode().strip().splitlines()[-1])
    return found


def deliver_to_shofar(lab: Lab, subject: str) -> None:
    sent = lab.send(
        "freeuk",
        via="isp",
        mail_from="paulmidgley@freeuk.com",
        to=["eddy@shofar.uklinux.net"],
        subject=subject,
    )
    assert sent.accepted, sent.to_json()
    lab.assert_delivered("eddy@shofar.uklinux.net", node="isp", mailbox="shofar", timeout=20)


def test_dovecot_serves_the_isp_mailbox_over_real_pop3(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(HOME_DIALUP_DOVECOT, backend="docker", state_dir=tmp_path / "lab") as lab:
        isp = lab.backend.containers["isp"]
        image = isp.image.tags[0] if isp.image.tags else ""
        assert image.startswith("maillab-dovecot:"), image

        deliver_to_shofar(lab, "Internet access")
        keys = [m.id for m in lab.mailbox("isp", "shofar")]
        assert len(keys) == 1

        # a wrong password: -ERR, and a failed pop3.login
        bad = pop3(lab, user="shofar", password="wrong")
        assert "-ERR" in bad.get("error", ""), bad
        failed = lab.wait_for("pop3.login", node="isp", ok=False, timeout=10)
        assert failed.get("user") == "shofar"

        # APOP: the greeting carries the timestamp; the message is there, kept
        apop = pop3(lab, user="shofar", password="s3cret", apop=True)
        assert "error" not in apop, apop
        assert "<" in apop["greeting"] and "@" in apop["greeting"], apop
        assert "Subject: Internet access" in apop["messages"][0]
        lab.wait_for("pop3.login", node="isp", ok=True, mechanism="APOP", timeout=10)

        # USER/PASS over STLS, verified against the lab CA; the UIDL is the Maildir key,
        # as the built-in server's; the message is deleted at QUIT
        tls = pop3(lab, user="Shofar", password="s3cret", stls=True, delete=True)
        assert "error" not in tls, tls
        assert tls["tls"].startswith("TLS"), tls
        assert tls["uidl"] == [f"1 {keys[0]}"], (tls, keys)
        assert "Subject: Internet access" in tls["messages"][0]
        login = lab.wait_for("pop3.login", node="isp", ok=True, mechanism="USER", timeout=10)
        assert login.get("user") == "shofar" and login.get("tls") is True
        dele = lab.wait_for("pop3.dele", node="isp", timeout=10)
        assert dele.get("user") == "shofar" and dele.get("message_id")
        quit_ = lab.wait_for("pop3.quit", node="isp", deleted=1, timeout=10)
        assert quit_.get("retrieved") == 1
        lab.settle()
        assert lab.mailbox("isp", "shofar") == []

        # `maillab logs isp` shows Dovecot's own log
        logs = lab.backend.logs("isp")
        assert "pop3-login: Info: Login: user=<shofar>, method=APOP" in logs
        assert "Disconnected: Logged out" in logs


def test_the_hub_fetches_from_dovecot_when_the_link_comes_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(HOME_DIALUP_DOVECOT, backend="docker", state_dir=tmp_path / "lab") as lab:
        deliver_to_shofar(lab, "Internet access")
        sent = lab.send(
            "freeuk",
            via="freeserve",
            mail_from="paulmidgley@freeuk.com",
            to=["anyone@shofar.freeserve.co.uk"],
            subject="single drop",
        )
        assert sent.accepted, sent.to_json()
        lab.assert_delivered(
            "anyone@shofar.freeserve.co.uk",
            node="freeserve",
            mailbox="shofar.freeserve.co.uk",
            timeout=20,
        )
        lab.link("dialup").up()
        lab.assert_delivered("eddy@shofar.org.uk", node="hub", mailbox="eddy", timeout=30)
        deadline = time.monotonic() + 30
        while len(lab.mailbox("hub", "eddy")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        subjects = sorted(str(m["Subject"]) for m in lab.mailbox("hub", "eddy"))
        assert subjects == ["Internet access", "single drop"], subjects
        # the boxes were emptied by the fetch: Dovecot removed what it handed over
        lab.settle()
        assert lab.mailbox("isp", "shofar") == []
        assert lab.mailbox("freeserve", "shofar.freeserve.co.uk") == []
        for node in ("isp", "freeserve"):
            login = lab.wait_for("pop3.login", node=node, ok=True, timeout=10)
            assert login.get("peer") == "10.20.9.201"  # the hub
            lab.wait_for("pop3.quit", node=node, deleted=1, timeout=10)


def test_a_crashed_dovecot_is_restarted_with_an_event(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(HOME_DIALUP_DOVECOT, backend="docker", state_dir=tmp_path / "lab") as lab:
        isp = lab.backend.containers["isp"]
        killed = isp.exec_run(["sh", "-c", "kill -9 $(cat /run/dovecot/master.pid)"])
        assert killed.exit_code == 0, killed.output
        exited = lab.wait_for("daemon.exited", node="isp", timeout=10)
        assert exited.get("software") == "dovecot"
        lab.wait_for("daemon.restarted", node="isp", software="dovecot", timeout=30)
        deliver_to_shofar(lab, "after the crash")
        again = pop3(lab, user="shofar", password="s3cret")
        assert "error" not in again, again
        assert "Subject: after the crash" in again["messages"][0]


def test_a_users_own_dovecot_conf_is_taken_with_the_labs_settings_applied(
    docker_client: Any, tmp_path: Path
) -> None:
    """The user's file (Debian's conf.d included, its own greeting, an mbox location and a
    PAM passdb) is taken; the lab's mailboxes, Maildirs, listener and log still apply."""
    conf = tmp_path / "isp-dovecot.conf"
    conf.write_text(
        "protocols = imap pop3\n"
        "!include conf.d/*.conf\n"
        "login_greeting = Welcome to uklinux.\n"
        "mail_location = mbox:~/mail:INBOX=/var/mail/%u\n"
    )
    topology = load(HOME_DIALUP_DOVECOT).model
    isp = topology.nodes["isp"]
    isp.config.pop3 = conf
    isp.settings.pop3 = {"auth_failure_delay": "0"}
    with Lab.up(topology, backend="docker", state_dir=tmp_path / "lab") as lab:
        deliver_to_shofar(lab, "own configuration")
        session = pop3(lab, user="shofar", password="s3cret")
        assert "error" not in session, session
        assert session["greeting"].startswith("+OK Welcome to uklinux."), session
        assert "Subject: own configuration" in session["messages"][0]
        rendered = lab.backend.containers["isp"].exec_run(
            ["doveconf", "-c", "/etc/maillab/dovecot/dovecot.conf", "-h", "auth_failure_delay"]
        )
        assert rendered.output.decode().strip() == "0", rendered.output
