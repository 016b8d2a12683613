"""The pytest plugin: marker, fixture and option, used as a user would."""

from __future__ import annotations

import glob

import pytest

pytest_plugins = ["pytester"]


@pytest.mark.topology("home-dialup")
def test_lab_fixture_brings_up_the_marked_topology(lab, lab_backend):
    status = lab.status()
    assert status["name"] == "home-dialup"
    assert status["backend"] == lab_backend
    assert status["links"]["dialup"]["state"] == "down"
    assert set(status["nodes"]) >= {"hub", "isp", "pc1", "dns"}


@pytest.mark.topology("home-dialup")
def test_queued_while_down_then_flushed(lab):
    result = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    assert result.accepted, result.to_json()
    entry = lab.assert_queued(on="hub", to="paulmidgley@freeuk.com")
    assert entry["envelope_from"] == "eddy@shofar.org.uk"
    lab.link("dialup").up()
    message = lab.assert_delivered(
        "paulmidgley@freeuk.com", node="freeuk", envelope_from="eddy@shofar.uklinux.net"
    )
    assert message["From"] == "eddy@shofar.uklinux.net"
    assert lab.queue("hub") == []


def test_plugin_in_a_fresh_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's suite: the marker resolves topologies/NAME.yaml and the fixture runs it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))  # this tree's lab, not an installed one
    source = root / "topologies" / "lg45-envelope.yaml"
    pytester.mkdir("topologies")
    (pytester.path / "topologies" / "lg45-envelope.yaml").write_text(source.read_text())
    test_file = pytester.makepyfile(
        """
        import pytest

        @pytest.mark.topology("lg45-envelope")
        def test_bounce(lab):
            lab.send("pc", mail_from="joe@home", to=["friend@picky.org"])
            lab.assert_bounced(recipient="friend@picky.org", by="isp", status="5.1.8")

        def test_marker_missing(lab):
            pass
        """
    )
    # the file alone: the checks in topologies/*.yaml would be collected too
    result = pytester.runpytest_subprocess("--lab-backend", "inprocess", test_file.name)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*needs @pytest.mark.topology*"])


def test_plugin_fidelity_matrix_items(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lab-software: each check of a topology with a DUT is also CHECK[software]; a cell
    that does not apply is deselected and listed with its reason."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))  # this tree's lab, not an installed one
    source = root / "topologies"
    pytester.mkdir("topologies")
    for name in ("lg45-envelope-fixed", "office-postfix"):
        (pytester.path / "topologies" / f"{name}.yaml").write_text(
            (source / f"{name}.yaml").read_text()
        )
    (pytester.path / "topologies" / "office-postfix").mkdir()
    for item in (source / "office-postfix").iterdir():
        (pytester.path / "topologies" / "office-postfix" / item.name).write_bytes(item.read_bytes())
    result = pytester.runpytest_subprocess(
        "--lab-software", "builtin", "-m", "fidelity", "-p", "no:randomly", "topologies"
    )
    result.assert_outcomes(passed=3, deselected=6)
    result.stdout.fnmatch_lines(
        [
            "*fidelity matrix: cells that do not apply (deselected)*",
            "*office-postfix.yaml::*[[]builtin[]]: hub has its own postfix configuration*",
        ]
    )
    collected = pytester.runpytest_subprocess(
        "--lab-software", "all", "--collect-only", "-q", "topologies/lg45-envelope-fixed.yaml"
    )
    listed = collected.stdout.str().splitlines()
    for software in ("builtin", "postfix", "exim"):
        wanted = f"topologies/lg45-envelope-fixed.yaml::envelope-rewritten-delivered[{software}]"
        assert wanted in listed
    # sendmail masquerades as a domain only: the cell is listed as not applying, not run
    cell = "topologies/lg45-envelope-fixed.yaml::envelope-rewritten-delivered[sendmail]"
    assert cell not in listed
    collected.stdout.fnmatch_lines([f"{glob.escape(cell)}: *as a domain, not an address"])
