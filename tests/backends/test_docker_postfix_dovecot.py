"""Postfix and Dovecot on one host (Docker backend): home-dialup-dovecot with the ISP's MTA
on Postfix (`software: {smtp: postfix, pop3: dovecot}`, the maillab-postfix-dovecot
image). Postfix delivers the ISP's maildrops: a multidrop domain's mail, whatever the
local part, through virtual(8) into the box's Maildir with a Delivered-To: of the
recipient; a single drop (the box's own name at the ISP's domain) through local(8) into
the same Maildir. Dovecot serves them over POP3, and the hub's fetch brings them in.

The POP3 client runs in freeuk's container with Python's poplib. Needs a Docker engine
(skipped without one, failing under CI=true); the first run builds the image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP_DOVECOT = ROOT / "topologies" / "home-dialup-dovecot.yaml"
ISP = "10.20.0.25"  # mail.uklinux.net

pytestmark = pytest.mark.docker

CLIENT = r"""
import json, poplib, sys
steps = json.loads(sys.argv[1])
p = poplib.POP3(steps["host"], 110, timeout=20)
p.user(steps["user"])
p.pass_(steps["password"])
count = len(p.list()[1])
out = {"messages": [b"\n".join(p.retr(i + 1)[1]).decode() for i in range(count)]}
p.quit()
print(json.dumps(out))
"""


def topology(tmp_path: Path) -> Path:
    """home-dialup-dovecot with the ISP (the first `software: {pop3: dovecot}`) on Postfix."""
    text = HOME_DIALUP_DOVECOT.read_text()
    isp = text.index("hostname: mail.uklinux.net")
    line = "software: {pop3: dovecot}"
    at = text.index(line, isp)
    text = text[:at] + "software: {smtp: postfix, pop3: dovecot}" + text[at + len(line) :]
    path = tmp_path / "home-dialup-postfix-dovecot.yaml"
    path.write_text(text)
    return path


def pop3(lab: Lab, user: str, password: str) -> list[str]:
    steps = {"host": ISP, "user": user, "password": password}
    result = lab.backend.containers["freeuk"].exec_run(["python3", "-c", CLIENT, json.dumps(steps)])
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output.decode().strip().splitlines()[-1])
    return list(found["messages"])


def test_postfix_delivers_the_maildrops_dovecot_serves(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(topology(tmp_path), backend="docker", state_dir=tmp_path / "lab") as lab:
        image = lab.backend.containers["isp"].image.tags[0]
        assert image.startswith("maillab-postfix-dovecot:"), image
        for to, subject in (
            ("nelug@shofar.uklinux.net", "multidrop"),  # the box's domain: virtual(8)
            ("shofar@uklinux.net", "single drop"),  # the box's name: local(8)
        ):
            sent = lab.send(
                "freeuk", via="isp", mail_from="paulmidgley@freeuk.com", to=[to], subject=subject
            )
            assert sent.accepted, sent.to_json()
            delivered = lab.wait_for("mailbox.delivered", node="isp", address=to, timeout=20)
            assert delivered.get("user") == "shofar", delivered
            assert delivered.get("maildrop") is True and delivered.get("key"), delivered
            queued = lab.wait_for("queue.queued", node="isp", id=delivered.get("id"))
            assert queued.get("recipients") == [to], queued
        lab.settle()
        assert len(lab.mailbox("isp", "shofar")) == 2

        messages = pop3(lab, "shofar", "s3cret")
        by_subject = {
            line.partition(": ")[2]: m
            for m in messages
            for line in m.splitlines()
            if line.startswith("Subject: ")
        }
        assert sorted(by_subject) == ["multidrop", "single drop"], messages
        assert "Delivered-To: nelug@shofar.uklinux.net" in by_subject["multidrop"]
        assert "Delivered-To: shofar@uklinux.net" in by_subject["single drop"]

        # the hub's fetch job (multidrop, by Delivered-To:) brings nelug's mail to eddy
        lab.link("dialup").up()  # on_up: flush, fetch
        lab.assert_delivered("eddy@shofar.org.uk", node="hub", mailbox="eddy", timeout=30)
        deadline = time.monotonic() + 30
        subjects: list[str] = []
        while "multidrop" not in subjects and time.monotonic() < deadline:
            subjects = [str(m["Subject"]) for m in lab.mailbox("hub", "eddy")]
            time.sleep(0.2)
        assert "multidrop" in subjects, subjects
