"""lab.software.dovecot without Docker: dovecot.conf and its passwd-files rendered from a
node's mailboxes, a user's own dovecot.conf taken in with the lab's settings after it,
and Dovecot's log lines (as Dovecot 2.3 wrote them in the dovecot image) read as the
built-in POP3 server's events."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lab.software.adapter import RenderContext
from lab.software.dovecot import (
    CONF,
    MAILDIRS,
    USER_CONF,
    USERS_APOP,
    USERS_PLAIN,
    DovecotAdapter,
    DovecotLog,
    owned_settings,
    passwd_files,
    render_conf,
)
from lab.software.registry import image_families, server_adapters
from lab.software.userconfig import config_file_text, node_config_files
from lab.topology import load, load_text
from lab.topology.model import Mailbox, Node, Service, Software
from lab.topology.software import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DIALUP = ROOT / "topologies" / "home-dialup-dovecot.yaml"


def context(node: Node | None = None, *, tls: bool = True) -> RenderContext:
    topology = load(DIALUP).model
    return RenderContext(
        name="isp",
        node=node or topology.nodes["isp"],
        topology=topology,
        hostname="mail.uklinux.net",
        addresses={"internet": "10.20.0.25"},
        mail_root="/var/lib/maillab/mail",
        tls_chain="/etc/maillab/tls/chain.pem" if tls else "",
        tls_ca="/etc/maillab/tls/ca.pem" if tls else "",
    )


def settings_of(text: str) -> dict[str, str]:
    """Top-level `key = value` lines (the last wins, as in Dovecot)."""
    found: dict[str, str] = {}
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("{"):
            depth += 1
        elif stripped == "}":
            depth -= 1
        elif depth == 0 and " = " in stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" = ")
            found[key] = value
    return found


def test_the_isps_pop3_is_dovecot_in_the_dovecot_image() -> None:
    topology = load(DIALUP).model
    for name in ("isp", "freeserve"):
        node = topology.nodes[name]
        assert node.software_for(Service.pop3) is Software.dovecot
        assert image_families(node) == ("dovecot",)
        adapters = server_adapters(node)
        assert list(adapters) == [Service.pop3]
        assert isinstance(adapters[Service.pop3], DovecotAdapter)
    # the hub's pop3 (none) and a builtin pop3 have no server adapter
    assert server_adapters(topology.nodes["hub"]) == {}
    plain = load(ROOT / "topologies" / "home-dialup.yaml").model
    assert server_adapters(plain.nodes["isp"]) == {}


def test_dovecot_conf_comes_from_the_node() -> None:
    conf = render_conf(context())
    params = settings_of(conf)
    assert params["protocols"] == "pop3"
    assert params["listen"] == "10.20.0.25, 127.0.0.1"
    assert params["mail_location"] == "maildir:/var/lib/maillab/mail/%u"
    assert params["auth_mechanisms"] == "plain apop"  # the box allows APOP
    assert params["disable_plaintext_auth"] == "no"
    assert params["auth_username_format"] == "%Lu"
    assert params["ssl"] == "yes"
    assert params["ssl_cert"] == params["ssl_key"] == "</etc/maillab/tls/chain.pem"
    assert params["log_path"] == params["info_log_path"] == "/dev/stderr"
    assert params["hostname"] == "mail.uklinux.net"
    assert params["pop3_uidl_format"] == "%f"  # UIDLs are the Maildir keys
    # the passdb of the mailboxes, a static userdb with the lab's mail uid
    assert f"args = scheme=PLAIN {USERS_APOP}" in conf
    assert USERS_PLAIN not in conf  # no mailbox refuses APOP
    assert "driver = static\n  args = uid=5000 gid=5000" in conf
    # port 110 only, the expunge log and the logout counters the reader knows
    assert "inet_listener pop3 {\n    port = 110" in conf
    assert "inet_listener pop3s {\n    port = 0" in conf
    assert "mail_plugins = $mail_plugins notify mail_log" in conf
    assert "mail_log_events = expunge" in conf
    assert "pop3_logout_format = top=%t/%p, retr=%r/%b, del=%d/%m, size=%s" in conf
    assert "!include" not in conf


def test_without_a_lab_ca_there_is_no_stls() -> None:
    params = owned_settings(context(tls=False))
    assert params["ssl"] == "no"
    assert "ssl_cert" not in params


def test_mailboxes_that_refuse_apop_are_limited_to_plain_logins() -> None:
    node = context().node.model_copy(
        update={
            "mailboxes": {
                "Shofar": Mailbox(password="s3cret", apop=True),
                "home": Mailbox(password="pw", apop=False),
                "odd": Mailbox(password="a:b c", apop=False),
            }
        }
    )
    apop, plain = passwd_files(context(node))
    # the login is matched in lower case and mapped back to the box's name (its Maildir)
    assert apop == "shofar:{PLAIN}s3cret::::::user=Shofar\n"
    encoded = base64.b64encode(b"a:b c").decode()
    assert plain == f"home:{{PLAIN}}pw::::::user=home\nodd:{{PLAIN.b64}}{encoded}::::::user=odd\n"
    conf = render_conf(context(node))
    assert f"mechanisms = plain login\n  args = scheme=PLAIN {USERS_PLAIN}" in conf
    only_plain = node.model_copy(update={"mailboxes": {"home": Mailbox(password="pw", apop=False)}})
    assert owned_settings(context(only_plain))["auth_mechanisms"] == "plain"
    assert USERS_APOP not in render_conf(context(only_plain))


def test_the_files_and_the_maildirs_made_before_the_mta_delivers() -> None:
    adapter = DovecotAdapter()
    files = adapter.render(context())
    assert set(files) == {CONF, USERS_APOP, USERS_PLAIN, MAILDIRS}
    script = files[MAILDIRS]
    assert "mkdir -p '/var/lib/maillab/mail/shofar/tmp'" in script
    assert "chown -R 5000:5000 '/var/lib/maillab/mail/shofar'" in script
    assert adapter.prepare_commands(context()) == [["sh", MAILDIRS]]
    assert adapter.start_command() == ["dovecot", "-F", "-c", CONF]
    assert adapter.stop_command() is None
    assert (adapter.port, adapter.greeting) == (110, b"+OK")


def test_a_users_own_conf_is_included_between_the_mailboxes_and_what_the_lab_owns() -> None:
    own = "protocols = imap pop3\n!include conf.d/*.conf\nmail_location = mbox:~/mail\n"
    adapter = DovecotAdapter(own)
    files = adapter.render(context())
    assert files[USER_CONF] == own
    conf = files[CONF]
    include = conf.index(f"!include {USER_CONF}")
    assert conf.index("passdb {") < include < conf.index("protocols = pop3")
    assert conf.index("userdb {") < include
    assert include < conf.index("mail_location = maildir:")
    # the user's file already loads mail_log: it is not loaded twice
    with_log = DovecotAdapter("mail_plugins = $mail_plugins notify mail_log\n")
    assert "mail_plugins = $mail_plugins\n" in with_log.render(context())[CONF]


def test_settings_pass_through_last() -> None:
    node = context().node.model_copy(
        update={"settings": ServiceSettings(pop3={"auth_failure_delay": "0", "mail_debug": "yes"})}
    )
    conf = render_conf(context(node), "login_greeting = hi\n")
    assert conf.rstrip().endswith("auth_failure_delay = 0\nmail_debug = yes")
    assert settings_of(conf)["auth_failure_delay"] == "0"


def test_user_configs_are_read_where_the_topology_is(tmp_path: Path) -> None:
    (tmp_path / "isp.conf").write_text("login_greeting = Welcome\n")
    box = "    mailboxes:\n      shofar:"
    text = DIALUP.read_text().replace(box, "    config: {pop3: isp.conf}\n" + box)
    (tmp_path / "t.yaml").write_text(text)
    topology = load(tmp_path / "t.yaml").model
    plan = node_config_files(topology.nodes["isp"])
    assert plan == {"pop3": {"isp.conf": "login_greeting = Welcome\n"}}
    assert node_config_files(topology.nodes["freeserve"]) == {}
    configs = {"pop3": config_file_text(plan, Service.pop3)}
    adapter = server_adapters(topology.nodes["isp"], configs)[Service.pop3]
    assert isinstance(adapter, DovecotAdapter)
    assert adapter.user_config == "login_greeting = Welcome\n"


# ---------------------------------------------------------------------------------------
# the log

LINES = {
    "start": "Dec 04 20:33:35 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for pop3"
    " (core dumps disabled)",
    "login_tls": "Dec 04 20:33:37 pop3-login: Info: Login: user=<shofar>, method=PLAIN,"
    " rip=10.20.9.201, lip=10.20.0.25, mpid=24, TLS, session=<3eBoytRhCsl/AAAB>",
    "login_apop": "Dec 04 20:33:37 pop3-login: Info: Login: user=<Shofar>, method=APOP,"
    " rip=10.20.1.25, lip=10.20.0.25, mpid=26, session=<DZRpytRhFsl/AAAB>",
    "expunge": "Dec 04 20:33:37 pop3(shofar)<24><3eBoytRhCsl/AAAB>: Info: expunge: box=INBOX,"
    " uid=1, msgid=<a@b>, size=36",
    "logout": "Dec 04 20:33:37 pop3(shofar)<24><3eBoytRhCsl/AAAB>: Info: Disconnected: Logged"
    " out top=1/21, retr=1/55, del=1/2, size=62",
    "failed": "Dec 04 20:16:50 pop3-login: Info: Disconnected: Connection closed (auth failed,"
    " 1 attempts in 2 secs): user=<shofar>, method=PLAIN, rip=10.20.1.25, lip=10.20.0.25,"
    " session=<10feudRhps5/AAAB>",
    "mismatch": "Dec 04 20:16:50 auth: Info: passwd-file(shofar,10.20.1.25,<10feudRhps5/AAAB>):"
    " Password mismatch",
    "probe": "Dec 04 20:16:50 pop3-login: Info: Disconnected (no auth attempts in 0 secs):"
    " user=<>, rip=127.0.0.1, lip=127.0.0.1, secured, session=<x>",
    "dropped": "Dec 04 20:16:50 pop3(shofar)<20><x>: Info: Disconnected: Connection closed"
    " top=0/0, retr=0/0, del=0/1, size=22",
    "error": "Dec 04 20:16:50 pop3(Shofar)<20><x>: Error: Invalid settings in userdb: userdb"
    " returned 0 as uid",
}


def feed(line: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.kind, e.data) for e in DovecotLog().feed(LINES[line], 0.0)]


def test_logins_are_pop3_login_events() -> None:
    assert feed("login_tls") == [
        ("pop3.stls", {"peer": "10.20.9.201"}),
        (
            "pop3.login",
            {
                "peer": "10.20.9.201",
                "local": "10.20.0.25",
                "user": "shofar",
                "ok": True,
                "mechanism": "USER",
                "tls": True,
            },
        ),
    ]
    [(kind, data)] = feed("login_apop")
    assert kind == "pop3.login" and data["mechanism"] == "APOP" and data["tls"] is False
    [(kind, data)] = feed("failed")
    assert kind == "pop3.login"
    assert data == {
        "peer": "10.20.1.25",
        "local": "10.20.0.25",
        "user": "shofar",
        "ok": False,
        "mechanism": "USER",
        "reason": "authentication failed",
        "attempts": 1,
    }


def test_deletes_and_logouts() -> None:
    assert feed("expunge") == [
        ("pop3.dele", {"user": "shofar", "imap_uid": 1, "message_id": "<a@b>", "size": 36})
    ]
    assert feed("logout") == [
        (
            "pop3.quit",
            {
                "user": "shofar",
                "deleted": 1,
                "retrieved": 1,
                "retrieved_bytes": 55,
                "top": 1,
                "messages": 2,
            },
        )
    ]
    [(kind, data)] = feed("dropped")
    assert kind == "pop3.disconnect"
    assert data["reason"] == "Connection closed" and data["deleted"] == 0


@pytest.mark.parametrize("line", ["start", "mismatch", "probe"])
def test_other_lines_make_no_events(line: str) -> None:
    assert feed(line) == []


def test_errors_are_daemon_errors() -> None:
    assert feed("error") == [
        (
            "daemon.error",
            {
                "software": "dovecot",
                "process": "pop3(Shofar)",
                "level": "error",
                "error": "Invalid settings in userdb: userdb returned 0 as uid",
            },
        )
    ]


def test_in_process_a_dovecot_node_is_refused_and_its_checks_are_not_collected() -> None:
    from lab.pytest_plugin import runs_on

    topology = load(DIALUP).model
    assert not runs_on(topology, "inprocess")
    assert runs_on(topology, "docker")
    assert load_text(DIALUP.read_text(), "t.yaml").model.name == "home-dialup-dovecot"
