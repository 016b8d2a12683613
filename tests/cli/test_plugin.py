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


def test_lab_seed_reaches_the_lab_and_a_failure_prints_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lab-seed is the seed of the `lab` fixture's lab and of the topology checks; a
    failing test or check says the seed it ran with."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))  # this tree's lab, not an installed one
    pytester.mkdir("topologies")
    source = (root / "topologies" / "isp-rate-limit.yaml").read_text()
    broken = source.replace("within: 6m}}", "within: 1m}}")  # the retry takes 5m: fails
    (pytester.path / "topologies" / "isp-rate-limit.yaml").write_text(broken)
    test_file = pytester.makepyfile(
        """
        import pytest

        @pytest.mark.topology("isp-rate-limit")
        def test_seeded(lab, lab_seed):
            assert lab_seed == 77 and lab.seed == 77
            assert lab.status()["seed"] == 77

        @pytest.mark.topology("isp-rate-limit")
        def test_fails(lab):
            assert False
        """
    )
    result = pytester.runpytest_subprocess("--lab-seed", "77", test_file.name, "topologies")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*seed 77: `pytest --lab-seed 77` replays this run*"])
    result.stdout.fnmatch_lines(["*seed 77: `maillab check --seed 77` replays this run*"])


def test_a_param_for_one_backend_is_collected_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parameter marked lab_backend("docker") (a topology with a real MTA) is not also
    run as the in-process copy, which would run on Docker as well: the same test twice."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize(
            "what", ["plain", pytest.param("real", marks=pytest.mark.lab_backend("docker"))]
        )
        def test_one(lab_backend, what):
            pass
        """
    )
    both = pytester.runpytest_subprocess(
        "--lab-backend", "inprocess,docker", "--collect-only", "-q"
    )
    both.stdout.fnmatch_lines(["*3/4 tests collected (1 deselected)*"])
    ids = [line for line in both.outlines if "::test_one[" in line]
    assert sorted(i.split("[")[1] for i in ids) == [
        "docker-plain]",
        "docker-real]",
        "inprocess-plain]",
    ]
    # asked for in process only, the Docker-only case still runs (on Docker)
    alone = pytester.runpytest_subprocess("--lab-backend", "inprocess", "--collect-only", "-q")
    assert any("test_one[inprocess-real]" in line for line in alone.outlines), alone.outlines
