"""lab.software: one entry per name of the topology's Software enum, and clear refusals:
the in-process backend runs the built-in software only, the Docker backend runs postfix
for smtp, dovecot for pop3 and fetchmail for fetch, and refuses the other real programs
as not available yet."""

from __future__ import annotations

import pytest

from lab.errors import LabError
from lab.software import (
    ON_DOCKER,
    SOFTWARE,
    check_node,
    check_supported,
    check_topology,
    needs_real_hosts,
    real_software,
)
from lab.topology import Service, load_text
from lab.topology.model import Software

WORLD = """\
name: real
networks:
  internet: {subnet: 10.20.0.0/16}
nodes:
  hub:
    role: hub
    networks: [internet]
    users: [eddy]
    fetch: [{server: isp, user: home, password: pw, to: eddy}]
HUB
  isp:
    role: isp
    networks: [internet]
    mailboxes: {home: {password: pw}}
ISP
"""


def world(hub: str = "", isp: str = "") -> str:
    return WORLD.replace("HUB\n", hub).replace("ISP\n", isp)


def test_the_table_has_the_enums_names_in_order() -> None:
    assert list(SOFTWARE) == [s.value for s in Software]
    assert all(SOFTWARE.values())


def test_the_builtin_software_runs_on_every_backend() -> None:
    for service in (Service.smtp, Service.pop3, Service.fetch):
        check_supported("hub", "builtin", "inprocess", service)
        check_supported("hub", "builtin", "docker", service)


def test_postfix_and_exim_are_accepted_for_smtp_on_docker() -> None:
    assert {Software.postfix, Software.exim, Software.dovecot, Software.fetchmail} == ON_DOCKER
    for software in ("postfix", "exim"):
        check_supported("hub", software, "docker")
        check_supported("hub", software, "docker", Service.smtp)


def test_dovecot_is_accepted_for_pop3_on_docker() -> None:
    check_supported("isp", "dovecot", "docker", Service.pop3)


def test_fetchmail_is_accepted_for_fetch_on_docker() -> None:
    check_supported("hub", "fetchmail", "docker", Service.fetch)


@pytest.mark.parametrize(
    ("software", "service", "backend", "message"),
    [
        pytest.param(
            "qmail",
            "smtp",
            "docker",
            "node 'mx': unknown software 'qmail'; expected one of: builtin, postfix, exim,"
            " sendmail, dovecot, fetchmail",
            id="unknown",
        ),
        pytest.param(
            "postfix",
            "pop3",
            "docker",
            "node 'mx': software 'postfix' does not run pop3; expected builtin or dovecot",
            id="not-for-that-service",
        ),
        pytest.param(
            "postfix",
            "smtp",
            "inprocess",
            "node 'mx': smtp software 'postfix' (Postfix, in a container (Docker backend)) does"
            " not run on the inprocess backend, which runs the built-in software only; use"
            " --backend docker (or --backend auto)",
            id="postfix-in-process",
        ),
        pytest.param(
            "dovecot",
            "pop3",
            "inprocess",
            "node 'mx': pop3 software 'dovecot' (Dovecot's POP3 server, in a container (Docker"
            " backend)) does not run on the inprocess backend, which runs the built-in software"
            " only; use --backend docker (or --backend auto)",
            id="dovecot-in-process",
        ),
        pytest.param(
            "sendmail",
            "smtp",
            "docker",
            "node 'mx': smtp software 'sendmail' (sendmail, in a container (Docker backend)) is"
            " not available yet in this version: the docker backend runs builtin, dovecot,"
            " exim, fetchmail and postfix only; use software: builtin for smtp",
            id="sendmail-on-docker",
        ),
        pytest.param(
            "fetchmail",
            "fetch",
            "inprocess",
            "node 'mx': fetch software 'fetchmail' (fetchmail, in a container (Docker backend))"
            " does not run on the inprocess backend, which runs the built-in software only; use"
            " --backend docker (or --backend auto)",
            id="fetchmail-in-process",
        ),
    ],
)
def test_other_software_is_refused_clearly(
    software: str, service: str, backend: str, message: str
) -> None:
    with pytest.raises(LabError) as info:
        check_supported("mx", software, backend, service)
    assert str(info.value) == message


def test_real_software_of_a_node_in_service_order() -> None:
    topology = load_text(
        world(hub="    software: {fetch: fetchmail, smtp: postfix}\n"), "t.yaml"
    ).model
    assert real_software(topology.nodes["hub"]) == {
        Service.smtp: Software.postfix,
        Service.fetch: Software.fetchmail,
    }
    assert real_software(topology.nodes["isp"]) == {}
    assert needs_real_hosts(topology) == ["hub runs postfix (smtp)", "hub runs fetchmail (fetch)"]


def test_check_node_checks_every_service() -> None:
    topology = load_text(
        world(hub="    software: postfix\n", isp="    software: {pop3: dovecot}\n"), "t.yaml"
    ).model
    check_node("hub", topology.nodes["hub"], "docker")
    check_node("isp", topology.nodes["isp"], "docker")
    fetching = load_text(world(hub="    software: {fetch: fetchmail}\n"), "t.yaml").model
    check_node("hub", fetching.nodes["hub"], "docker")
    with pytest.raises(LabError, match=r"^node 'hub': fetch software 'fetchmail' .* --backend"):
        check_node("hub", fetching.nodes["hub"], "inprocess")
    with pytest.raises(LabError, match=r"^node 'hub': smtp software 'postfix' .* --backend docker"):
        check_node("hub", topology.nodes["hub"], "inprocess")
    check_node("hub", load_text(world(), "t.yaml").model.nodes["hub"], "inprocess")


def test_check_topology_names_every_refusal() -> None:
    topology = load_text(
        world(hub="    software: postfix\n", isp="    software: {pop3: dovecot}\n"), "t.yaml"
    ).model
    with pytest.raises(LabError) as info:
        check_topology(topology, "inprocess")
    assert [line.split(" (")[0] for line in str(info.value).splitlines()] == [
        "node 'hub': smtp software 'postfix'",
        "node 'isp': pop3 software 'dovecot'",
    ]
    check_topology(topology, "docker")
    check_topology(load_text(world(), "t.yaml").model, "inprocess")
