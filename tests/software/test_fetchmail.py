"""fetchmail's rcfiles rendered from a node's fetch jobs, and its verbose output (real
transcripts of fetchmail 6.4.37 against the lab, in tests/software/data) read into the
built-in fetcher's events."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import LabError
from lab.software.fetchmail import (
    CA_FILE,
    FetchContext,
    FetchmailLog,
    FetchRun,
    command,
    environment,
    own_rcfile,
    plan,
)
from lab.topology import load, load_text
from lab.topology.addressing import assign_addresses
from lab.topology.model import Topology
from lab.topology.records import RecordTable

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
HOME_DIALUP_FETCHMAIL = ROOT / "topologies" / "home-dialup-fetchmail.yaml"


def _ctx(topology: Topology, node: str = "hub") -> FetchContext:
    addresses = assign_addresses(topology)
    return FetchContext(
        name=node,
        node=topology.nodes[node],
        topology=topology,
        hostname=topology.nodes[node].hostname or node,
        addresses={n: str(a) for n, a in addresses[node].items()},
        state_dir="/var/lib/maillab",
        records=RecordTable.from_topology(topology, addresses),
    )


@pytest.fixture
def home() -> Topology:
    return load(HOME_DIALUP_FETCHMAIL).model


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def test_single_drop_job(home: Topology) -> None:
    rendered = plan(_ctx(home))
    assert list(rendered.files) == [
        "/etc/maillab/fetchmail/job-1.rc",
        "/etc/maillab/fetchmail/job-2.rc",
    ]
    assert _lines(rendered.files["/etc/maillab/fetchmail/job-1.rc"])[1:] == [
        'set postmaster "postmaster"',
        "set no bouncemail",
        'poll "pop.freeserve.net" with proto POP3 service 110 auth password',
        'user "shofar.freeserve.co.uk" there with password "freeserve-pw"',
        "is eddy here",
        # the ISP offers STLS: the certificate is checked against the lab CA, for the
        # name it carries (pop.freeserve.net is a CNAME to mail.freeserve.net)
        f'options flush sslcertck sslcertfile "{CA_FILE}" sslcommonname "mail.freeserve.net"',
        # an address as smtphost: smtpaddress qualifies the names with the hub's domain
        "smtphost 192.168.10.1/25 smtpaddress shofar.org.uk",
    ]
    run = rendered.runs[0]
    assert (run.label, run.mode, run.keep, run.poll) == (
        "shofar.freeserve.co.uk@pop.freeserve.net",
        "single-drop",
        False,
        300.0,
    )


def test_multidrop_job_with_the_map_aka_postmaster_and_envelope(home: Topology) -> None:
    home.nodes["hub"].fetch[1].postmaster = "root"
    text = plan(_ctx(home)).files["/etc/maillab/fetchmail/job-2.rc"]
    assert _lines(text)[1:] == [
        'set postmaster "root"',
        "set no bouncemail",
        'poll "mail.uklinux.net" with proto POP3 service 110 auth password',
        'aka "shofar.uklinux.net" no dns envelope "Delivered-To:"',
        'user "shofar" there with password "s3cret"',
        "to eddy nelug=eddy NELUG-admin nelug-approval=eddy NELUG-list root keith here",
        f'options flush sslcertck sslcertfile "{CA_FILE}"',
        "smtphost 192.168.10.1/25 smtpaddress shofar.org.uk",
    ]
    assert plan(_ctx(home)).runs[1].mode == "multi-drop"


TOPOLOGY = """
name: t
networks: {net: {subnet: 10.0.0.0/24}}
nodes:
  isp:
    role: isp
    hostname: pop.isp.test
    networks: {net: 10.0.0.2}
    local_domains: [isp.test]
    mailboxes: {box: {password: pw}}
  relay: {role: mta, hostname: relay.isp.test, networks: {net: 10.0.0.3}}
  hub:
    role: mta
    hostname: hub.home.test
    networks: {net: 10.0.0.1}
    users: [joe]
    software: {fetch: fetchmail}
    settings: {fetch: SETTINGS}
    fetch:
      - {server: isp, user: box, password: 'p"w\\x', to: joe, keep: true, poll: null}
      - {server: relay.isp.test, user: u, password: pw, to: joe, stls: false}
      - {server: relay.isp.test, user: v, password: pw, to: joe, stls: true}
"""


def _hub(settings: str = "{}") -> FetchContext:
    return _ctx(load_text(TOPOLOGY.replace("SETTINGS", settings), "t.yaml").model)


def test_a_node_name_keep_the_host_name_as_domain_and_quoting() -> None:
    rendered = plan(_hub())
    lines = _lines(rendered.files["/etc/maillab/fetchmail/job-1.rc"])
    # a node as server: its host name; keep: uidl on the poll line, keep in the options
    assert 'poll "pop.isp.test" with proto POP3 service 110 auth password uidl' in lines
    assert 'user "box" there with password "p\\"w\\\\x"' in lines
    assert f'options keep sslcertck sslcertfile "{CA_FILE}"' in lines
    # no local domains: the names are qualified with the host name
    assert "smtphost 10.0.0.1/25 smtpaddress hub.home.test" in lines
    run = rendered.runs[0]
    assert (run.label, run.keep, run.poll) == ("box@isp", True, None)
    assert run.idfile == "/var/lib/maillab/fetch/box@isp.fetchids"


def test_sslcertck_only_where_stls_is_offered_or_asked_for() -> None:
    files = plan(_hub()).files
    # relay runs no POP3: no STLS to expect; fetchmail still trusts the lab CA
    no_stls = _lines(files["/etc/maillab/fetchmail/job-2.rc"])
    assert f'options flush sslcertfile "{CA_FILE}"' in no_stls
    stls = _lines(files["/etc/maillab/fetchmail/job-3.rc"])
    assert f'options flush sslcertck sslcertfile "{CA_FILE}"' in stls


def test_settings_are_global_set_lines() -> None:
    text = plan(_hub("{showdots: 'yes', bouncemail: 'no', postmaster: eddy, timeout: 30}")).files[
        "/etc/maillab/fetchmail/job-2.rc"
    ]
    assert 'set showdots\nset no bouncemail\nset postmaster "eddy"\nset timeout 30\n' in text


@pytest.mark.parametrize("key", ["daemon", "logfile", "syslog", "idfile", "no syslog"])
def test_settings_the_lab_owns_are_refused(key: str) -> None:
    with pytest.raises(LabError, match=r"fetchmail setting .* is the lab's"):
        plan(_hub(f"{{'{key}': 'x'}}"))


def test_the_users_own_rcfile_with_the_lab_owned_globals_taken_out(tmp_path: Path) -> None:
    rc = tmp_path / ".fetchmailrc"
    rc.write_text(
        "set daemon 300\nset logfile /var/log/fetchmail\nset syslog\nset postmaster eddy\n"
        "poll mail.uklinux.net proto POP3 user shofar password s3cret is eddy here\n"
    )
    topology = load(HOME_DIALUP_FETCHMAIL).model
    topology.nodes["hub"].config.fetch = rc
    rendered = plan(_ctx(topology))
    assert list(rendered.files) == ["/etc/maillab/fetchmail/fetchmailrc"]
    text = rendered.files["/etc/maillab/fetchmail/fetchmailrc"]
    assert text.splitlines() == [
        "# (maillab) set daemon 300",
        "# (maillab) set logfile /var/log/fetchmail",
        "# (maillab) set syslog",
        "set postmaster eddy",
        "poll mail.uklinux.net proto POP3 user shofar password s3cret is eddy here",
    ]
    assert own_rcfile("set no syslog\n") == "# (maillab) set no syslog\n"
    (run,) = rendered.runs
    assert (run.label, run.mode, run.poll) == (".fetchmailrc", "rcfile", 300.0)


def test_one_poll_in_the_foreground_on_the_lab_clock() -> None:
    run = plan(_hub()).runs[1]
    assert command(run) == [
        "fetchmail",
        "-f",
        "/etc/maillab/fetchmail/job-2.rc",
        "--nodetach",
        "--daemon",
        "0",
        "--nosyslog",
        "--verbose",
        "--idfile",
        "/var/lib/maillab/fetch/u@relay.isp.test.fetchids",
        "--pidfile",
        "/var/lib/maillab/fetch/fetchmail.pid",
    ]
    env = environment("/run/maillab/hub.fetchmail.faketime")
    assert env["LD_PRELOAD"].endswith("libfaketime.so.1")
    assert env["FAKETIME_TIMESTAMP_FILE"] == "/run/maillab/hub.fetchmail.faketime"
    assert env["SSL_CERT_FILE"] == CA_FILE


# ---------------------------------------------------------------------------------------
# its output


def _run(label: str = "shofar@mail.uklinux.net", keep: bool = False) -> FetchRun:
    return FetchRun(label, "mail.uklinux.net", "shofar", "multi-drop", keep, 300.0, "rc", "", "")


def _read(name: str, run: FetchRun, code: int = 0) -> tuple[FetchmailLog, list[tuple[str, dict]]]:
    reader = FetchmailLog(run)
    events = []
    for line in (DATA / name).read_text().splitlines():
        events += reader.feed(line)
    events += reader.finish(code)
    return reader, [(e.kind, e.data) for e in events]


def test_a_multidrop_run_becomes_the_built_in_fetchers_events() -> None:
    reader, events = _read("fetchmail-multidrop.log", _run())
    assert [kind for kind, _ in events] == ["fetch.message", "fetch.deleted"] * 3
    first, deleted = events[0][1], events[1][1]
    assert first == {
        "job": "shofar@mail.uklinux.net",
        "number": 1,
        "uid": "1796415672.735192.M0P1.mail",
        "recipients": ["eddy@shofar.org.uk"],
        "envelope_from": "paulmidgley@freeuk.com",
        "queue_id": "D99B61F4A96",  # Postfix's "queued as"
        "size": 579,
        "refused": [],
    }
    assert deleted == {"job": "shofar@mail.uklinux.net", "uid": first["uid"], "number": 1}
    assert events[4][1]["recipients"] == ["postmaster@shofar.org.uk"]
    # LAST answered -ERR is a probe, not an error; nor is the OpenSSL version warning
    assert (reader.fetched, reader.errors) == (3, [])


def test_a_kept_message_into_the_built_in_mta() -> None:
    reader, events = _read("fetchmail-keep.log", _run("shofar.freeserve.co.uk@x", keep=True))
    assert [kind for kind, _ in events] == ["fetch.message", "fetch.kept"]
    assert events[0][1]["queue_id"] == "A01EA46FBE"  # "250 2.0.0 ID Message accepted"
    assert events[1][1] == {
        "job": "shofar.freeserve.co.uk@x",
        "uid": "1796415830.266088.M0P1.mail",
        "number": 1,
    }
    assert reader.fetched == 1


def test_a_wrong_password_is_a_login_error() -> None:
    reader, events = _read("fetchmail-authfail.log", _run(), code=3)
    assert events == [
        (
            "fetch.error",
            {
                "job": "shofar@mail.uklinux.net",
                "stage": "login",
                "error": "PASS: -ERR [AUTH] invalid user name or password",
            },
        )
    ]
    assert reader.fetched == 0


def test_a_refused_recipient_leaves_the_message_with_an_smtp_error() -> None:
    reader = FetchmailLog(_run())
    events = []
    for line in [
        "reading message shofar@mail.uklinux.net:1 of 1 (579 octets) ",
        "fetchmail: SMTP> MAIL FROM:<paulmidgley@freeuk.com> SIZE=579",
        "fetchmail: SMTP< 250 2.1.0 Ok",
        "fetchmail: SMTP> RCPT TO:<nobody@shofar.org.uk>",
        "fetchmail: SMTP< 550 5.1.1 <nobody@shofar.org.uk>: Recipient address rejected",
        "fetchmail: SMTP error: 550 5.1.1 <nobody@shofar.org.uk>: Recipient address rejected",
        " not flushed",
    ]:
        events += reader.feed(line)
    assert [(e.kind, e.data["stage"], e.data["recipients"]) for e in events] == [
        ("fetch.error", "smtp", ["nobody@shofar.org.uk"])
    ]
    assert events[0].data["left_on_server"] is True
    assert "550 5.1.1" in events[0].data["error"]


def test_a_failed_run_without_a_reason_read_is_an_error_from_its_exit_code() -> None:
    reader = FetchmailLog(_run())
    reader.feed("fetchmail: connection to mail.uklinux.net:110 [10.20.0.25/110] failed: x.")
    assert [e.data["stage"] for e in reader.finish(2)] == []  # already said: connect
    assert reader.errors == [
        "connect: connection to mail.uklinux.net:110 [10.20.0.25/110] failed: x."
    ]
    other = FetchmailLog(_run())
    other.feed("fetchmail:rc:8: syntax error at sslcertck")
    (event,) = other.finish(5)
    assert event.data["stage"] == "config"
    assert "syntax error at sslcertck" in event.data["error"]
    assert FetchmailLog(_run()).finish(1) == []  # 1: no mail
