"""The topology commands of `maillab`: validate, schema, graph, and --help everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"
HOME_DIALUP = TOPOLOGIES / "home-dialup.yaml"
TOPOLOGY_FILES = sorted(TOPOLOGIES.glob("*.yaml"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BAD = """\
name: broken
networks:
  lan: {subnet: 192.168.10.0/24}
nodes:
  hub: {role: mta, networks: {lan: 192.168.10.1}, smarthst: isp}
"""
BAD_LINE = "bad.yaml:5:51: nodes.hub.smarthst: unknown field 'smarthst'; did you mean 'smarthost'?"


def require_dot() -> None:
    """Graphviz must be there in CI (a skip would hide a broken setup); elsewhere it may not."""
    if shutil.which("dot"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            "Graphviz `dot` is not on PATH, and CI=true: the CI machine must have it"
            " (scripts/install-tools.sh installs the graphviz package)"
        )
    pytest.skip("Graphviz `dot` is not on PATH; install the graphviz package to run this test")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# validate


def test_validate_ok(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", str(HOME_DIALUP)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{HOME_DIALUP}: ok (home-dialup: 8 nodes, 2 networks, 1 links, 9 checks)\n"
    )
    assert result.stderr == ""


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_validate_every_shipped_topology(runner: CliRunner, path: Path) -> None:
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok (")


def test_validate_bad_file(
    runner: CliRunner, bad_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bad_file.parent)
    result = runner.invoke(main, ["validate", "bad.yaml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(BAD_LINE)
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_validate_several_files_one_bad(
    runner: CliRunner, bad_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bad_file.parent)
    result = runner.invoke(main, ["validate", str(HOME_DIALUP), "bad.yaml"])
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{HOME_DIALUP}: ok (home-dialup: ")
    assert result.stderr.startswith(BAD_LINE)
    assert "Traceback" not in result.output


def test_validate_bad_file_first_still_checks_the_rest(
    runner: CliRunner, bad_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bad_file.parent)
    result = runner.invoke(main, ["validate", "bad.yaml", str(HOME_DIALUP)])
    assert result.exit_code == 2
    assert f"{HOME_DIALUP}: ok" in result.stdout
    assert result.stderr.startswith(BAD_LINE)


def test_validate_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(main, ["validate", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert "no such file" in result.stderr
    assert "Traceback" not in result.output


def test_validate_json(runner: CliRunner, bad_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bad_file.parent)
    result = runner.invoke(main, ["validate", "--json", str(HOME_DIALUP), "bad.yaml"])
    assert result.exit_code == 2
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report == [
        {
            "file": str(HOME_DIALUP),
            "ok": True,
            "name": "home-dialup",
            "nodes": 8,
            "networks": 2,
            "links": 1,
            "checks": 9,
            "warnings": [],
        },
        {
            "file": "bad.yaml",
            "ok": False,
            "problems": [
                {
                    "file": "bad.yaml",
                    "line": 5,
                    "column": 51,
                    "path": "nodes.hub.smarthst",
                    "message": report[1]["problems"][0]["message"],
                }
            ],
            "warnings": [],
        },
    ]
    assert report[1]["problems"][0]["message"].startswith("unknown field 'smarthst'")


def test_validate_json_all_ok(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", "--json", str(HOME_DIALUP)])
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)
    assert entry["ok"] is True
    assert set(entry) == {"file", "ok", "name", "nodes", "networks", "links", "checks", "warnings"}
    assert entry["warnings"] == []


def test_validate_needs_a_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


# ---------------------------------------------------------------------------------------
# --help


def test_main_help(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    for name in main.commands:
        assert name in result.stdout


@pytest.mark.parametrize("command", sorted(main.commands))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(runner: CliRunner, command: str, flag: str) -> None:
    result = runner.invoke(main, [command, flag])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert f" {command} " in result.stdout.splitlines()[0]
    assert result.stderr == ""


def test_python_dash_m_lab_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    for name in ("validate", "schema", "graph"):
        assert name in result.stdout


# ---------------------------------------------------------------------------------------
# graph


def names_and_states(path: Path) -> list[str]:
    topology = load(path).model
    words = [*topology.nodes, *topology.networks]
    words += [f"{name}: {link.state}" for name, link in topology.links.items()]
    return words


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_graph_text_names_everything(runner: CliRunner, path: Path, fmt: str) -> None:
    result = runner.invoke(main, ["graph", str(path), "--format", fmt])
    assert result.exit_code == 0, result.output
    for word in names_and_states(path):
        assert word in result.stdout, f"{word!r} missing from the {fmt} graph"


def test_graph_mermaid_shape(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", str(HOME_DIALUP)])
    assert result.exit_code == 0
    assert result.stdout.startswith("flowchart LR\n")
    assert "dialup: down" in result.stdout
    assert "192.168.10.0/24" in result.stdout


def test_graph_dot_shape(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "--format", "dot"])
    assert result.exit_code == 0
    assert result.stdout.startswith('graph "home-dialup" {\n')
    assert result.stdout.rstrip().endswith("}")
    assert "dialup: down" in result.stdout
    assert "style=dashed" in result.stdout


def test_graph_text_to_file(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "lab.mmd"
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "-o", str(target)])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert target.read_text(encoding="utf-8").startswith("flowchart LR")


def test_graph_png(runner: CliRunner, tmp_path: Path) -> None:
    require_dot()
    target = tmp_path / "lab.png"
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "--format", "png", "-o", str(target)])
    assert result.exit_code == 0, result.output
    data = target.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000
    assert f"wrote {target}" in result.stderr


def test_graph_svg(runner: CliRunner, tmp_path: Path) -> None:
    require_dot()
    target = tmp_path / "lab.svg"
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "--format", "svg", "-o", str(target)])
    assert result.exit_code == 0, result.output
    text = target.read_text(encoding="utf-8")
    assert "<svg" in text
    assert text.rstrip().endswith("</svg>")
    assert "moriah.shofar.org.uk" in text


def test_graph_svg_default_name(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_dot()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "--format", "svg"])
    assert result.exit_code == 0, result.output
    assert "<svg" in (tmp_path / "home-dialup.svg").read_text(encoding="utf-8")


def test_graph_without_graphviz(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    target = tmp_path / "lab.png"
    result = runner.invoke(main, ["graph", str(HOME_DIALUP), "--format", "png", "-o", str(target)])
    assert result.exit_code == 1
    assert "Graphviz is not installed" in result.stderr
    assert "Traceback" not in result.output
    assert not target.exists()


def test_graph_bad_file(runner: CliRunner, bad_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bad_file.parent)
    result = runner.invoke(main, ["graph", "bad.yaml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(BAD_LINE)


def test_require_dot_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_dot()


def test_require_dot_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="graphviz"):
        require_dot()
