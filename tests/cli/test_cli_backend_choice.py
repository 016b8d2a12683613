"""`maillab up --backend`: a topology that names real software (postfix, ...) needs the
Docker backend. `auto` chooses Docker for it and says so, and is an error when no engine
answers; the in-process backend refuses it, naming the node and the software."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.cli.running import choose_backend
from lab.errors import LabError
from lab.topology import load_text

WORLD = """\
name: real
networks:
  internet: {subnet: 10.20.0.0/16}
nodes:
  mx:
    role: mta
    networks: [internet]
SOFTWARE
  pc: {role: client, networks: [internet], submit_to: mx}
"""


def world(software: str = "") -> str:
    return WORLD.replace("SOFTWARE\n", software)


class FakeClient:
    def __init__(self, answers: bool):
        self.answers = answers

    def ping(self) -> bool:
        if not self.answers:
            raise ConnectionError("no engine here")
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in docker module whose engine answers when `state.answers` is true."""
    state = types.SimpleNamespace(answers=False)
    fake = types.ModuleType("docker")
    fake.from_env = lambda **_: FakeClient(state.answers)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "docker", fake)
    return state


def test_auto_without_engine_runs_a_builtin_topology_in_process(
    engine: types.SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = load_text(world(), "t.yaml").model
    assert choose_backend("auto", topology) == "inprocess"
    assert capsys.readouterr().err == (
        "backend: inprocess (no Docker engine answers: ConnectionError)\n"
    )


def test_auto_with_engine_runs_a_builtin_topology_on_docker(
    engine: types.SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.answers = True
    assert choose_backend("auto", load_text(world(), "t.yaml").model) == "docker"
    assert capsys.readouterr().err.startswith("backend: docker (a Docker engine answers;")


def test_auto_chooses_docker_for_real_software_and_says_why(
    engine: types.SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.answers = True
    topology = load_text(world("    software: postfix\n"), "t.yaml").model
    assert choose_backend("auto", topology) == "docker"
    assert capsys.readouterr().err == (
        "backend: docker (the topology needs real hosts: mx runs postfix (smtp))\n"
    )


def test_auto_without_engine_for_real_software_is_an_error(
    engine: types.SimpleNamespace,
) -> None:
    topology = load_text(world("    software: postfix\n"), "t.yaml").model
    with pytest.raises(LabError) as info:
        choose_backend("auto", topology)
    assert str(info.value) == (
        "this topology needs the Docker backend (mx runs postfix (smtp)), but no Docker engine"
        " answers (ConnectionError); start Docker, or use software: builtin to run it in this"
        " process"
    )


def test_auto_refuses_software_docker_does_not_run_yet(engine: types.SimpleNamespace) -> None:
    engine.answers = True
    topology = load_text(world("    software: sendmail\n"), "t.yaml").model
    with pytest.raises(
        LabError, match=r"^node 'mx': smtp software 'sendmail' .* not available yet"
    ):
        choose_backend("auto", topology)


def test_an_explicit_backend_is_kept(engine: types.SimpleNamespace) -> None:
    topology = load_text(world("    software: postfix\n"), "t.yaml").model
    assert choose_backend("docker", topology) == "docker"
    assert choose_backend("inprocess", load_text(world(), "t.yaml").model) == "inprocess"


def up(tmp_path: Path, text: str, *args: str) -> tuple[int, str]:
    path = tmp_path / "real.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(
        main, ["up", str(path), *args], env={"MAILLAB_HOME": str(tmp_path / "home")}
    )
    return result.exit_code, result.stderr


def test_up_in_process_refuses_real_software(tmp_path: Path) -> None:
    code, err = up(tmp_path, world("    software: postfix\n"), "--backend", "inprocess")
    assert code == 1
    assert err == (
        "node 'mx': smtp software 'postfix' (Postfix, in a container (Docker backend)) does not"
        " run on the inprocess backend, which runs the built-in software only; use --backend"
        " docker (or --backend auto)\n"
    )


def test_up_in_process_refuses_real_software_of_any_service(tmp_path: Path) -> None:
    text = world("    software: postfix\n").replace(
        "  pc: {role: client",
        "  isp:\n    role: isp\n    networks: [internet]\n    mailboxes: {home: {password: pw}}\n"
        "    software: {pop3: dovecot}\n  pc: {role: client",
    )
    code, err = up(tmp_path, text)
    assert code == 1
    assert [line.split(" (")[0] for line in err.splitlines()] == [
        "node 'mx': smtp software 'postfix'",
        "node 'isp': pop3 software 'dovecot'",
    ]
    assert all(
        line.endswith("use --backend docker (or --backend auto)") for line in err.splitlines()
    )


def test_up_auto_without_engine_for_real_software_fails_before_anything(
    tmp_path: Path, engine: types.SimpleNamespace
) -> None:
    code, err = up(tmp_path, world("    software: postfix\n"), "--backend", "auto")
    assert code == 1
    assert err.startswith("this topology needs the Docker backend (mx runs postfix (smtp))")
    assert not (tmp_path / "home" / "labs").exists() or not any(
        (tmp_path / "home" / "labs").iterdir()
    )
