"""Fetching, seed nelug's way: the hub polls its ISP maildrops over POP3 when the dial-up
link comes up, maps the multidrop names, and hands every message to its own MTA.

Mail "from the internet" is submitted from freeuk straight to the maildrop's MX (the ISP),
as freeuk's MTA does after its MX lookup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness.lab import Lab, MailboxMessage
from lab.protocols.pop3 import Pop3Server, uid_for_key
from lab.services.fetch import FetchService, UidJournal
from lab.services.fetch.message import (
    envelope_sender,
    map_names,
    multidrop_names,
    strip_return_path,
)
from lab.services.resolver import Resolver
from lab.topology import load
from lab.topology.model import Topology

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"
PAUL = "paulmidgley@freeuk.com"
UKLINUX, FREESERVE = 1, 0  # the hub's fetch jobs, in file order
NAMES = [
    "eddy",
    "nelug",
    "NELUG-admin",
    "nelug-approval",
    "NELUG-list",
    "root",
    "keith",
    "stranger",
]


def topology(change: Callable[[Topology], Any] | None = None) -> Topology:
    model = load(TOPOLOGY).model
    if change is not None:
        change(model)
    return model


# Each test runs on every --lab-backend backend, but for those marked in-process only: they
# reach into the in-process fetch and POP3 services (replace, break or patch them).
pytestmark = pytest.mark.topology("home-dialup")


def quick_logins(lab: Lab) -> Lab:
    """In process, a failed POP3 login is answered after 0.05 s instead of 1 s."""
    for service in getattr(lab.backend, "pop3", {}).values():
        service.auth_delay = 0.05
    return lab


@pytest.fixture
def make_lab(lab_factory: Callable[..., Lab]) -> Callable[..., Lab]:
    """make_lab(change) brings up home-dialup after `change` edited its model."""

    def make(change: Callable[[Topology], Any] | None = None) -> Lab:
        return quick_logins(lab_factory(topology(change), fresh=True))

    return make


@pytest.fixture
def lab(lab: Lab) -> Lab:
    return quick_logins(lab)


def send(lab: Lab, *to: str, subject: str = "Internet access", isp: str = "isp") -> None:
    result = lab.send(
        "freeuk", mail_from=PAUL, to=list(to), via=isp, subject=subject, body="Hello from freeuk.\n"
    )
    assert result.accepted, result.to_json()
    lab.settle()


def isp_recipient(message: MailboxMessage) -> str:
    """The address the ISP delivered the fetched copy for (its Delivered-To, below the hub's)."""
    return message.message.get_all("Delivered-To")[-1].lower()


def on_server(lab: Lab, node: str = "isp", box: str = "shofar") -> int:
    return len(lab.mailbox(node, box))


def fetched(lab: Lab) -> list[Any]:
    return [e for e in lab.events if e.kind == "fetch.message"]


# the seed nelug acceptance --------------------------------------------------------------


def test_multidrop_and_single_drop_deliver_to_the_right_local_users(lab: Lab):
    send(lab, *(f"{n}@shofar.uklinux.net" for n in NAMES), subject="NELUG meeting")
    send(lab, "anyone@shofar.freeserve.co.uk", subject="single drop", isp="freeserve")
    assert on_server(lab) == len(NAMES)  # one copy per recipient, each with its Delivered-To
    assert on_server(lab, "freeserve", "shofar.freeserve.co.uk") == 1
    assert lab.mailbox("hub", "eddy") == []  # the link is down: nothing yet

    lab.link("dialup").up()  # ip-up: sendmail -q, then fetchmail

    expected = {
        "eddy": {"eddy", "nelug", "nelug-admin", "nelug-approval", "nelug-list", "stranger"},
        "keith": {"keith", "nelug-list"},
        "root": {"root"},
    }
    for user, names in expected.items():
        box = lab.mailbox("hub", user)
        got = sorted(isp_recipient(m) for m in box if m["Subject"] == "NELUG meeting")
        assert got == sorted(f"{n}@shofar.uklinux.net" for n in names), user
    single = [m for m in lab.mailbox("hub", "eddy") if m["Subject"] == "single drop"]
    assert len(single) == 1 and isp_recipient(single[0]) == "anyone@shofar.freeserve.co.uk"
    # NELUG-admin and NELUG-list are the hub's aliases; the stranger is the postmaster's
    lab.assert_delivered(to="NELUG-admin@shofar.org.uk", node="hub", mailbox="eddy")
    lab.assert_delivered(to="NELUG-list@shofar.org.uk", node="hub", mailbox="keith")
    lab.assert_delivered(to="postmaster@shofar.org.uk", node="hub", mailbox="eddy")
    assert on_server(lab) == 0 and on_server(lab, "freeserve", "shofar.freeserve.co.uk") == 0
    assert len(fetched(lab)) == len(NAMES) + 1
    assert all(e.get("envelope_from") == PAUL for e in fetched(lab))
    deleted = [e for e in lab.events if e.kind == "fetch.deleted"]
    assert len(deleted) == len(NAMES) + 1
    done = [e for e in lab.events if e.kind == "fetch.done"]
    assert sorted(e.get("count") for e in done) == [1, len(NAMES)]


def test_received_headers_show_the_pop3_hop(lab: Lab):
    send(lab, "nelug@shofar.uklinux.net")
    lab.link("dialup").up()
    message = lab.assert_delivered(to="eddy@shofar.org.uk", node="hub", mailbox="eddy")
    received = [" ".join(str(r).split()) for r in message.message.get_all("Received")]
    assert received[0].startswith("from moriah.shofar.org.uk")
    assert "by moriah.shofar.org.uk (maillab) with ESMTP" in received[0]
    assert re.match(
        r"from mail\.uklinux\.net by moriah\.shofar\.org\.uk with POP3 "
        r"\(maillab-fetch\) for eddy@shofar\.org\.uk \(multi-drop\); ",
        received[1],
    )
    assert "by mail.uklinux.net" in received[2] and "for <nelug@shofar.uklinux.net>" in received[2]
    # the envelope sender is the Return-Path the ISP wrote; the hub writes the only one now
    assert message.envelope_from == PAUL
    assert message.raw.count("Return-Path:") == 1


@pytest.mark.lab_backend("inprocess")  # restarts the hub's in-process fetcher
def test_keep_mode_fetches_nothing_twice(make_lab: Callable[..., Lab]):
    def keep(model: Topology) -> None:
        model.nodes["hub"].fetch[UKLINUX].keep = True

    lab = make_lab(keep)
    send(lab, "eddy@shofar.uklinux.net", subject="first")
    lab.link("dialup").up()
    assert [m["Subject"] for m in lab.mailbox("hub", "eddy")] == ["first"]
    assert on_server(lab) == 1  # kept
    assert [e.kind for e in lab.events if e.kind == "fetch.kept"] == ["fetch.kept"]
    assert lab.fetch("hub") == 0
    send(lab, "eddy@shofar.uklinux.net", subject="second")
    assert lab.fetch("hub") == 1
    assert lab.fetch("hub") == 0
    assert sorted(m["Subject"] for m in lab.mailbox("hub", "eddy")) == ["first", "second"]
    assert on_server(lab) == 2
    # the UIDs are on disk: a restarted fetcher does not fetch them again either
    state = Path(lab.status()["state_dir"]) / "nodes" / "hub"
    journal = state / "fetch" / "shofar@mail.uklinux.net.uidl"
    keys = [m.id for m in lab.mailbox("isp", "shofar")]
    assert set(journal.read_text().split()) == {uid_for_key(k) for k in keys}
    hub = lab.backend.services["hub"]
    hub.fetcher = FetchService(hub.host, Resolver(hub.host.net, timeout=1.0), hub.mta)
    assert lab.fetch("hub") == 0
    assert len(lab.mailbox("hub", "eddy")) == 2


def test_a_local_4xx_leaves_the_message_on_the_server(lab: Lab):
    lab.add_fault("hub", on="rcpt", reply="451 4.3.0 try later", times=1)
    send(lab, "eddy@shofar.uklinux.net")
    lab.link("dialup").up()
    assert lab.mailbox("hub", "eddy") == []
    assert on_server(lab) == 1
    errors = [e for e in lab.events if e.kind == "fetch.error"]
    assert errors and errors[-1].get("stage") == "smtp" and errors[-1].get("left_on_server")
    assert "451" in errors[-1].get("error")
    assert not [e for e in lab.events if e.kind in ("fetch.deleted", "pop3.dele")]
    assert lab.fetch("hub") == 1
    assert len(lab.mailbox("hub", "eddy")) == 1
    assert on_server(lab) == 0
    assert lab.fetch("hub") == 0
    assert len(lab.mailbox("hub", "eddy")) == 1  # once


@pytest.mark.lab_backend("inprocess")  # breaks the in-process fetcher's DELE
def test_a_crash_between_the_local_250_and_quit_does_not_deliver_twice(lab: Lab):
    fetcher = lab.backend.services["hub"].fetcher

    async def crash(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionResetError("the hub went down before DELE")

    fetcher._delete = crash
    send(lab, "eddy@shofar.uklinux.net")
    lab.link("dialup").up()
    assert len(lab.mailbox("hub", "eddy")) == 1  # handed over ...
    assert on_server(lab) == 1  # ... and still on the server: no DELE, no QUIT
    del fetcher._delete
    assert lab.fetch("hub") == 0  # recognised by its UID: not handed over again ...
    assert on_server(lab) == 0  # ... only deleted
    assert len(lab.mailbox("hub", "eddy")) == 1
    assert [e.kind for e in lab.events if e.kind == "fetch.deleted"] == ["fetch.deleted"]


def test_polling_on_the_lab_clock_while_the_link_is_up(lab: Lab):
    lab.link("dialup").up()
    send(lab, "eddy@shofar.uklinux.net", subject="while up")
    assert lab.mailbox("hub", "eddy") == []
    lab.clock.advance("5m")
    assert [m["Subject"] for m in lab.mailbox("hub", "eddy")] == ["while up"]

    lab.link("dialup").down()
    before = len([e for e in lab.events if e.kind == "fetch.start"])
    send(lab, "eddy@shofar.uklinux.net", subject="while down")
    lab.clock.advance("5m")
    lab.clock.advance("1h")
    assert [m["Subject"] for m in lab.mailbox("hub", "eddy")] == ["while up"]
    assert on_server(lab) == 1
    polls = len([e for e in lab.events if e.kind == "fetch.start"])
    assert polls - before <= 1  # polling stopped (at most one attempt finds the link down)

    lab.link("dialup").up()  # the on_up hook fetches at once
    assert sorted(m["Subject"] for m in lab.mailbox("hub", "eddy")) == ["while down", "while up"]
    lab.clock.advance("10m")  # and polling resumes: two polls of each of the two jobs
    assert len([e for e in lab.events if e.kind == "fetch.start"]) == polls + 2 + 4


@pytest.mark.lab_backend("inprocess")  # patches the POP3 server class in this process
def test_a_server_without_uidl(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    def no_uidl(self: Pop3Server, arg: str | None = None) -> None:
        self._refuse("UIDL", "-ERR unknown command")

    monkeypatch.setattr(Pop3Server, "_cmd_uidl", no_uidl)
    send(lab, "eddy@shofar.uklinux.net")
    lab.link("dialup").up()
    assert len(lab.mailbox("hub", "eddy")) == 1
    assert on_server(lab) == 0  # deleted all the same
    assert lab.fetch("hub") == 0


def test_a_down_link_fetches_nothing(lab: Lab):
    send(lab, "eddy@shofar.uklinux.net")
    assert lab.fetch("hub") == 0
    errors = [e for e in lab.events if e.kind == "fetch.error"]
    assert {e.get("stage") for e in errors} == {"resolve"}
    assert on_server(lab) == 1


def test_a_wrong_password_is_an_error_and_leaves_the_mail(make_lab: Callable[..., Lab]):
    def wrong(model: Topology) -> None:
        model.nodes["hub"].fetch[UKLINUX].password = "wrong"

    lab = make_lab(wrong)
    send(lab, "eddy@shofar.uklinux.net")
    lab.link("dialup").up()
    errors = [e for e in lab.events if e.kind == "fetch.error"]
    assert [e.get("stage") for e in errors] == ["login"]
    assert "[AUTH]" in errors[0].get("error")
    assert on_server(lab) == 1


def test_fetching_over_stls(make_lab: Callable[..., Lab]):
    def stls(model: Topology) -> None:
        model.nodes["hub"].fetch[UKLINUX].stls = True

    lab = make_lab(stls)
    send(lab, "keith@shofar.uklinux.net")
    lab.link("dialup").up()
    lab.assert_delivered(to="keith@shofar.org.uk", node="hub", mailbox="keith")
    lab.wait_for("pop3.stls", node="isp")


# the parts on their own ----------------------------------------------------------------


MULTI = (
    b"Return-Path: <owner-nelug@lists.lug.org.uk>\r\n"
    b"Delivered-To: NELUG@shofar.uklinux.net\r\n"
    b"Received: from lug.org.uk\r\n\tby mail.uklinux.net; Thu, 1 Jun 2000 21:24:38 +0100\r\n"
    b"Delivered-To: nelug@lists.lug.org.uk\r\n"
    b"From: Eddy Younger <eddy@shofar.uklinux.net>\r\n"
    b"To: NELUG-announce@shofar.uklinux.net, paul@freeuk.com\r\n"
    b"Cc: keith@shofar.uklinux.net\r\n"
    b"\r\n"
    b"Return-Path: in the body is not a header\r\n"
)


def test_multidrop_names_prefer_the_envelope_headers():
    domains = {"shofar.uklinux.net", "mail.uklinux.net"}
    assert multidrop_names(MULTI, domains) == ["NELUG"]
    without_envelope = MULTI.replace(b"Delivered-To: NELUG@shofar.uklinux.net\r\n", b"")
    assert multidrop_names(without_envelope, domains) == ["NELUG-announce", "keith"]
    assert multidrop_names(b"To: someone@elsewhere.org\r\n\r\n", domains) == []


def test_names_are_mapped_case_insensitively_and_once():
    table = {"eddy": None, "nelug": "eddy", "NELUG-admin": None, "root": None}
    assert map_names(["NELUG", "Eddy", "nelug-ADMIN", "stranger", "ROOT"], table, "postmaster") == [
        "eddy",
        "NELUG-admin",
        "postmaster",
        "root",
    ]
    assert map_names([], table, "postmaster") == ["postmaster"]


def test_envelope_sender_and_return_path():
    assert envelope_sender(MULTI) == "owner-nelug@lists.lug.org.uk"
    assert envelope_sender(b"Return-Path: <>\r\nFrom: a@b.c\r\n\r\nx\r\n") == ""
    assert envelope_sender(b"From: Paul <paul@freeuk.com>\r\n\r\nx\r\n") == "paul@freeuk.com"
    stripped = strip_return_path(MULTI)
    assert not stripped.startswith(b"Return-Path:")
    assert stripped.endswith(b"Return-Path: in the body is not a header\r\n")
    folded = b"Return-Path:\r\n <a@b.c>\r\nSubject: x\r\n\r\nbody\r\n"
    assert strip_return_path(folded) == b"Subject: x\r\n\r\nbody\r\n"


def test_the_journal_is_durable_and_compacts(tmp_path: Path):
    path = tmp_path / "fetch" / "shofar@mail.uklinux.net.uidl"
    journal = UidJournal(path)
    journal.mark_done("u1")
    journal.mark_partial("u2", ["eddy@shofar.org.uk"])
    again = UidJournal(path)
    assert again.done == {"u1"} and again.partial == {"u2": {"eddy@shofar.org.uk"}}
    again.mark_done("u2")
    assert UidJournal(path).done == {"u1", "u2"} and UidJournal(path).partial == {}
    again.compact({"u2", "u3"})
    assert path.read_text() == "u2\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# the real fetchmail --------------------------------------------------------------------


@pytest.mark.lab_backend("inprocess")  # on Docker, no endpoint here reaches the ISP's POP3
def test_the_real_fetchmail_polls_our_pop3_server(lab: Lab, tmp_path: Path):
    program = shutil.which("fetchmail") or "/usr/bin/fetchmail"
    if not os.path.exists(program):
        if os.environ.get("CI") == "true":
            pytest.fail("fetchmail is not installed (apt-get install fetchmail)")
        pytest.skip("fetchmail is not installed")
    send(
        lab,
        *(f"{n}@shofar.uklinux.net" for n in ("eddy", "nelug", "keith", "stranger")),
        subject="via fetchmail",
    )
    status = lab.status()
    pop_host, _, pop_port = status["nodes"]["isp"]["endpoints"]["pop3"].rpartition(":")
    smtp_host, _, smtp_port = status["nodes"]["hub"]["endpoints"]["smtp"].rpartition(":")
    rcfile = tmp_path / "fetchmailrc"
    # seed nelug's .fetchmailrc, pointed at the lab's endpoints; the ISP offers STLS and
    # fetchmail checks its certificate against the lab CA, for the name it carries (the
    # host name, as Subject CN and subjectAltName; `via` is only an address here)
    rcfile.write_text(
        textwrap.dedent(f"""\
        set postmaster "postmaster"
        set no bouncemail
        poll mail.uklinux.net via {pop_host} with proto POP3 port {pop_port}
            aka shofar.uklinux.net no dns envelope "Delivered-To"
          user "shofar" there with password "s3cret" to eddy nelug=eddy NELUG-admin
            nelug-approval=eddy NELUG-list root keith here
          options flush sslcertck sslcertfile "{status["ca"]}"
            sslcommonname mail.uklinux.net
            smtphost {smtp_host}/{smtp_port} smtpaddress shofar.org.uk
        """)
    )
    rcfile.chmod(0o600)
    env = {
        "HOME": str(tmp_path),
        "FETCHMAILHOME": str(tmp_path),
        "PATH": os.environ["PATH"],
        "LC_ALL": "C",
    }
    run = subprocess.run(
        [program, "-f", str(rcfile), "--nodetach", "--nosyslog", "-v"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    transcript = run.stdout + run.stderr
    assert run.returncode == 0, transcript
    assert "POP3> RETR" in transcript or "POP3> TOP" in transcript, transcript
    assert "mail.uklinux.net: upgrade to TLS succeeded." in transcript, transcript
    lab.settle()
    got = {
        user: sorted(isp_recipient(m) for m in lab.mailbox("hub", user))
        for user in ("eddy", "keith")
    }
    assert got == {
        "eddy": [f"{n}@shofar.uklinux.net" for n in ("eddy", "nelug", "stranger")],
        "keith": ["keith@shofar.uklinux.net"],
    }, transcript
    message = lab.mailbox("hub", "keith")[0]
    assert any(
        "with POP3 (fetchmail" in " ".join(str(r).split())
        for r in message.message.get_all("Received")
    )
    assert on_server(lab) == 0
    assert [e.get("deleted") for e in lab.events if e.kind == "pop3.quit"] == [4]
