"""Bringing a lab up and down, and its status: up, down, status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lab.cli.output import emit_json, friendly, json_option, lab_option, print_table
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.topology.model import Topology


def print_status(status: dict[str, Any]) -> None:
    """A running lab as `maillab status` (and `up`) show it: nodes, links, how to connect."""
    nodes = status["nodes"]
    topology = status.get("topology", status["name"])
    of = f" (topology {topology})" if topology != status["name"] else ""
    click.echo(
        f"lab {status['name']!r}{of} is up ({status['backend']} backend, {len(nodes)} nodes)"
    )
    rows = [("NODE", "HOSTNAME", "SERVICES", "ADDRESSES", "ENDPOINTS")]
    for name, node in nodes.items():
        addresses = " ".join(f"{net}={addr}" for net, addr in node["addresses"].items())
        endpoints = " ".join(
            [f"{svc}={ep}" for svc, ep in node["endpoints"].items() if "@" not in svc]
            + [f"{svc}=(inside the lab)" for svc in node.get("inside_lab", [])]
        )
        rows.append(
            (name, node["hostname"], ",".join(node.get("services", [])), addresses, endpoints)
        )
    print_table(rows, indent="  ")
    for name, link in status.get("links", {}).items():
        click.echo(f"  link {name}: {link['state']} ({link.get('node')} on {link.get('network')})")
        if link.get("schedule"):
            dials = ", ".join(f"{k} {v}" for k, v in link["schedule"].items() if v)
            click.echo(f"    dials on a schedule: {dials}")
    op = status.get("operator") or {}
    if op.get("node"):
        click.echo(f"  You connect from this machine as {op['node']} ({op['address']}).")
    if status["backend"] == "docker":
        click.echo(
            f"  Hosts are containers: `maillab shell {op.get('node') or next(iter(nodes))}`"
            " opens a shell on one (then `telnet hub 25`, `dig MX example.com`)."
        )
    smtp = next((n for n in nodes.values() if "smtp" in n["endpoints"]), None)
    if smtp:
        host, _, port = smtp["endpoints"]["smtp"].rpartition(":")
        click.echo(f"  Try: telnet {host} {port}")


def print_ui(info: dict[str, Any]) -> None:
    click.echo(f"  Web dashboard: {info['url']}")
    click.echo(f"  HTTP API: {info['openapi']} (header X-Maillab-Token: {info['token']})")
    if info["host"] not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"  warning: the dashboard listens on {info['host']}, not only on this machine;"
            " anyone who has the URL can drive the lab",
            err=True,
        )


def choose_backend(backend: str, topology: Topology | None = None) -> str:
    """`auto`: Docker when an engine answers, in-process otherwise; says which. A topology
    that names real software (postfix, ...) needs Docker: without an engine that is an
    error, as is asking for the in-process backend for it."""
    from lab.software import check_topology, needs_real_hosts

    real = needs_real_hosts(topology) if topology is not None else []
    if backend != "auto":
        if topology is not None:
            check_topology(topology, backend)
        return backend
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:
        if real:
            raise LabError(
                f"this topology needs the Docker backend ({'; '.join(real)}), but no Docker"
                f" engine answers ({type(exc).__name__}); start Docker, or use software:"
                " builtin to run it in this process"
            ) from None
        click.echo(f"backend: inprocess (no Docker engine answers: {type(exc).__name__})", err=True)
        return "inprocess"
    if topology is not None:
        check_topology(topology, "docker")
    if real:
        click.echo(f"backend: docker (the topology needs real hosts: {'; '.join(real)})", err=True)
    else:
        click.echo(
            "backend: docker (a Docker engine answers; --backend inprocess, or make lab-up"
            " BACKEND=inprocess, to run in this process)",
            err=True,
        )
    return "docker"


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["inprocess", "docker", "auto"]),
    default="inprocess",
    show_default=True,
    help="Where the hosts run: in this process, a container per host, or docker when an"
    " engine answers (auto).",
)
@click.option("--name", help="Name of this lab (default: the topology's name).")
@click.option("-d", "--detach", is_flag=True, help="Leave the lab running in the background.")
@click.option("--ui", is_flag=True, help="Serve the web dashboard and HTTP API; print its URL.")
@click.option("--ui-host", default="127.0.0.1", show_default=True, help="Where --ui listens.")
@click.option("--ui-port", default=0, type=int, help="The port --ui listens on (default: any).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    help="The seed every fault's chance is drawn from (default: the topology's, or a new one).",
)
@json_option
@friendly
def up(
    file: Path,
    backend: str,
    name: str | None,
    seed: int | None,
    detach: bool,
    ui: bool,
    ui_host: str,
    ui_port: int,
    as_json: bool,
) -> None:
    """Bring up the lab of FILE, print its endpoints, and hold it until Ctrl-C.

    A person on this machine who connects to an endpoint is seen by the lab as the
    topology's operator (a LAN client), so the seed articles' telnet sessions work.
    With --ui, the lab's web page and HTTP API are served too (docs/ui.md).
    """
    from lab.harness.control import ControlServer, find_lab, registry_dir, request, running_labs
    from lab.topology import load

    loaded = load(file)
    for warning in loaded.warnings:
        click.echo(warning.as_warning(), err=True)
    topology = loaded.model
    backend = choose_backend(backend, topology)
    name = name or topology.name
    if name in running_labs():
        raise LabError(
            f"a lab named {name!r} is already running; stop it with `maillab down"
            f" --lab {name}` or choose another --name"
        )
    if detach:
        import subprocess
        import time

        log = registry_dir() / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lab",
                    "up",
                    str(file),
                    "--backend",
                    backend,
                    "--name",
                    name,
                    *(["--ui", "--ui-host", ui_host, "--ui-port", str(ui_port)] if ui else []),
                    *(["--seed", str(seed)] if seed is not None else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 300
        while name not in running_labs():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the lab did not come up; its log ({log}):\n{log.read_text()}")
            time.sleep(0.05)
        find_lab(name)
        status = request(name, "status")
        if ui:
            status["ui"] = request(name, "ui", host=ui_host, port=ui_port)
        if as_json:
            emit_json(status)
        else:
            print_status(status)
            if ui:
                print_ui(status["ui"])
            click.echo(
                f"  Running in the background (pid {proc.pid}); `maillab down --lab {name}`"
                " stops it."
            )
        return

    import signal

    from lab.harness.lab import Lab
    from lab.protocols.wire import LabOp
    from lab.web import LabUi

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    # it says "Press Ctrl-C": so Ctrl-C stops it, even if its parent ignored SIGINT (a
    # shell script's background job inherits that, and Python then leaves it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    options: dict[str, Any] = {}
    progress = None
    if backend == "docker":
        from lab.progress import Progress

        progress = options["progress"] = Progress(quiet=as_json)
    lab = Lab.up(topology, backend=backend, source=file, seed=seed, **options)
    if progress is not None:
        progress.clear()  # the status table starts on a line of its own
    web = LabUi(lab, name)
    server = ControlServer(lab, name, file, {LabOp.UI: web.start})
    try:
        lab.run(server.start())
        status = lab.status()
        if ui:
            status["ui"] = lab.run(web.start(ui_host, ui_port))
        if as_json:
            emit_json(status)
        else:
            print_status(status)
            if ui:
                print_ui(status["ui"])
            click.echo("  Press Ctrl-C to stop the lab.")
        sys.stdout.flush()
        assert server.stopped is not None
        lab.run(server.stopped.wait(), timeout=None)
        click.echo("stopping (maillab down)")
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        try:
            lab.run(web.stop())
            lab.run(server.close())
        finally:
            lab.down()


@click.command()
@lab_option
@friendly
def down(lab_name: str | None) -> None:
    """Stop a running lab."""
    import time

    from lab.harness.control import find_lab, process_alive, request, running_labs

    info = find_lab(lab_name)
    request(info["name"], "down")
    pid = int(info.get("pid", 0))
    deadline = time.monotonic() + 120
    # gone from the registry, and its process has finished (containers removed)
    while time.monotonic() < deadline and (
        info["name"] in running_labs() or (pid and process_alive(pid))
    ):
        time.sleep(0.05)
    click.echo(f"lab {info['name']!r} is down")


@click.command()
@lab_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to listen.")
@click.option("--port", default=0, type=int, help="The port to listen on (default: any).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@json_option
@friendly
def ui(lab_name: str | None, host: str, port: int, open_browser: bool, as_json: bool) -> None:
    """Serve a running lab's web dashboard and HTTP API, and print the page's URL.

    The lab's own process serves them (on either backend) until the lab stops; asking
    again prints the same URL.
    """
    from lab.harness.control import request

    info = request(lab_name, "ui", host=host, port=port)
    if as_json:
        emit_json(info)
        return
    print_ui(info)
    if open_browser:
        import webbrowser

        webbrowser.open(info["url"])


@click.command()
@lab_option
@json_option
@friendly
def status(lab_name: str | None, as_json: bool) -> None:
    """Show a running lab: nodes, addresses, endpoints, links."""
    from lab.harness.control import request

    result = request(lab_name, "status")
    if as_json:
        emit_json(result)
    else:
        print_status(result)
