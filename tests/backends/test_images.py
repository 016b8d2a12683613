"""The node image: its content tag, its build inputs, the progress display, and (with a
Docker engine) the image itself."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from lab.backends.docker import baseimage, engine
from lab.backends.docker import image as images
from lab.backends.docker.image import NodeImage, node_image_tag, read_requirements
from lab.errors import LabError
from lab.progress import Progress, as_progress

TAG = re.compile(r"^maillab-node:[0-9a-f]{12}$")

PYPROJECT = """\
[project]
name = "maillab"
version = "0.1.0"
dependencies = [
    "pydantic>=2.6",
    " click>=8.1 ",
    "pydantic>=2.6",
    "dnslib>=0.9.24",
]
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny source tree of the shape node_image_tag reads."""
    root = tmp_path / "src"
    files = {
        "lab/__init__.py": "VERSION = 1\n",
        "lab/py.typed": "",
        "lab/services/mta.py": "def deliver(): ...\n",
        "lab/data/greeting.txt": "220 hello\n",
        "pyproject.toml": PYPROJECT,
        "images/node/Dockerfile": "FROM debian:bookworm-slim\n",
        "README.md": "not part of the image\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ---------------------------------------------------------------------------------------
# the tag


def test_tag_is_a_short_content_hash(tree: Path) -> None:
    tag = node_image_tag(tree)
    assert TAG.match(tag), tag
    assert node_image_tag(tree) == tag


def test_tag_depends_on_content_not_place_or_time(tree: Path, tmp_path: Path) -> None:
    tag = node_image_tag(tree)
    copy = tmp_path / "elsewhere"
    shutil.copytree(tree, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert node_image_tag(copy) == tag


@pytest.mark.parametrize(
    "rel",
    [
        "lab/services/mta.py",
        "lab/__init__.py",
        "lab/data/greeting.txt",
        "pyproject.toml",
        "images/node/Dockerfile",
    ],
)
def test_tag_changes_when_an_input_changes(tree: Path, rel: str) -> None:
    before = node_image_tag(tree)
    with (tree / rel).open("a") as f:
        f.write("# changed\n")
    assert node_image_tag(tree) != before


def test_tag_changes_when_a_file_is_added_or_renamed(tree: Path) -> None:
    before = node_image_tag(tree)
    (tree / "lab/services/pop3.py").write_text("")
    added = node_image_tag(tree)
    assert added != before
    (tree / "lab/services/pop3.py").rename(tree / "lab/services/pop.py")
    assert node_image_tag(tree) not in (before, added)


def test_tag_ignores_caches_hidden_files_and_other_files(tree: Path) -> None:
    before = node_image_tag(tree)
    (tree / "lab/__pycache__").mkdir()
    (tree / "lab/__pycache__/__init__.cpython-311.pyc").write_bytes(b"\0")
    (tree / "lab/.mta.py.swp").write_bytes(b"\0")
    (tree / "lab/services/mta.py~").write_text("old")
    (tree / "README.md").write_text("changed\n")
    (tree / "tests").mkdir()
    (tree / "tests/test_x.py").write_text("")
    assert node_image_tag(tree) == before


def test_tag_of_a_tree_without_the_dockerfile_says_what_is_missing(tree: Path) -> None:
    (tree / "images/node/Dockerfile").unlink()
    with pytest.raises(LabError, match=r"lacks images/node/Dockerfile"):
        node_image_tag(tree)


def test_the_real_tree_has_a_tag_and_its_files() -> None:
    files = images.source_files()
    assert {
        "pyproject.toml",
        "images/node/Dockerfile",
        "lab/backends/docker/image.py",
        "lab/py.typed",
    } <= set(files)
    assert files == sorted(files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert TAG.match(node_image_tag())


# ---------------------------------------------------------------------------------------
# build inputs


def test_requirements_are_read_from_pyproject(tree: Path) -> None:
    assert read_requirements(tree / "pyproject.toml") == [
        "pydantic>=2.6",
        "click>=8.1",
        "dnslib>=0.9.24",
    ]


def test_the_projects_requirements_include_what_nodes_import() -> None:
    names = {
        re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower()
        for r in read_requirements(images.project_root() / "pyproject.toml")
    }
    assert {"aiosmtpd", "dnslib", "pydantic"} <= names


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[project]\ndependencies = "pydantic"\n', "must be a list of strings"),
        ("[project\n", "cannot read"),
    ],
)
def test_bad_requirements_are_errors(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(LabError, match=error):
        read_requirements(path)
    with pytest.raises(LabError, match="cannot read"):
        read_requirements(tmp_path / "missing.toml")


def test_no_dependencies_is_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n')
    assert read_requirements(path) == []


@pytest.mark.parametrize(
    ("machine", "arch"), [("x86_64", "x86_64"), ("amd64", "x86_64"), ("aarch64", "aarch64")]
)
def test_wheel_platforms_follow_the_architecture(machine: str, arch: str) -> None:
    tags = images.pip_platforms(machine)
    assert f"manylinux_2_28_{arch}" in tags
    assert f"manylinux_2_17_{arch}" in tags
    assert f"manylinux2014_{arch}" in tags
    assert tags[-1] == "any"
    assert all(t == "any" or t.endswith(arch) for t in tags)


def test_an_unknown_architecture_is_an_error() -> None:
    with pytest.raises(LabError, match="s390x"):
        images.pip_platforms("s390x")


def test_cached_wheels_are_not_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], *args: Any, **kwargs: Any) -> None:
        calls.append(cmd)
        staging = Path(cmd[cmd.index("-d") + 1])
        (staging / "pydantic-2.9.0-py3-none-any.whl").write_bytes(b"wheel")

    monkeypatch.setattr(images, "run_command", fake_run)
    quiet = Progress(quiet=True)
    reqs = ["pydantic>=2.6"]
    first = images.prepare_wheels(reqs, quiet, arch="x86_64", cache=tmp_path)
    assert len(calls) == 1
    assert "--only-binary=:all:" in calls[0] and "cp311" in calls[0]
    assert (first / "requirements.txt").read_text() == "pydantic>=2.6\n"
    assert json.loads((first / "stamp.json").read_text())["wheels"] == [
        "pydantic-2.9.0-py3-none-any.whl"
    ]
    assert images.prepare_wheels(reqs, quiet, arch="x86_64", cache=tmp_path) == first
    assert len(calls) == 1, "unchanged requirements: no download"
    images.prepare_wheels([*reqs, "click"], quiet, arch="x86_64", cache=tmp_path)
    assert len(calls) == 2, "changed requirements: downloaded again"
    (first / "pydantic-2.9.0-py3-none-any.whl").unlink()
    images.prepare_wheels([*reqs, "click"], quiet, arch="x86_64", cache=tmp_path)
    assert len(calls) == 3, "a wheel is gone: downloaded again"
    assert not [p for p in tmp_path.iterdir() if p.name != first.name], "no staging left"


def test_the_cache_follows_maillab_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILLAB_CACHE", str(tmp_path))
    assert images.cache_dir() == tmp_path / "wheels"
    monkeypatch.delenv("MAILLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert images.cache_dir() == tmp_path / "xdg" / "maillab" / "wheels"


# ---------------------------------------------------------------------------------------
# progress display


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_plain_lines_have_elapsed_seconds_and_no_details() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(out, clock=clock)
    assert not progress.tty
    progress.step("wheels: downloading")
    clock.now += 2.5
    progress.status("Collecting pydantic")
    progress("node image: step 1/9: FROM debian:bookworm-slim")
    clock.now += 10
    progress.done("built maillab-node:0123456789ab in 12.5s")
    assert out.getvalue().splitlines() == [
        "[   0.0s] wheels: downloading",
        "[   2.5s] node image: step 1/9: FROM debian:bookworm-slim",
        "[  12.5s] built maillab-node:0123456789ab in 12.5s",
    ]


def test_progress_quiet_shows_nothing() -> None:
    out = io.StringIO()
    progress = Progress(out, quiet=True, tty=True)
    progress.step("a")
    progress.status("b")
    progress.done("c")
    progress.clear()
    assert out.getvalue() == ""


def test_progress_on_a_terminal_updates_one_line() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress(out, tty=True, clock=clock) as progress:
        progress.step("wheels: downloading")
        clock.now += 1
        progress.status("Collecting pydantic")
        progress.done("built")
    text = out.getvalue()
    assert "\n" not in text.rstrip("\n").rsplit("\r\x1b[K", 1)[0], "one updating line"
    assert "wheels: downloading" in text and "Collecting pydantic" in text
    assert text.endswith("\r\x1b[K[   1.0s] built\n")


def test_a_function_can_stand_for_the_progress_display() -> None:
    seen: list[str] = []
    progress = as_progress(seen.append)
    progress.step("one")
    progress.status("detail")
    progress.done("two")
    assert seen == ["one", "two"]
    assert isinstance(as_progress(None), Progress)


def test_debootstrap_progress_counts_packages() -> None:
    out, clock = io.StringIO(), FakeClock()
    counter = baseimage._DebootstrapCounter(Progress(out, clock=clock))
    lines = [
        "I: Retrieving InRelease",
        "I: Retrieving Packages",
        "I: Validating Packages",
        "I: Retrieving adduser 3.134",
        "I: Validating adduser 3.134",
        "I: Retrieving apt 2.6.1",
        "I: Validating apt 2.6.1",
        "I: Unpacking required packages...",
        "I: Unpacking adduser...",
        "I: Unpacking apt...",
        "I: Configuring required packages...",
        "I: Configuring apt...",
        "I: Unpacking the base system...",
        "I: Unpacking libgnutls30:amd64...",
        "I: Configuring the base system...",
        "I: Configuring libgnutls30:amd64...",
        "I: Base system installed successfully.",
    ]
    for line in lines:
        counter(line)
    counter.finish()
    assert counter.counts == {"Retrieving": 2, "Validating": 2, "Unpacking": 3, "Configuring": 2}
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == [
        "base image: debootstrap: retrieved 2, validated 2 packages",
        "base image: debootstrap: retrieved 2, validated 2, unpacked 2 packages",
        "base image: debootstrap: retrieved 2, validated 2, unpacked 3, configured 2 packages",
    ]


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    where = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", where)
    with pytest.raises(LabError, match=re.escape(where)) as info:
        engine.docker_client(timeout=2)
    assert "start dockerd or use --backend inprocess" in str(info.value)


# ---------------------------------------------------------------------------------------
# the image (needs a Docker engine)

TOOLS = """
set -e
swaks --version
dig -v
fetchmail --version
command -v telnet
nc -h
command -v mail
iptables --version
ip -V
python -c "import lab, aiosmtpd, dnslib, pydantic"
echo ALL-TOOLS-OK
"""


@pytest.fixture(scope="module")
def node_image(docker_client: Any) -> str:
    return images.ensure_node_image(docker_client, Progress(quiet=True))


def run_in(client: Any, image: str, script: str) -> tuple[int, str]:
    """`docker run --rm --network none IMAGE sh -c SCRIPT`: (exit status, output)."""
    container = client.containers.create(image, ["sh", "-c", script], network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        return status, container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_the_node_image_has_the_tools_and_maillab(docker_client: Any, node_image: str) -> None:
    assert TAG.match(node_image)
    status, output = run_in(docker_client, node_image, TOOLS)
    assert status == 0 and "ALL-TOOLS-OK" in output, output
    labels = docker_client.images.get(node_image).labels
    assert labels["io.maillab.image"] == "node"
    assert labels["io.maillab.content"] == node_image.split(":")[1]
    latest = docker_client.images.get("maillab-node:latest")
    assert latest.id == docker_client.images.get(node_image).id


@pytest.mark.docker
@pytest.mark.slow
def test_a_second_ensure_is_a_no_op(docker_client: Any, node_image: str) -> None:
    image_id = docker_client.images.get(node_image).id
    started = time.monotonic()
    again = images.make_node_image(docker_client, progress=Progress(quiet=True))
    took = time.monotonic() - started
    assert again == NodeImage(node_image, False, again.seconds)
    assert took < 2.0, f"a no-op took {took:.2f}s"
    assert images.ensure_node_image(docker_client, Progress(quiet=True)) == node_image
    assert docker_client.images.get(node_image).id == image_id


@pytest.mark.docker
def test_latest_follows_the_image_made_or_found(docker_client: Any, node_image: str) -> None:
    """REPO:latest held by another image (one an earlier checkout built) moves to the
    image made or found; the node and family images call this on their found path too.
    A scratch repository here, so the suite's own latest is never moved."""
    repo = f"maillab-scratch-{os.getpid()}"
    docker_client.api.tag(baseimage.BASE_IMAGE, repo, "latest")
    try:
        engine.tag_latest(docker_client, node_image, repo)
        assert (
            docker_client.images.get(f"{repo}:latest").id == docker_client.images.get(node_image).id
        )
        engine.tag_latest(docker_client, node_image, repo)  # already there: unchanged
        assert (
            docker_client.images.get(f"{repo}:latest").id == docker_client.images.get(node_image).id
        )
    finally:
        docker_client.api.remove_image(f"{repo}:latest")


@pytest.mark.docker
def test_maillab_images_are_listed(docker_client: Any, node_image: str) -> None:
    rows = images.list_images(docker_client)
    mine = [r for r in rows if r["tag"] == node_image]
    assert mine and mine[0]["kind"] == "node" and mine[0]["size"] > 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", mine[0]["created"])
