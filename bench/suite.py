"""The test suite's time: plain `pytest` in process (run here, on two workers, its
JUnit report read back) and `make test` (read from the JUnit reports it leaves in
build/test-reports/), with the slowest 20 tests (python -m bench.suite [--no-run]).

Targets: in process <= 3 minutes; `make test` (both backends, the fidelity matrix)
<= 15 minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "build" / "test-reports"  # where `make test` leaves its JUnit reports
TARGETS = {"inprocess_s": 180.0, "make_test_s": 900.0}
SLOWEST = 20


def read_junit(path: Path) -> dict[str, Any]:
    """A JUnit report's totals and its test cases, slowest first."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases = []
    for suite in suites:
        for case in suite.iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            cases.append(
                {"name": name, "seconds": float(case.get("time") or 0), "outcome": outcome}
            )
    cases.sort(key=lambda c: -c["seconds"])
    return {
        "file": str(path),
        "seconds": sum(float(s.get("time") or 0) for s in suites),
        "tests": len(cases),
        "failed": sum(1 for c in cases if c["outcome"] == "failed"),
        "skipped": sum(1 for c in cases if c["outcome"] == "skipped"),
        "cases": cases,
        "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
    }


def run_inprocess(workers: str = "2") -> dict[str, Any]:
    """Plain `pytest` (in process only), on `workers` xdist workers; wall time and report."""
    with tempfile.TemporaryDirectory(prefix="maillab-suite-") as tmp:
        report = Path(tmp) / "junit.xml"
        began = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-n",
                workers,
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "CI": os.environ.get("CI", "")},
        )
        wall = time.perf_counter() - began
        if not report.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise RuntimeError(f"pytest left no report (exit {done.returncode}):\n{tail}")
        figures = read_junit(report)
    figures.update(wall_s=wall, workers=workers, exit=done.returncode)
    return figures


def make_test_reports() -> dict[str, Any] | None:
    """The JUnit reports of the last `make test`, merged (None: none found)."""
    found = sorted(REPORTS.glob("*.xml")) if REPORTS.is_dir() else []
    if not found:
        return None
    parts = [read_junit(p) for p in found]
    cases = sorted((c for p in parts for c in p["cases"]), key=lambda c: -c["seconds"])
    return {
        "files": [p["file"] for p in parts],
        "seconds": sum(p["seconds"] for p in parts),
        "tests": sum(p["tests"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
        "skipped": sum(p["skipped"] for p in parts),
        "cases": cases,
        "when": max(p["when"] for p in parts),
    }


def run_all(run: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if run:
        print("the in-process suite (pytest -n 2) ...", file=sys.stderr)
        try:
            results["inprocess"] = run_inprocess()
        except (OSError, RuntimeError) as exc:
            results["inprocess_error"] = str(exc)
    results["make_test"] = make_test_reports()
    return results


def _failed_names(figures: dict[str, Any]) -> str:
    """The failed tests' names, for the report's row (none: nothing)."""
    names = [c["name"] for c in figures.get("cases", []) if c["outcome"] == "failed"]
    return f" ({', '.join(names)})" if names else ""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def report(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Test suite",
        "",
        "Plain `pytest` (in process only) is run by the bench on two xdist workers (as"
        " `make unit` does on this machine); `make test` (both backends and the fidelity"
        " matrix: what CI runs) is read from the JUnit reports it leaves in"
        " build/test-reports/. `python -m bench.suite` does both.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
    ]
    inproc = results.get("inprocess")
    if inproc:
        ok = inproc["wall_s"] <= TARGETS["inprocess_s"] and inproc["failed"] == 0
        lines.append(
            f"| `pytest` in process, {inproc['workers']} workers: wall time |"
            f" {_minutes(inproc['wall_s'])}; {inproc['tests']} tests, {inproc['failed']}"
            f" failed, {inproc['skipped']} skipped{_failed_names(inproc)} | <= 3 min, none"
            f" failed | {'meets' if ok else 'MISSES'} the target |"
        )
    elif "inprocess_error" in results:
        lines.append(
            f"| `pytest` in process | not measured: {results['inprocess_error']} | <= 3 min | |"
        )
    made = results.get("make_test")
    if made:
        ok = made["seconds"] <= TARGETS["make_test_s"] and made["failed"] == 0
        lines.append(
            f"| `make test` ({made['when']}): the pytest runs' time | {_minutes(made['seconds'])};"
            f" {made['tests']} tests, {made['failed']} failed, {made['skipped']} skipped"
            f"{_failed_names(made)} |"
            f" <= 15 min, none failed | {'meets' if ok else 'MISSES'} the target |"
        )
    else:
        lines.append(
            "| `make test` | not measured here: no reports in build/test-reports/ (run"
            " `make test` first) | <= 15 min | |"
        )
    for label, figures in (("in process", inproc), ("`make test`", made)):
        if not figures:
            continue
        lines += [
            "",
            f"The slowest {SLOWEST} tests, {label}:",
            "",
            "| test | seconds |",
            "|---|---|",
        ]
        lines += [f"| {c['name']} | {c['seconds']:.1f} |" for c in figures["cases"][:SLOWEST]]
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="only read make test's reports")
    args = parser.parse_args()
    results = run_all(run=not args.no_run)
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
