"""A node's software, config and settings: what each spelling means, config paths made
absolute against the topology file, and problems with the files they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import Service, Topology, load, load_text
from lab.topology.model import Software
from lab.topology.software import OFFERED, SOFTWARE_SERVICES

WORLD = """\
name: real
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
nodes:
  hub:
    role: hub
    networks: {lan: 192.168.10.1, internet: 10.20.9.1}
    local_domains: [home.test]
    users: [eddy]
    fetch: [{server: isp, user: home, password: pw, to: eddy}]
HUB
  isp:
    role: isp
    networks: {internet: 10.20.0.25}
    local_domains: [isp.test]
    mailboxes: {home: {password: pw}}
ISP
"""


def world(hub: str = "", isp: str = "") -> str:
    return WORLD.replace("HUB\n", hub).replace("ISP\n", isp)


def write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "real.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_runs_every_service_by_default() -> None:
    node = load_text(world(), "t.yaml").model.nodes["hub"]
    assert [node.software_for(s) for s in Service] == [Software.builtin] * len(Service)
    assert node.config_for(Service.smtp) is None
    assert node.settings_for(Service.smtp) == {}


def test_one_name_is_the_smtp_software() -> None:
    node = load_text(world(hub="    software: postfix\n"), "t.yaml").model.nodes["hub"]
    assert node.software_for(Service.smtp) is Software.postfix
    assert node.software_for(Service.fetch) is Software.builtin
    assert node.software_for(Service.dns) is Software.builtin


def test_a_mapping_names_each_service() -> None:
    topology = load_text(
        world(
            hub="    software: {smtp: exim, fetch: fetchmail}\n",
            isp="    software: {pop3: dovecot}\n",
        ),
        "t.yaml",
    ).model
    hub, isp = topology.nodes["hub"], topology.nodes["isp"]
    assert hub.software_for(Service.smtp) is Software.exim
    assert hub.software_for(Service.fetch) is Software.fetchmail
    assert isp.software_for(Service.smtp) is Software.builtin
    assert isp.software_for(Service.pop3) is Software.dovecot


def test_every_software_runs_some_service_and_builtin_runs_all() -> None:
    assert all(Software.builtin in OFFERED[s] for s in Service)
    offered = {software for service in SOFTWARE_SERVICES for software in OFFERED[service]}
    assert offered == set(Software)


def test_settings_short_form_and_per_service() -> None:
    short = load_text(
        world(hub="    software: postfix\n    settings: {queue_run_delay: 5s, limit: 10}\n"),
        "t.yaml",
    ).model.nodes["hub"]
    assert short.settings_for(Service.smtp) == {"queue_run_delay": "5s", "limit": 10}
    per = load_text(
        world(
            isp="    software: {smtp: postfix, pop3: dovecot}\n"
            "    settings: {smtp: {a: 1.5}, pop3: {mail_debug: 'yes'}}\n"
        ),
        "t.yaml",
    ).model.nodes["isp"]
    assert per.settings_for(Service.smtp) == {"a": 1.5}
    assert per.settings_for(Service.pop3) == {"mail_debug": "yes"}
    assert per.settings_for(Service.fetch) == {}


def test_config_paths_are_relative_to_the_topology_file(tmp_path: Path) -> None:
    labs = tmp_path / "labs"
    (labs / "hub-postfix").mkdir(parents=True)
    (labs / "hub-postfix" / "main.cf").write_text("myhostname = hub.home.test\n")
    (labs / "conf").mkdir()
    (labs / "conf" / "fetchmailrc").write_text("poll isp\n")
    (labs / "dovecot.conf").write_text("protocols = pop3\n")
    path = write(
        labs,
        world(
            hub="    software: {smtp: postfix, fetch: fetchmail}\n"
            "    config: {smtp: hub-postfix, fetch: conf/../conf/fetchmailrc}\n",
            isp="    software: {pop3: dovecot}\n    config: {pop3: dovecot.conf}\n",
        ),
    )
    topology = load(path).model
    hub, isp = topology.nodes["hub"], topology.nodes["isp"]
    assert hub.config_for(Service.smtp) == labs / "hub-postfix"
    assert hub.config_for(Service.fetch) == labs / "conf" / "fetchmailrc"
    assert isp.config_for(Service.pop3) == labs / "dovecot.conf"
    assert labs.is_absolute()


def test_one_config_path_is_the_smtp_softwares(tmp_path: Path) -> None:
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "master.cf").write_text("smtp inet n - n - - smtpd\n")
    text = world(hub="    software: postfix\n    config: pf\n")
    node = load_text(text, "t.yaml", base=tmp_path).model.nodes["hub"]
    assert node.config_for(Service.smtp) == tmp_path / "pf"
    assert node.config_for(Service.pop3) is None


def test_a_missing_config_names_the_resolved_path(tmp_path: Path) -> None:
    path = write(tmp_path, world(hub="    software: postfix\n    config: hub-postfix/\n"))
    with pytest.raises(TopologyError) as info:
        load(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:13:13: nodes.hub.config: no such directory {tmp_path / 'hub-postfix'}"
        " (postfix takes a directory holding main.cf and/or master.cf)"
    ]


@pytest.mark.parametrize(
    ("node", "lines", "make", "message"),
    [
        pytest.param(
            "hub",
            "    software: postfix\n    config: main.cf\n",
            {"main.cf": "file"},
            "{d}/main.cf is not a directory; postfix takes a directory holding main.cf and/or"
            " master.cf",
            id="postfix-file",
        ),
        pytest.param(
            "hub",
            "    software: postfix\n    config: empty\n",
            {"empty": "dir"},
            "{d}/empty holds neither main.cf nor master.cf; postfix takes a directory holding"
            " main.cf and/or master.cf",
            id="postfix-empty-directory",
        ),
        pytest.param(
            "isp",
            "    software: {pop3: dovecot}\n    config: {pop3: dovecot}\n",
            {"dovecot": "dir"},
            "{d}/dovecot is a directory; dovecot takes a file such as dovecot.conf",
            id="dovecot-directory",
        ),
        pytest.param(
            "hub",
            "    software: {fetch: fetchmail}\n    config: {fetch: .fetchmailrc}\n",
            {},
            "no such file {d}/.fetchmailrc (fetchmail takes a file such as .fetchmailrc)",
            id="fetchmail-missing",
        ),
    ],
)
def test_config_of_the_wrong_kind(
    tmp_path: Path, node: str, lines: str, make: dict[str, str], message: str
) -> None:
    for name, kind in make.items():
        if kind == "dir":
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("")
    text = world(**{node: lines})
    with pytest.raises(TopologyError) as info:
        load_text(text, "t.yaml", base=tmp_path)
    assert [p.message for p in info.value.problems] == [message.format(d=tmp_path)]


def test_the_model_survives_a_json_round_trip(tmp_path: Path) -> None:
    """The Docker backend hands the model to its agents as JSON (provision.py); the agent
    validates it again, without the topology file's directory."""
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "main.cf").write_text("")
    text = world(
        hub="    software: {smtp: postfix, fetch: fetchmail}\n    config: pf\n"
        "    settings: {queue_run_delay: 5s}\n",
        isp="    software: {pop3: dovecot}\n    settings: {pop3: {mail_debug: 'yes'}}\n",
    )
    topology = load_text(text, "t.yaml", base=tmp_path).model
    data = topology.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = Topology.model_validate(data)
    for name in ("hub", "isp"):
        before, after = topology.nodes[name], again.nodes[name]
        for service in Service:
            assert after.software_for(service) is before.software_for(service)
            assert after.config_for(service) == before.config_for(service)
            assert after.settings_for(service) == before.settings_for(service)
    assert again.nodes["hub"].config_for(Service.smtp) == tmp_path / "pf"
