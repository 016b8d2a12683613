"""Hostile and malformed topology files: each ends in a problem with its place
(FILE:LINE:COL), exit 2 from `maillab validate`, within 2 s and 200 MB, never a traceback.

The loader's limits (lab/topology/loader.py: MAX_FILE_BYTES, MAX_DEPTH, MAX_VALUES,
MAX_EXPANDED_CHARS, MAX_NUMBER_CHARS) are checked while YAML is composed, before any
value is built, so a billion-laughs file is refused without being expanded. Time is
measured as this process's CPU time and memory with tracemalloc, each with a wide margin,
so that a busy machine does not make the tests flaky.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.errors import TopologyError
from lab.topology import load, load_text
from lab.topology.loader import (
    MAX_DEPTH,
    MAX_EXPANDED_CHARS,
    MAX_FILE_BYTES,
    MAX_NUMBER_CHARS,
    MAX_VALUES,
)

SECONDS = 2.0
MEGABYTES = 200

VALID = """\
name: small
networks:
  lan: {subnet: 192.168.10.0/24}
nodes:
  hub: {role: mta, networks: {lan: 192.168.10.1}, local_domains: [home.test], users: [eddy]}
  pc: {role: client, networks: [lan], submit_to: hub}
"""


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level a list of `width` aliases of the level below."""
    text = "a: &a [" + ", ".join(['"lol"'] * width) + "]\n"
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]\n"
        previous = name
    return text


# (id, text, the first problem as FILE:LINE:COL: ..., a piece of its message)
HOSTILE = [
    pytest.param(
        laughs(),
        "bad.yaml:5:12: ",
        f"alias *d, expanded, takes the file past {MAX_VALUES} values",
        id="billion-laughs",
    ),
    pytest.param(
        "a: &a [*a]\n",
        "bad.yaml:1:8: ",
        "alias *a stands inside the node &a it names (a recursive alias)",
        id="recursive-alias-list",
    ),
    pytest.param(
        "name: x\nnodes: &n\n  hub: {role: mta, again: *n}\n",
        "bad.yaml:3:27: ",
        "recursive alias",
        id="recursive-alias-mapping",
    ),
    pytest.param(
        "base: &b\n  <<: *b\n  role: mta\n",
        "bad.yaml:2:7: ",
        "recursive alias",
        id="recursive-merge-key",
    ),
    pytest.param(
        "x: " + "[" * 3000 + "]" * 3000 + "\n",
        f"bad.yaml:1:{3 + MAX_DEPTH}: ",  # the file's mapping is the first level
        f"this value nests mappings and lists more than {MAX_DEPTH} deep",
        id="nesting-3000-deep-flow",
    ),
    pytest.param(
        "".join(" " * i + f"k{i}:\n" for i in range(100)),
        f"bad.yaml:{MAX_DEPTH + 1}:{MAX_DEPTH + 1}: ",
        "more than 32 deep",
        id="nesting-100-deep-block",
    ),
    pytest.param(
        "deep: &d " + "[" * 20 + "]" * 20 + "\nx: " + "[" * 20 + "*d" + "]" * 20 + "\n",
        "bad.yaml:2:24: ",
        f"alias *d, expanded, nests mappings and lists more than {MAX_DEPTH} deep",
        id="nesting-deep-through-an-alias",
    ),
    pytest.param(
        "name: " + "9" * 5000 + "\n",
        "bad.yaml:1:7: ",
        f"a number 5000 characters long; expected at most {MAX_NUMBER_CHARS}",
        id="integer-5000-digits",
    ),
    pytest.param(
        "name: x\nsubmit_port: 0x" + "f" * 100_000 + "\n",
        "bad.yaml:2:14: ",
        "a number 100002 characters long",
        id="integer-100000-hex-digits",
    ),
    pytest.param(
        "name: x\nx: 1" + ":1" * 40_000 + "\n",
        "bad.yaml:2:4: ",
        "a number 80001 characters long",
        id="sexagesimal-integer",
    ),
    pytest.param(
        "a: &a " + "z" * 50_000 + "\nb: [" + ", ".join(["*a"] * 30) + "]\n",
        "bad.yaml:2:",
        f"takes the file past {MAX_EXPANDED_CHARS} characters of text",
        id="long-text-many-aliases",
    ),
    pytest.param(
        "name: x\nlist: [" + ", ".join(["v"] * (MAX_VALUES + 10)) + "]\n",
        "bad.yaml:2:",
        f"this value takes the file past {MAX_VALUES} values",
        id="too-many-values",
    ),
    pytest.param(
        "name: x\ndescription: " + "y" * MAX_FILE_BYTES + "\n",
        "bad.yaml:1:1: ",
        "the file is larger than 128 KiB",
        id="file-too-large",
    ),
    pytest.param(
        VALID.replace("networks: [lan]", "networks: [[lan]]"),
        "bad.yaml:6:32: ",
        "nodes.pc.networks: expected a list of network names, got a list in it",
        id="node-networks-list-of-lists",
    ),
    pytest.param(
        "name: x\nnetworks: [[lan]]\nnodes: {}\n",
        "bad.yaml:2:11: ",
        "networks: expected a mapping, got a list",
        id="networks-list-of-lists",
    ),
    pytest.param(
        "name: x\x00y\n",
        "bad.yaml:1:8: ",
        "YAML syntax error: the character '\\x00' (U+0000) is not allowed",
        id="nul-character",
    ),
    pytest.param(
        "name: x\ndescription: 2001-02-30\n",
        "bad.yaml:2:14: ",
        "description: YAML error: cannot read '2001-02-30' as a date (day is out of range",
        id="impossible-date",
    ),
    pytest.param(
        "name: !!bool maybe\n",
        "bad.yaml:1:7: ",
        "name: YAML error: cannot read 'maybe' as true or false",
        id="tag-that-does-not-fit",
    ),
    pytest.param(
        "name: !!timestamp x\n",
        "bad.yaml:1:7: ",
        "name: YAML error: cannot read 'x' as a date",
        id="timestamp-tag-on-text",
    ),
    pytest.param(
        "name: !!python/object:os.system x\n",
        "bad.yaml:1:7: ",
        "YAML error: could not determine a constructor",
        id="python-tag",
    ),
]


def measured(text: str) -> tuple[TopologyError | None, float, float]:
    """Load `text`: the error it gives, the CPU seconds and the peak megabytes it took."""
    started = time.process_time()
    try:
        load_text(text, "bad.yaml")
        error = None
    except TopologyError as exc:
        error = exc
    seconds = time.process_time() - started
    tracemalloc.start()
    try:
        load_text(text, "bad.yaml")
    except TopologyError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return error, seconds, peak


@pytest.mark.parametrize(("text", "where", "message"), HOSTILE)
def test_hostile_file_gives_a_placed_problem_quickly(text: str, where: str, message: str) -> None:
    error, seconds, megabytes = measured(text)
    assert error is not None, "expected a problem"
    first = str(error.problems[0])
    assert first.startswith(where), first
    assert message in first, first
    assert seconds < SECONDS, f"{seconds:.2f} s of CPU"
    assert megabytes < MEGABYTES, f"{megabytes:.0f} MB at the peak"


@pytest.mark.parametrize(("text", "where", "message"), HOSTILE)
def test_validate_exits_2_with_the_place(
    text: str, where: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(where), result.stderr[:500]
    assert message in result.stderr.splitlines()[0]
    assert "Traceback" not in result.output


def test_validate_json_carries_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(laughs(), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--json", "bad.yaml"])
    assert result.exit_code == 2
    [entry] = __import__("json").loads(result.stdout)
    assert entry["ok"] is False
    [problem] = entry["problems"]
    assert (problem["line"], problem["column"]) == (5, 12)


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        pytest.param(
            b"name: x\nnetworks: {}\nnodes: {a: \xff}\n",
            "bad.yaml:3:12: ",
            "the file is not UTF-8 text: byte 0xff invalid start byte",
            id="not-utf-8",
        ),
        pytest.param(
            b"name: " + b"x" * (4 * MAX_FILE_BYTES),
            "bad.yaml:1:1: ",
            "the file is larger than 128 KiB",
            id="too-large-on-disk",
        ),
    ],
)
def test_file_content_problems(
    content: bytes, where: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_bytes(content)
    with pytest.raises(TopologyError) as info:
        load("bad.yaml")
    assert str(info.value).startswith(where + message)
    result = CliRunner().invoke(main, ["validate", "bad.yaml"])
    assert result.exit_code == 2
    assert result.stderr.startswith(where + message)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_an_endless_file_is_not_read_to_its_end() -> None:
    """`maillab validate /dev/zero` reads no more than the limit."""
    with pytest.raises(TopologyError) as info:
        load("/dev/zero")
    assert str(info.value).startswith("/dev/zero:1:1: the file is larger than 128 KiB")


def test_the_largest_files_within_the_limits_load_quickly() -> None:
    """Files at the limits (just below the file size, the values, the depth) still load,
    or give their problems, within the bounds."""
    per_value = "name: x\nlist: [" + ", ".join(["v"] * (MAX_VALUES - 10)) + "]\n"
    nodes = "".join(
        f"  n{i}: {{role: client, networks: [lan], submit_to: hub}}\n" for i in range(2000)
    )
    big_valid = VALID.replace("192.168.10.0/24", "192.168.0.0/16") + nodes
    assert len(big_valid) < MAX_FILE_BYTES
    deep = "x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    long_text = VALID + "description: " + "y" * (MAX_FILE_BYTES - len(VALID) - 100) + "\n"
    for text in (per_value, big_valid, deep, long_text):
        error, seconds, megabytes = measured(text)
        assert error is None or error.problems
        assert seconds < SECONDS, f"{seconds:.2f} s of CPU for {text[:40]!r}..."
        assert megabytes < MEGABYTES, f"{megabytes:.0f} MB for {text[:40]!r}..."
    assert load_text(big_valid, "big.yaml").model.nodes["n1999"].submit_to == "hub"
    assert load_text(long_text, "long.yaml").model.description


def test_aliases_that_stay_within_the_limits_still_work() -> None:
    text = VALID + "checks:\n  c1: &steps\n    - flush: hub\n  c2: *steps\n"
    model = load_text(text, "ok.yaml").model
    assert model.checks["c1"] == model.checks["c2"]


# `maillab validate` run as a program, reporting its own peak resident memory when it
# exits: VmHWM of the program's own memory (ru_maxrss would count the memory of the
# pytest process it was forked from).
CHILD = """\
import atexit, sys
def peak():
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))
atexit.register(peak)
from lab.cli import main
main(sys.argv[2:], prog_name="maillab")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_validate_in_a_process_of_its_own_stays_within_bounds(tmp_path: Path) -> None:
    """`maillab validate` of the billion laughs (twelve levels) as a person runs it: a
    process that exits 2 with the place, in little CPU time and memory."""
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs(levels=12), encoding="utf-8")
    peak_file = tmp_path / "peak"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(peak_file), "validate", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    _, stderr = proc.communicate()
    assert proc.returncode == 2, stderr
    assert stderr.decode().startswith(
        f"{path}:5:12: YAML error: alias *d, expanded, takes the file past"
    )
    # The program's own work is well under 2 s; starting Python and importing maillab
    # is most of what it does, so the bound on the whole is loose.
    cpu = usage.ru_utime + usage.ru_stime
    assert cpu < 10 * SECONDS, f"{cpu:.1f} s of CPU"
    kilobytes = int(peak_file.read_text().split()[1])
    assert kilobytes < MEGABYTES * 1024, f"{kilobytes / 1024:.0f} MB resident at the peak"
