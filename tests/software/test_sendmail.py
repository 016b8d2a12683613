# ruff: noqa: E501  (the log lines are sendmail's, whole)
"""lab.software.sendmail without Docker: sendmail.mc rendered from a node (or a user's own
with the lab's lines added), sendmail's syslog lines read as the lab's events, its qf
files read as the built-in MTA's queue listing and due times, mail.local's mbox read as
the lab's mailbox listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import LabError
from lab.software import check_node
from lab.software.adapter import RenderContext
from lab.software.registry import adapter_for, image_families
from lab.software.sendmail import SendmailAdapter, relay_domains, render_mc, unsupported, user_mc
from lab.software.sendmail_log import QF_MARK, SendmailLog, due_times, mbox_messages, parse_queue
from lab.topology import load
from lab.topology.model import Masquerade, Retry, Software
from lab.topology.software import ServiceSoftware

ROOT = Path(__file__).resolve().parents[2]
HUB_MC = ROOT / "topologies" / "home-dialup-sendmail" / "hub.mc"


@pytest.fixture()
def ctx() -> RenderContext:
    topology = load(ROOT / "topologies" / "home-dialup-postfix.yaml").model
    topology.nodes["hub"].software = ServiceSoftware(smtp=Software.sendmail)
    return RenderContext(
        name="hub",
        node=topology.nodes["hub"],
        topology=topology,
        hostname="moriah.shofar.org.uk",
        addresses={"lan": "192.168.10.1", "internet": "10.20.9.201"},
        mail_root="/var/lib/maillab/mail",
        tls_chain="/etc/maillab/tls/chain.pem",
        tls_ca="/etc/maillab/tls/ca.pem",
    )


def test_a_sendmail_node_runs_in_the_sendmail_image(ctx: RenderContext) -> None:
    assert image_families(ctx.node) == ("sendmail",)
    assert isinstance(adapter_for(Software.sendmail), SendmailAdapter)
    check_node("hub", ctx.node, "docker")  # nothing refused
    with pytest.raises(LabError, match="inprocess"):
        check_node("hub", ctx.node, "inprocess")


def test_sendmail_mc_comes_from_the_nodes_fields(ctx: RenderContext) -> None:
    mc = render_mc(ctx, connect_timeout=3.0)
    assert "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n" in mc
    assert "DOMAIN(`debian-mta')dnl\n" in mc
    assert "define(`confDOMAIN_NAME', `moriah.shofar.org.uk')dnl\n" in mc
    assert "LOCAL_DOMAIN(`moriah.shofar.org.uk localhost shofar.org.uk')dnl\n" in mc
    assert "define(`SMART_HOST', `smtp:[mail.uklinux.net]')dnl\n" in mc
    assert "MASQUERADE_AS(`shofar.uklinux.net')dnl\n" in mc
    assert "MASQUERADE_DOMAIN(`shofar.org.uk')dnl\n" in mc
    for feature in ("masquerade_entire_domain", "masquerade_envelope", "allmasquerade"):
        assert f"FEATURE(`{feature}')dnl\n" in mc
    # the retry schedule: warn after 4h, return after 5d (the defaults)
    assert "define(`confTO_QUEUEWARN', `14400s')dnl\n" in mc
    assert "define(`confTO_QUEUERETURN', `432000s')dnl\n" in mc
    # the traps
    assert "undefine(`confHOST_STATUS_DIRECTORY')dnl\n" in mc
    assert "define(`confREFUSE_LA', `10000')dnl\n" in mc
    assert "define(`confDONT_PROBE_INTERFACES', `true')dnl\n" in mc
    # STARTTLS with the lab CA
    assert "define(`confSERVER_CERT', `/etc/maillab/tls/chain.pem')dnl\n" in mc
    assert "define(`confCACERT', `/etc/maillab/tls/ca.pem')dnl\n" in mc
    # the lab's lines come before the mailers, the mailers last
    assert mc.index("confDOMAIN_NAME") < mc.index("MAILER(`local')")
    assert mc.rstrip().endswith("MAILER(`smtp')dnl")
    assert "define(`LOCAL_MAILER_PATH', `/usr/libexec/sendmail/mail.local')dnl\n" in mc


def test_relay_domains_hold_the_networks_as_address_prefixes(ctx: RenderContext) -> None:
    lines, bad = relay_domains(ctx.node, ctx.topology)
    assert lines == ["127.0.0.1", "localhost", "192.168.10"] and bad == []
    files = SendmailAdapter().render(ctx)
    assert files["/etc/mail/relay-domains"] == "127.0.0.1\nlocalhost\n192.168.10\n"
    assert "nelug-announce: eddy, keith\n" in files["/etc/mail/aliases"]
    script = files["/etc/maillab/sendmail-prepare.sh"]
    assert "m4 /etc/mail/sendmail.mc > /etc/mail/sendmail.cf.new" in script
    assert "/usr/sbin/sendmail-mta -bi" in script  # newaliases
    assert "useradd -M -N -o -u 5000 -g 5000 -d /var/mail -s /usr/sbin/nologin keith" in script


def test_fields_sendmail_cannot_honour_are_named(ctx: RenderContext) -> None:
    assert unsupported(ctx.node) == []
    ctx.node.relay_from = ["10.20.9.0/26"]
    ctx.node.masquerade = Masquerade.model_validate({"as": "joe@isp.com", "header": False})
    problems = "\n".join(unsupported(ctx.node))
    assert "relay_from: 10.20.9.0/26" in problems
    assert "masquerade.as" in problems and "masquerade.header" in problems
    with pytest.raises(LabError, match="cannot do what its fields ask"):
        check_node("hub", ctx.node, "docker")


def test_the_users_own_mc_gets_the_labs_lines_before_its_mailers(ctx: RenderContext) -> None:
    own = HUB_MC.read_text()
    ctx = RenderContext(**{**ctx.__dict__, "config_files": {"hub.mc": own}})
    mc = user_mc(ctx)
    # the article's include is pointed at Debian's cf.m4; its own lines stay
    assert "include(`/usr/share/sendmail/cf/m4/cf.m4')" in mc and "../m4/cf.m4" not in mc
    assert "define(SMART_HOST,smtp:mail.uklinux.net)" in mc
    assert "MASQUERADE_AS(shofar.uklinux.net)dnl" in mc
    assert mc.index("confDOMAIN_NAME") < mc.index("MAILER(local)")
    assert mc.index("FEATURE(masquerade_envelope)") < mc.index("confDOMAIN_NAME")
    assert SendmailAdapter().render(ctx)["/etc/mail/sendmail.mc"] == mc


# the lines of a real sendmail 8.17.1.9 (Debian bookworm) as the lab's hub, as they reach
# /dev/log
RECEIVED = "<22>Dec  4 21:10:54 sendmail[67]: 6B4LAs7s000067: from=<eddy@shofar.org.uk>, size=205, class=0, nrcpts=1, msgid=<179641865446.10890@pc1.shofar.org.uk>, proto=ESMTPS, daemon=MTA, relay=pc1.shofar.org.uk [192.168.10.11]"
QUEUED = "<22>Dec  4 21:10:54 sendmail[67]: 6B4LAs7s000067: to=<paulmidgley@freeuk.com>, delay=00:00:00, mailer=smtp, pri=30205, dsn=4.4.3, stat=queued"
SENT = "<22>Dec  4 21:11:05 sendmail[80]: 6B4LAs7s000067: to=<paulmidgley@freeuk.com>, ctladdr=<eddy@shofar.org.uk> (5000/5000), delay=00:00:11, xdelay=00:00:00, mailer=smtp, pri=120205, relay=mail.uklinux.net. [10.20.0.25], dsn=2.0.0, stat=Sent (A4CAD0BC42 Message accepted for delivery)"
DONE = "<22>Dec  4 21:11:05 sendmail[80]: 6B4LAs7s000067: done; delay=00:00:11, ntries=2"
NOISE = "<22>Dec  4 21:11:05 sendmail[80]: STARTTLS=client, relay=mail.uklinux.net., version=TLSv1.3, verify=OK, cipher=TLS_AES_256_GCM_SHA384, bits=256/256"


def test_syslog_lines_become_the_labs_events() -> None:
    log = SendmailLog()
    queued = log.feed(RECEIVED, 0.0)
    assert [e.kind for e in queued] == ["queue.queued"]
    assert queued[0].data["id"] == "6B4LAs7s000067"
    assert queued[0].data["envelope_from"] == "eddy@shofar.org.uk"
    assert queued[0].data["client"] == "192.168.10.11"
    deferred = log.feed(QUEUED, 0.0)
    assert [e.kind for e in deferred] == ["delivery.result", "queue.deferred"]
    assert deferred[0].data["result"] == "deferred" and deferred[0].data["status"] == "4.4.3"
    assert log.feed(NOISE, 0.0) == []
    sent = log.feed(SENT, 0.0)
    assert [e.kind for e in sent] == ["delivery.result"]
    assert sent[0].data["result"] == "delivered"
    assert sent[0].data["server"] == "mail.uklinux.net"
    assert sent[0].data["relay"] == "mail.uklinux.net[10.20.0.25]:25"
    assert sent[0].data["remote_id"] == "A4CAD0BC42"
    assert [e.kind for e in log.feed(DONE, 0.0)] == ["queue.removed"]


def test_local_deliveries_through_an_alias_name_the_alias() -> None:
    log = SendmailLog()
    log.feed(RECEIVED.replace("6B4LAs7s000067", "6B4L7C1l000089"), 0.0)
    assert (
        log.feed(
            "<22>Dec  4 21:07:12 sendmail[89]: 6B4L7C1l000089: alias <NELUG-announce@shofar.org.uk> => eddy, keith",
            0.0,
        )
        == []
    )
    events = log.feed(
        "<22>Dec  4 21:07:45 sendmail[153]: 6B4L7C1l000089: to=keith, ctladdr=<eddy@shofar.org.uk> (5000/5000), delay=00:00:33, xdelay=00:00:00, mailer=local, pri=180457, dsn=2.0.0, stat=Sent",
        0.0,
    )
    assert [e.kind for e in events] == ["mailbox.delivered"]
    data = events[0].data
    assert data["user"] == "keith" and data["rcpt"] == "NELUG-announce@shofar.org.uk"
    assert data["address"] == "keith@shofar.org.uk" and data["key"] == "6B4L7C1l000089"
    direct = log.feed(
        "<22>Dec  4 21:07:45 sendmail[153]: 6B4L7C1l000090: to=<eddy@shofar.org.uk>, delay=00:00:33, xdelay=00:00:01, mailer=local, pri=121481, dsn=2.0.0, stat=Sent",
        0.0,
    )
    assert direct[0].data["rcpt"] == "eddy@shofar.org.uk" and direct[0].data["user"] == "eddy"
    refused = log.feed(
        "<22>Dec  4 21:17:00 sendmail[70]: 6B4LH0mZ000071: <nosuchuser@shofar.org.uk>... User unknown",
        0.0,
    )
    assert [e.kind for e in refused] == ["policy.reject"]
    assert refused[0].data["stage"] == "rcpt" and refused[0].data["reply"].startswith("550 5.1.1")


def test_a_refused_recipient_bounces_with_a_dsn() -> None:
    log = SendmailLog()
    log.feed(RECEIVED, 0.0)
    failed = log.feed(
        "<22>Dec  4 21:07:12 sendmail[90]: 6B4LAs7s000067: to=<paul@freeuk.com>, ctladdr=<eddy@shofar.org.uk> (5000/5000), delay=00:00:00, xdelay=00:00:00, mailer=smtp, pri=90457, relay=[mail.uklinux.net], dsn=5.1.2, stat=Host unknown (Name server: [mail.uklinux.net]: host not found)",
        0.0,
    )
    assert [e.kind for e in failed] == ["delivery.result", "queue.bounced"]
    assert failed[0].data["status"] == "5.1.2"
    dsn = log.feed(
        "<22>Dec  4 21:07:12 sendmail[90]: 6B4LAs7s000067: 6B4L7C1l000090: DSN: Host unknown (Name server: [mail.uklinux.net]: host not found)",
        0.0,
    )
    assert [e.kind for e in dsn] == ["dsn.sent"]
    assert dsn[0].data["id"] == "6B4L7C1l000090" and dsn[0].data["original_id"] == "6B4LAs7s000067"
    assert dsn[0].data["action"] == "failed" and dsn[0].data["recipients"] == ["paul@freeuk.com"]
    assert dsn[0].data["to"] == "eddy@shofar.org.uk" and dsn[0].data["status"] == ["5.1.2"]


QF = """V8
T1796418654
K1796418665
N2
P120205
I253/1/1234
MDeferred: Connection refused by mail.uklinux.net.
Fbs
$_pc1.shofar.org.uk [192.168.10.11]
$rESMTP
Seddy@shofar.org.uk
rRFC822; paulmidgley@freeuk.com
RPFD:paulmidgley@freeuk.com
H?P?Return-Path: <g>
H??Subject: via sendmail
.
"""


def test_a_delay_warning_is_a_dsn_about_the_deferred_recipients() -> None:
    log = SendmailLog()
    log.feed(RECEIVED, 0.0)
    log.feed(
        "<22>Dec  4 21:19:16 sendmail[110]: 6B4LAs7s000067: to=<paulmidgley@freeuk.com>, ctladdr=<eddy@shofar.org.uk> (5000/5000), delay=00:30:00, xdelay=00:00:00, mailer=smtp, pri=300203, relay=mail.uklinux.net. [10.20.0.25], dsn=4.4.1, stat=Deferred: Name server: mail.uklinux.net.: host name lookup failure",
        0.0,
    )
    warning = log.feed(
        "<22>Dec  4 21:19:16 sendmail[110]: 6B4LAs7s000067: 6B4LnFn0000110: sender notify: Warning: could not send message for past 30 minutes",
        0.0,
    )
    assert [e.kind for e in warning] == ["dsn.sent"]
    assert warning[0].data["action"] == "delayed" and warning[0].data["id"] == "6B4LnFn0000110"
    assert warning[0].data["recipients"] == ["paulmidgley@freeuk.com"]
    assert warning[0].data["status"] == ["4.4.1"]
    assert (
        log.feed(
            "<22>Dec  4 21:19:16 sendmail[110]: 6B4LAs7s000067: 6B4LnFn0000111: postmaster notify: User unknown",
            0.0,
        )
        == []
    )


def test_qf_files_are_the_queue_listing_and_the_due_times() -> None:
    output = f"{QF_MARK}6B4LAs7s000067\n{QF}"
    schedule = {"intervals": [600.0, 1200.0], "warn_after": 1800.0, "give_up_after": 3600.0}
    [entry] = parse_queue(output, SendmailLog(), schedule)
    assert entry["id"] == "6B4LAs7s000067"
    assert entry["envelope_from"] == "eddy@shofar.org.uk"
    assert entry["recipients"] == ["paulmidgley@freeuk.com"]
    assert entry["attempts"] == 2 and entry["received"] == 1796418654.0
    # the second interval after the second try
    assert entry["next_attempt"] == 1796418665.0 + 1200.0
    assert entry["last_reply"] == "Connection refused by mail.uklinux.net."
    assert due_times(output, schedule) == [
        1796418665.0 + 1200.0,
        1796418654.0 + 1800.0,  # the warning (not sent yet: no w flag)
        1796418654.0 + 3600.0,  # the return
    ]
    warned = output.replace("\nFbs\n", "\nFbsw\n")
    assert due_times(warned, schedule) == [1796418665.0 + 1200.0, 1796418654.0 + 3600.0]
    assert due_times("", schedule) == []


def test_mail_locals_mbox_is_the_mailbox_listing(tmp_path: Path) -> None:
    box = tmp_path / "keith"
    box.write_text(
        "From root Fri Dec  4 21:07:45 2026\n"
        "Return-Path: <eddy@shofar.uklinux.net>\n"
        "Received: from moriah.shofar.org.uk (localhost [127.0.0.1])\n"
        "\tby moriah.shofar.org.uk (8.17.1.9/8.17.1.9/Debian-2+deb12u2) with ESMTP id 6B4L7C1l000089;\n"
        "\tFri, 4 Dec 2026 21:07:12 GMT\n"
        "Subject: hi\n"
        "\n"
        "one\n"
        "\n"
        "From root Fri Dec  4 21:08:45 2026\n"
        "Return-Path: <>\n"
        "Received: from localhost (localhost)\n"
        "\tby moriah.shofar.org.uk (8.17.1.9/8.17.1.9/Debian-2+deb12u2) id 6B4L7C1l000090;\n"
        "Subject: Returned mail\n"
        "\n"
        "two\n"
    )
    found = mbox_messages(str(box))
    assert [m["id"] for m in found] == ["6B4L7C1l000089", "6B4L7C1l000090"]
    assert [m["envelope_from"] for m in found] == ["eddy@shofar.uklinux.net", ""]
    assert "Subject: hi" in found[0]["raw"] and not found[0]["raw"].startswith("From ")


def test_lab_time_reaches_sendmail_through_faketimerc_and_the_queue_runs() -> None:
    adapter = SendmailAdapter()
    env = adapter.environment("/run/maillab/hub.faketime")
    assert env["LD_PRELOAD"] == "libfaketime.so.1"  # the setuid copy, by its bare name
    start = " ".join(adapter.start_command())
    assert 'ln -sf "$FAKETIME_TIMESTAMP_FILE" /etc/faketimerc' in start
    assert "exec /usr/sbin/sendmail-mta -bD -q30m" in start
    run = adapter.run_queue_command()
    assert run[0] == "env" and "FAKETIME_TIMESTAMP_FILE=/run/maillab/hub.faketime" in run
    assert run[-2:] == ["/usr/sbin/sendmail-mta", "-q"]
    assert adapter.retry_command("6B4LAs7s000067")[-1] == "-qI6B4LAs7s000067"
    assert adapter.syslog_path() == "/dev/log"
    assert Retry().intervals == [1800.0]


def test_a_transaction_without_a_recipient_queues_nothing() -> None:
    """Every RCPT refused, then QUIT: sendmail still logs `from=<>, size=0, nrcpts=0` for
    the transaction; no message was queued, so no queue.queued event."""
    line = (
        "<22>Dec  4 21:27:20 sendmail[74]: 6B4LlKMa000074: from=<>, size=0, class=0,"
        " nrcpts=0, proto=ESMTP, daemon=MTA, relay=stranger.lab.test [10.20.255.254]"
    )
    assert SendmailLog().feed(line, 0.0) == []


def test_a_nullclient_mc_gets_no_alias_database(ctx: RenderContext) -> None:
    """seed nelug's LAN PCs: FEATURE(nullclient,moriah) has no local mailer, and
    `newaliases` would refuse every alias ("cannot alias non-local names")."""
    from lab.software.sendmail import nullclient, prepare_script

    pc = (ROOT / "topologies" / "nelug-sendmail" / "pc.mc").read_text()
    client = RenderContext(**{**ctx.__dict__, "config_files": {"pc.mc": pc}})
    assert nullclient(client)
    script = prepare_script(client)
    assert "m4 /etc/mail/sendmail.mc > /etc/mail/sendmail.cf.new" in script
    assert "-bi" not in script
    hub = RenderContext(**{**ctx.__dict__, "config_files": {"hub.mc": HUB_MC.read_text()}})
    assert not nullclient(hub)
    assert "/usr/sbin/sendmail-mta -bi" in prepare_script(hub)
    assert "FEATURE(nullclient,moriah)" in user_mc(client)
