"""The maillab pytest plugin: a `lab` fixture, a `topology` marker, a `--lab-backend` option,
and the `checks:` of topology files collected as tests.

    @pytest.mark.topology("home-dialup")          # a file in topologies/, or a path
    def test_queued_while_down(lab):
        lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        lab.assert_queued(on="hub")

Labs are reused: each worker process keeps one lab per topology, backend and options,
and resets it (`Lab.reset()`) before handing it to the next test or check, so a test sees
the topology's initial state; a lab whose reset fails is replaced by a fresh one. A test
marked `@pytest.mark.fresh_lab` (or every test, with --lab-fresh) gets a lab of its own,
with its state directory under pytest's tmp_path. The kept labs go down at the end of
the session (with Docker, their containers removed); each pytest-xdist worker has its own.

Every check of a YAML file under the `lab_topologies` directory (ini option, default
`topologies`) is a test item of its own, `topologies/home-dialup.yaml::queued-while-down`,
run on the topology's lab (reset) on the --lab-backend backend; a failure shows the
check's step report. With --lab-software (the fidelity matrix, docs/fidelity.md), each
check of a topology with a device under test is also an item per software,
`topologies/home-dialup.yaml::queued-while-down[postfix]` (marker `fidelity`): the DUT's
MTA as that software, builtin in process, the real MTAs on Docker; a cell that does not
apply (`matrix: not_on:` in the topology) is deselected, not skipped, and listed with its
reason at the end of the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.errors import LabError, TopologyError
from lab.harness import backend_names


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maillab")
    group.addoption(
        "--lab-backend",
        action="store",
        default="inprocess",
        help="backend(s) for the `lab` fixture and the topology checks: inprocess, docker,"
        " a comma-separated list (each test runs on each), or `all` (default: inprocess)",
    )
    group.addoption(
        "--lab-fresh",
        action="store_true",
        default=False,
        help="bring a new lab up for every test and check (default: reuse one per topology,"
        " reset between tests)",
    )
    group.addoption(
        "--lab-software",
        action="store",
        default="",
        help="the fidelity matrix: also run each check of a topology with a device under test"
        " (matrix: dut, default its hub) with the DUT's MTA as each of these software, items"
        " CHECK[builtin], CHECK[postfix], ...: a comma-separated list of builtin, postfix,"
        " exim, sendmail, or `all` (default: none)",
    )
    group.addoption(
        "--lab-seed",
        action="store",
        type=int,
        default=None,
        help="the seed every fault's chance is drawn from, over the topologies' `seed:`"
        " (a failing check prints the seed it ran with: pass it here to replay the run)",
    )
    parser.addini(
        "lab_topologies",
        "directory of topology files for @pytest.mark.topology; their checks are collected",
        default="topologies",
    )


def lab_backends(config: pytest.Config) -> list[str]:
    """The backends of --lab-backend, in order."""
    value = str(config.getoption("--lab-backend"))
    known = backend_names()
    names = known if value == "all" else [v.strip() for v in value.split(",") if v]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise pytest.UsageError(
            f"--lab-backend {value!r}: expected one or more of {', '.join(known)}, or all"
        )
    return names


_ENGINE: dict[str, str] = {}


def require_backend(name: str) -> None:
    """Skip (fail under CI=true) a test whose backend cannot run on this machine."""
    if name != "docker":
        return
    if "docker" not in _ENGINE:
        try:
            import docker

            client = docker.from_env(timeout=10)
            client.ping()
            client.close()
            _ENGINE["docker"] = ""
        except Exception as exc:
            _ENGINE["docker"] = f"no Docker engine answers ({type(exc).__name__}: {exc})"
    why = _ENGINE["docker"]
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the docker backend is required in CI: {why}", pytrace=False)
        pytest.skip(f"docker backend: {why}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `lab_backend` (or `lab`) runs once on each --lab-backend backend."""
    if "lab_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("lab_backend") is not None:
        return
    backends = lab_backends(metafunc.config)
    metafunc.parametrize("lab_backend", backends, indirect=True, ids=backends)


def pytest_configure(config: pytest.Config) -> None:
    lab_backends(config)  # a wrong --lab-backend is a usage error before collection
    config.addinivalue_line(
        "markers",
        "topology(name_or_path, **options): the topology the `lab` fixture brings up",
    )
    config.addinivalue_line("markers", "lab_backend(name): run this test on this backend only")
    config.addinivalue_line(
        "markers", "fidelity: a fidelity-matrix item (a check with the DUT as one software)"
    )
    config.addinivalue_line(
        "markers", "fresh_lab: give this test a new lab of its own instead of a reused, reset one"
    )


_POOL: list[Any] = []  # this process's LabPool, made on first use


def lab_pool(config: pytest.Config) -> Any:
    """The worker's pool of reused labs (None with --lab-fresh)."""
    if config.getoption("--lab-fresh"):
        return None
    if not _POOL:
        from lab.harness.pool import LabPool

        _POOL.append(LabPool())
    return _POOL[0]


def wants_fresh(item: pytest.Item) -> bool:
    return item.get_closest_marker("fresh_lab") is not None or lab_pool(item.config) is None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The labs kept for reuse go down (containers removed) with the session."""
    while _POOL:
        _POOL.pop().close()


def resolve_topology(config: pytest.Config, ref: str | Path) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    base = Path(str(config.rootpath)) / str(config.getini("lab_topologies"))
    for candidate in (base / path, base / f"{path}.yaml", base / f"{path}.yml"):
        if candidate.exists():
            return candidate
    raise pytest.UsageError(f"topology {ref!r} not found (looked in {base})")


@pytest.fixture
def lab_backend(request: pytest.FixtureRequest) -> str:
    """The backend the `lab` fixture uses (--lab-backend, or a lab_backend marker)."""
    marker = request.node.get_closest_marker("lab_backend")
    if marker is not None:
        name = str(marker.args[0])
    else:
        param = getattr(request, "param", None)
        name = str(param or lab_backends(request.config)[0])
    require_backend(name)
    return name


@pytest.fixture
def lab_seed(request: pytest.FixtureRequest) -> int | None:
    """The --lab-seed of the run (None: each lab draws from its topology's or its own)."""
    value = request.config.getoption("--lab-seed")
    return None if value is None else int(value)


@pytest.fixture
def lab(
    request: pytest.FixtureRequest, lab_backend: str, lab_seed: int | None, tmp_path: Path
) -> Iterator[Any]:
    """A running lab of the test's `topology` marker; stopped after the test."""
    from lab.harness.lab import Lab

    marker = request.node.get_closest_marker("topology")
    if marker is None or not marker.args:
        raise pytest.UsageError(
            f"{request.node.nodeid}: the lab fixture needs @pytest.mark.topology('NAME')"
        )
    path = resolve_topology(request.config, marker.args[0])
    options = dict(marker.kwargs)
    if lab_seed is not None:
        options.setdefault("seed", lab_seed)
    if wants_fresh(request.node) or "state_dir" in options:
        options.setdefault("state_dir", tmp_path / "lab")
        running = Lab.up(path, backend=lab_backend, **options)
        request.node.stash[SEED_KEY] = running.seed
        try:
            yield running
        finally:
            running.down()
        return
    pool = lab_pool(request.config)
    reused = pool.acquire(path, backend=lab_backend, **options)
    request.node.stash[SEED_KEY] = reused.seed
    try:
        yield reused
    finally:
        pool.release(reused)


SEED_KEY = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test that used the `lab` fixture says the seed its lab drew from."""
    report = yield
    seed = item.stash.get(SEED_KEY, None)
    if report.failed and seed is not None and call.when == "call":
        report.sections.append(
            ("maillab", f"seed {seed}: `pytest --lab-seed {seed}` replays this run")
        )
    return report


# ---------------------------------------------------------------------------------------
# checks: in topology files, as test items

_CHECKS_KEY = re.compile(r"^checks\s*:", re.M)


def topologies_dir(config: pytest.Config) -> Path:
    return Path(str(config.rootpath)) / str(config.getini("lab_topologies"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    base = topologies_dir(parent.config).resolve()
    if not file_path.resolve().is_relative_to(base):
        return None
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not _CHECKS_KEY.search(text):  # no checks, nothing to collect
        return None
    collector: TopologyFile = TopologyFile.from_parent(parent, path=file_path)
    return collector


class TopologyFile(pytest.File):
    """A topology file; each of its checks is a test item."""

    def collect(self) -> Iterator[pytest.Item]:
        from lab.topology import load

        try:
            topology = load(self.path).model
        except TopologyError as exc:
            raise self.CollectError(f"invalid topology {self.path}:\n{exc}") from None
        asked = lab_backends(self.config)
        backends = [b for b in asked if runs_on(topology, b)]
        for name in topology.checks:
            for backend in backends:
                label = f"{name}[{backend}]" if len(asked) > 1 else name
                yield CheckItem.from_parent(
                    self, name=label, topology=topology, check=name, backend=backend
                )
        yield from self.matrix(topology)

    def matrix(self, topology: Any) -> Iterator[pytest.Item]:
        """The fidelity matrix's items: CHECK[software] for each --lab-software."""
        from lab.harness.matrix import parse_software, variant
        from lab.topology.matrix import dut_of, not_applicable

        asked = str(self.config.getoption("--lab-software") or "")
        dut = dut_of(topology)
        if not asked or dut is None:
            return
        try:
            chosen = parse_software(asked)
        except LabError as exc:
            raise pytest.UsageError(str(exc)) from None
        for software in chosen:
            copy, backend, why = variant(topology, dut, software)
            for name in topology.checks:
                reason = not_applicable(topology, name, software) or ("" if copy else why)
                item = CheckItem.from_parent(
                    self,
                    name=f"{name}[{software}]",
                    topology=copy or topology,
                    check=name,
                    backend=backend or "docker",
                    not_applicable=" ".join(reason.split()),
                )
                item.add_marker(pytest.mark.fidelity)
                yield item


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fidelity-matrix cells that do not apply to their software are deselected (they are
    not tests that could pass or fail) and kept, with their reasons, for the summary.
    So are the copies of a test whose parameter says `lab_backend(NAME)` (a topology
    with a real MTA: Docker only) made for the other backends asked, when NAME's own
    copy is collected too: each would run on NAME, the same test twice."""
    asked = lab_backends(config)
    copies = [i for i in items if _copy_for_another_backend(i, asked)]
    if copies:
        config.hook.pytest_deselected(items=copies)
        doomed = set(map(id, copies))
        items[:] = [i for i in items if id(i) not in doomed]
    cells = [i for i in items if isinstance(i, CheckItem) and i.not_applicable]
    if not cells:
        return
    config.hook.pytest_deselected(items=cells)
    items[:] = [i for i in items if not (isinstance(i, CheckItem) and i.not_applicable)]
    config.stash[_NOT_APPLICABLE] = [f"{i.nodeid}: {i.not_applicable}" for i in cells]


def _copy_for_another_backend(item: pytest.Item, asked: list[str]) -> bool:
    marker = item.get_closest_marker("lab_backend")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None or "lab_backend" not in callspec.params:
        return False
    wanted = str(marker.args[0])
    return callspec.params["lab_backend"] != wanted and wanted in asked


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    cells = config.stash.get(_NOT_APPLICABLE, [])
    if cells:
        terminalreporter.section("fidelity matrix: cells that do not apply (deselected)")
        for line in cells:
            terminalreporter.line(line)


_NOT_APPLICABLE = pytest.StashKey[list[str]]()


def runs_on(topology: Any, backend: str) -> bool:
    """Whether every node's software runs on the backend: a topology with a real MTA
    (software: postfix) has its checks collected for the Docker backend only."""
    from lab.software import check_topology

    try:
        check_topology(topology, backend)
    except LabError:
        return False
    return True


class CheckFailed(Exception):
    """A check that did not pass; carries its result for the report."""

    def __init__(self, result: Any):
        super().__init__(result.summary())
        self.result = result


class CheckItem(pytest.Item):
    """One named check of a topology file, run on the topology's reused lab, reset."""

    def __init__(
        self,
        *,
        topology: Any,
        check: str,
        backend: str,
        not_applicable: str = "",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.topology = topology
        self.check = check
        self.backend = backend
        self.not_applicable = not_applicable  # a matrix cell that does not apply: why

    def runtest(self) -> None:
        from lab.harness.checks import run_check

        root = Path(str(self.config.rootpath))
        file = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        require_backend(self.backend)
        pool = None if wants_fresh(self) else lab_pool(self.config)
        seed = self.config.getoption("--lab-seed")
        options: dict[str, Any] = {} if seed is None else {"seed": int(seed)}
        result = run_check(
            self.topology, self.check, backend=self.backend, file=file, pool=pool, **options
        )
        if not result.ok:
            raise CheckFailed(result)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value.result.report())
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
