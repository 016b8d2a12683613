"""A real fetchmail 6.4 as the hub's fetch service, on the Docker backend: it polls the
built-in ISPs' POP3 over STLS (the certificate checked against the lab CA) and hands
what it fetches to the hub's MTA, the built-in one or Postfix; single drop, and multidrop
with the map, aka and the postmaster; run by `on_up: [fetch]`, `maillab fetch` and the
poll schedule on the lab clock; its output is the container's log and the built-in
fetcher's events.

These need a Docker engine (skipped without one, failing under CI=true); the first run
builds the maillab-fetchmail and maillab-postfix-fetchmail images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load
from lab.topology.model import Software, Topology
from lab.topology.software import ServiceSoftware

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP_FETCHMAIL = ROOT / "topologies" / "home-dialup-fetchmail.yaml"
MULTIDROP = "shofar@mail.uklinux.net"
SINGLE_DROP = "shofar.freeserve.co.uk@pop.freeserve.net"

pytestmark = pytest.mark.docker


def _topology(smtp: Software = Software.builtin) -> Topology:
    """home-dialup-fetchmail, the hub's MTA `smtp`, its fetch on fetchmail."""
    topology = load(HOME_DIALUP_FETCHMAIL).model
    hub = topology.nodes["hub"]
    hub.software = ServiceSoftware(
        smtp=None if smtp is Software.builtin else smtp, fetch=Software.fetchmail
    )
    return topology


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _image(lab: Lab) -> str:
    hub = lab.backend.containers["hub"]
    return hub.image.tags[0] if hub.image.tags else ""


def _send_to_the_boxes(lab: Lab) -> None:
    """Mail from the internet into uklinux's multidrop box (four names) and Freeserve's
    single-drop box, while the hub's modem is down."""
    sent = lab.send(
        "freeuk",
        mail_from="paulmidgley@freeuk.com",
        to=[
            "eddy@shofar.uklinux.net",
            "nelug@shofar.uklinux.net",
            "keith@shofar.uklinux.net",
            "webmaster@shofar.uklinux.net",
        ],
        via="isp",
        subject="Internet access",
    )
    assert sent.accepted, sent.to_json()
    single = lab.send(
        "freeuk",
        mail_from="paulmidgley@freeuk.com",
        to=["anyone@shofar.freeserve.co.uk"],
        via="freeserve",
        subject="single drop",
    )
    assert single.accepted, single.to_json()
    for node, box, count in (("isp", "shofar", 4), ("freeserve", "shofar.freeserve.co.uk", 1)):
        _wait(lambda n=node, b=box, c=count: len(lab.mailbox(n, b)) == c, timeout=20)


def _fetch_events(lab: Lab, kind: str, job: str | None = None) -> list[Any]:
    return [
        e
        for e in lab.events
        if e.node == "hub" and e.kind == kind and (job is None or e.get("job") == job)
    ]


def _assert_fetched(lab: Lab, *, mta: str) -> None:
    """Every message in eddy's and keith's Maildirs, through the map, over the hub's MTA."""
    eddy = lab.mailbox("hub", "eddy")
    # his own, nelug=eddy, webmaster (not in the map: the postmaster, an alias of eddy),
    # and the single-drop box's
    assert len(eddy) == 4, [m.raw[:300] for m in eddy]
    assert {m.envelope_from for m in eddy} == {"paulmidgley@freeuk.com"}
    keith = lab.mailbox("hub", "keith")
    assert len(keith) == 1
    for message in [*eddy, *keith]:
        assert "with POP3 (fetchmail-6.4" in message.raw, message.raw[:800]
        assert mta in message.raw, message.raw[:800]
    drops = sorted(
        "multi" if "(multi-drop)" in m.raw else "single" for m in eddy if "(fetchmail" in m.raw
    )
    assert drops == ["multi", "multi", "multi", "single"]
    assert lab.mailbox("isp", "shofar") == []
    assert lab.mailbox("freeserve", "shofar.freeserve.co.uk") == []


def test_fetchmail_fetches_over_stls_into_the_builtin_mta_when_the_link_comes_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(_topology(), backend="docker", state_dir=tmp_path / "lab") as lab:
        assert _image(lab).startswith("maillab-fetchmail:"), _image(lab)
        _send_to_the_boxes(lab)
        assert lab.mailbox("hub", "eddy") == []  # the modem is down: nothing polls

        lab.link("dialup").up()  # on_up: [flush, fetch] -> fetchmail, once per job
        _assert_fetched(lab, mta="(maillab)")

        # the built-in fetcher's events, in its shape
        starts = _fetch_events(lab, "fetch.start")
        assert [e.get("job") for e in starts] == [SINGLE_DROP, MULTIDROP]
        assert starts[1].get("mode") == "multi-drop" and starts[1].get("user") == "shofar"
        messages = _fetch_events(lab, "fetch.message", MULTIDROP)
        recipients = sorted(r for e in messages for r in e.get("recipients"))
        assert recipients == [
            "eddy@shofar.org.uk",
            "eddy@shofar.org.uk",  # nelug=eddy
            "keith@shofar.org.uk",
            "postmaster@shofar.org.uk",  # webmaster: not in the map
        ]
        for event in messages:
            assert event.get("envelope_from") == "paulmidgley@freeuk.com"
            assert event.get("queue_id") and event.get("uid") and event.get("size") > 0
        # each queue id is the hub's MTA's: its queue.queued event has it
        queued = {e.get("id") for e in lab.events if e.node == "hub" and e.kind == "queue.queued"}
        assert {e.get("queue_id") for e in messages} <= queued
        deleted = _fetch_events(lab, "fetch.deleted", MULTIDROP)
        assert sorted(e.get("uid") for e in deleted) == sorted(e.get("uid") for e in messages)
        done = {e.get("job"): e for e in _fetch_events(lab, "fetch.done")}
        assert done[MULTIDROP].get("count") == 4 and done[MULTIDROP].get("errors") == 0
        assert done[SINGLE_DROP].get("count") == 1 and done[SINGLE_DROP].get("errors") == 0
        assert _fetch_events(lab, "fetch.error") == []
        # STLS, the certificate checked against the lab CA
        assert [e for e in lab.events if e.node == "isp" and e.kind == "pop3.stls"]

        # `maillab fetch hub`: nothing left; the result is the count, as the built-in's
        assert lab.fetch("hub") == 0

        logs = lab.backend.logs("hub")
        assert "fetchmail: POP3> STLS" in logs
        assert "mail.uklinux.net: upgrade to TLS succeeded." in logs
        assert "Subject CommonName: mail.uklinux.net" in logs
        assert "reading message shofar@" in logs and " flushed" in logs


def test_fetchmail_hands_to_postfix_on_the_hub(docker_client: Any, tmp_path: Path) -> None:
    with Lab.up(_topology(Software.postfix), backend="docker", state_dir=tmp_path / "lab") as lab:
        assert _image(lab).startswith("maillab-postfix-fetchmail:"), _image(lab)
        _send_to_the_boxes(lab)
        lab.link("dialup").up()
        _assert_fetched(lab, mta="(Postfix)")
        messages = _fetch_events(lab, "fetch.message")
        assert len(messages) == 5
        # the queue ids are Postfix's ("queued as ID"), and its log delivered each of them
        delivered = {
            e.get("id") for e in lab.events if e.node == "hub" and e.kind == "mailbox.delivered"
        }
        assert {e.get("queue_id") for e in messages} <= delivered
        logs = lab.backend.logs("hub")
        assert "fetchmail: SMTP< 250 2.0.0 Ok: queued as" in logs
        assert "postfix/local" in logs


def test_fetchmail_polls_on_the_lab_clock_while_the_link_is_up(
    docker_client: Any, tmp_path: Path
) -> None:
    with Lab.up(_topology(), backend="docker", state_dir=tmp_path / "lab") as lab:
        lab.link("dialup").up()
        before = len(_fetch_events(lab, "fetch.start"))
        sent = lab.send(
            "freeuk",
            mail_from="paulmidgley@freeuk.com",
            to=["keith@shofar.uklinux.net"],
            via="isp",
            subject="polled",
        )
        assert sent.accepted, sent.to_json()
        _wait(lambda: len(lab.mailbox("isp", "shofar")) == 1, timeout=20)
        assert lab.mailbox("hub", "keith") == []
        lab.clock.advance("5m")  # the jobs' poll: 5m
        lab.assert_delivered(
            "keith@shofar.org.uk", node="hub", mailbox="keith", headers={"Subject": "polled"}
        )
        assert len(_fetch_events(lab, "fetch.start")) >= before + 2

        lab.link("dialup").down()  # polling stops with the link
        starts = len(_fetch_events(lab, "fetch.start"))
        lab.clock.advance("15m")
        assert len(_fetch_events(lab, "fetch.start")) == starts


def test_a_wrong_password_is_an_error_event_and_leaves_the_mail(
    docker_client: Any, tmp_path: Path
) -> None:
    topology = _topology()
    topology.nodes["hub"].fetch[1].password = "wrong"
    with Lab.up(topology, backend="docker", state_dir=tmp_path / "lab") as lab:
        _send_to_the_boxes(lab)
        lab.link("dialup").up()
        errors = _fetch_events(lab, "fetch.error", MULTIDROP)
        assert errors, lab.backend.logs("hub")[-3000:]
        assert errors[0].get("stage") == "login", errors
        assert "PASS" in errors[0].get("error") and "-ERR" in errors[0].get("error")
        done = _fetch_events(lab, "fetch.done", MULTIDROP)
        assert done[-1].get("count") == 0 and done[-1].get("errors") >= 1
        assert done[-1].get("exit") == 3  # fetchmail's "authentication failed"
        assert len(lab.mailbox("isp", "shofar")) == 4  # left on the server
        # the other job went on: the single-drop box was fetched
        assert len(lab.mailbox("hub", "eddy")) == 1
        assert lab.fetch("hub") == 0  # no crash: the next run reports the same
        assert "Authorization failure on shofar@" in lab.backend.logs("hub")


def test_the_users_own_fetchmailrc_runs_with_the_lab_owned_globals_out(
    docker_client: Any, tmp_path: Path
) -> None:
    from lab.topology.software import ServiceConfig

    rc = tmp_path / "hub.fetchmailrc"
    rc.write_text(
        "set daemon 60\n"
        "set logfile /var/log/fetchmail.log\n"
        'set postmaster "postmaster"\n'
        "set no bouncemail\n"
        "poll mail.uklinux.net with proto POP3 service 110\n"
        '    aka shofar.uklinux.net no dns envelope "Delivered-To:"\n'
        '  user "shofar" there with password "s3cret" to eddy nelug=eddy keith here\n'
        "    options flush smtphost 192.168.10.1/25 smtpaddress shofar.org.uk\n"
    )
    topology = _topology()
    topology.nodes["hub"].config = ServiceConfig(fetch=rc)
    with Lab.up(topology, backend="docker", state_dir=tmp_path / "lab") as lab:
        sent = lab.send(
            "freeuk",
            mail_from="paulmidgley@freeuk.com",
            to=["nelug@shofar.uklinux.net", "keith@shofar.uklinux.net"],
            via="isp",
            subject="own rcfile",
        )
        assert sent.accepted, sent.to_json()
        _wait(lambda: len(lab.mailbox("isp", "shofar")) == 2, timeout=20)
        lab.link("dialup").up()
        lab.assert_delivered("eddy@shofar.org.uk", node="hub", mailbox="eddy", timeout=20)
        lab.assert_delivered("keith@shofar.org.uk", node="hub", mailbox="keith", timeout=20)
        (start,) = _fetch_events(lab, "fetch.start")
        assert (start.get("job"), start.get("mode")) == ("hub.fetchmailrc", "rcfile")
        (done,) = _fetch_events(lab, "fetch.done")
        assert (done.get("count"), done.get("errors")) == (2, 0)
        # the lab's CA was trusted without sslcertfile (SSL_CERT_FILE), the log is ours
        logs = lab.backend.logs("hub")
        assert "mail.uklinux.net: upgrade to TLS succeeded." in logs
        assert "reading message shofar@" in logs
        rendered = lab.backend.containers["hub"].exec_run(
            ["cat", "/etc/maillab/fetchmail/fetchmailrc"]
        )
        assert b"# (maillab) set daemon 60" in rendered.output
        assert b"# (maillab) set logfile" in rendered.output
