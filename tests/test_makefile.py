"""What a newcomer meets first: `make help` and the package metadata."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_help(*variables: str) -> str:
    if shutil.which("make") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true, and the CI machine must have make")
        pytest.skip("no make on PATH")
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "help", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_make_help_shows_values_not_variables() -> None:
    text = make_help()
    assert "$(" not in text
    assert "make lab-up        Bring up topologies/home-dialup.yaml (TOPOLOGY=FILE," in text
    chosen = make_help("TOPOLOGY=topologies/mx-routing.yaml")
    assert "Bring up topologies/mx-routing.yaml" in chosen


def test_make_help_names_only_real_options() -> None:
    """`make lab-up` has no -d: lab-down's help points at `maillab up -d`."""
    [lab_down] = [line for line in make_help().splitlines() if "make lab-down" in line]
    assert "lab-up -d" not in lab_down
    assert "`maillab up -d`" in lab_down


def test_make_fuzz_runs_the_fuzz_tests_with_the_long_profile() -> None:
    assert "make fuzz" in make_help()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    [recipe] = [
        line for line in makefile.splitlines() if line.startswith("\t") and "-m fuzz" in line
    ]
    assert "MAILLAB_HYPOTHESIS_PROFILE=fuzz" in recipe


def test_license_is_an_spdx_expression() -> None:
    """A TOML table license (`{text = ...}`) makes setuptools warn on every install; the
    SPDX string form needs setuptools 77 or later at build time."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))
    assert "setuptools>=77" in pyproject["build-system"]["requires"]


def test_the_fuzz_marker_is_registered() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    markers = pyproject["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("fuzz:") for m in markers)
