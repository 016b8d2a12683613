"""The `maillab` command line.

Every command has --help; commands whose output is data have --json. Errors meant for
people (LabError) are printed without a traceback and set the exit code.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lab import __version__
from lab.errors import LabError, TopologyError

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn a LabError into a message and an exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maillab")
def main() -> None:
    """maillab: a local mail lab.

    Describe a small mail world in a topology file (LAN clients, a dial-up hub, an ISP
    smarthost, a fake DNS, POP servers, remote MTAs), bring it up, and watch what mail
    does between the machines.
    """


# ---------------------------------------------------------------------------------------
# topology files


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check topology FILES; print every problem as FILE:LINE:COL: field: message.

    Exits 0 when every file is valid, 2 otherwise.
    """
    from lab.topology import load

    results = []
    failed = False
    for file in files:
        try:
            loaded = load(file)
        except TopologyError as exc:
            failed = True
            results.append(
                {"file": str(file), "ok": False, "problems": [p.__dict__ for p in exc.problems]}
            )
            if not as_json:
                click.echo(str(exc), err=True)
            continue
        t = loaded.model
        results.append(
            {
                "file": str(file),
                "ok": True,
                "name": t.name,
                "nodes": len(t.nodes),
                "networks": len(t.networks),
                "links": len(t.links),
                "checks": len(t.checks),
            }
        )
        if not as_json:
            click.echo(
                f"{file}: ok ({t.name}: {len(t.nodes)} nodes, {len(t.networks)} networks,"
                f" {len(t.links)} links, {len(t.checks)} checks)"
            )
    if as_json:
        emit_json(results)
    if failed:
        sys.exit(2)


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the schema to this file instead of standard output.",
)
def schema(output: Path | None) -> None:
    """Print the JSON Schema of the topology format (for editors and tools)."""
    from lab.topology.schema import schema_text

    text = schema_text()
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "svg", "png"]),
    default="mermaid",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write here (default: standard output for text; FILE-stem.FORMAT for svg/png).",
)
@friendly
def graph(file: Path, fmt: str, output: Path | None) -> None:
    """Draw FILE: networks, hosts with services and addresses, links and their state."""
    from lab.topology import load
    from lab.topology.graph import to_dot, to_mermaid

    topology = load(file).model
    if fmt in ("mermaid", "dot"):
        text = to_mermaid(topology) if fmt == "mermaid" else to_dot(topology)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        return
    dot = shutil.which("dot")
    if dot is None:
        raise LabError(
            "Graphviz is not installed (no `dot` on PATH); `make setup` installs it,"
            " or use --format mermaid|dot"
        )
    target = output or Path(f"{file.stem}.{fmt}")
    result = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(target)],
        input=to_dot(topology),
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"dot failed: {result.stderr.strip()}")
    click.echo(f"wrote {target}", err=True)


def _is_topology_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="FILE... [NAME...]")
@click.option(
    "--backend",
    type=click.Choice(["inprocess", "docker"]),
    default="inprocess",
    show_default=True,
    help="Where the hosts run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@friendly
def check(args: tuple[str, ...], backend: str, as_json: bool) -> None:
    """Run the checks of topology FILEs: all of them, or only those NAMEd.

    Each check runs on a fresh lab of its own, step by step, and stops at its first
    failing step. Arguments ending in .yaml or .yml (or naming a file) are topology
    files; the others are check names. Exits 0 when every check passes, 1 when any
    fails, 2 for an invalid topology or an unknown check name.
    """
    import time

    from lab.harness.checks import (
        CheckResult,
        StepResult,
        UnknownCheckError,
        check_header,
        run_check,
        select_checks,
    )
    from lab.topology import load

    files = [a for a in args if _is_topology_file(a)]
    names = list(dict.fromkeys(a for a in args if not _is_topology_file(a)))
    if not files:
        raise click.UsageError("give at least one topology FILE (ending in .yaml or .yml)")
    loaded = []
    problems = []
    for file in files:
        try:
            loaded.append((file, load(file).model))
        except TopologyError as exc:
            problems += exc.problems
    if problems:
        raise TopologyError(problems)
    if not as_json and not names:
        for file, topology in loaded:
            if not topology.checks:
                click.echo(f"{file}: no checks")
    plan: list[tuple[str, Any, list[str]]] = []
    if len(loaded) == 1:
        file, topology = loaded[0]
        plan.append((file, topology, select_checks(topology, names, file)))
    else:
        unknown = [n for n in names if not any(n in t.checks for _, t in loaded)]
        if unknown:
            known = "; ".join(f"{f}: {', '.join(t.checks) or '(none)'}" for f, t in loaded)
            raise UnknownCheckError(
                f"unknown check{'s' if len(unknown) > 1 else ''}"
                f" {', '.join(repr(n) for n in unknown)}; known checks: {known}"
            )
        for file, topology in loaded:
            chosen = [n for n in names if n in topology.checks] if names else list(topology.checks)
            if chosen:
                plan.append((file, topology, chosen))

    def show(step: StepResult) -> None:
        click.echo(step.report())

    started = time.monotonic()
    results: list[CheckResult] = []
    for file, topology, chosen in plan:
        for name in chosen:
            if not as_json:
                if results:
                    click.echo()
                click.echo(check_header(name, file, backend))
            result = run_check(
                topology, name, backend=backend, file=file, on_step=None if as_json else show
            )
            results.append(result)
            if not as_json:
                if result.error:
                    click.echo("\n".join("  " + line for line in result.error.splitlines()))
                click.echo(result.summary())
    failed = sum(1 for r in results if not r.ok)
    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        took = time.monotonic() - started
        click.echo(
            f"\n{len(results)} check{'s' if len(results) != 1 else ''}:"
            f" {len(results) - failed} passed, {failed} failed ({took:.2f}s)"
        )
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------------------------------
# running labs

lab_option = click.option(
    "--lab",
    "lab_name",
    metavar="NAME",
    help="The running lab to act on (default: the only one running).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _print_status(status: dict[str, Any]) -> None:
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
            f"{svc}={ep}" for svc, ep in node["endpoints"].items() if "@" not in svc
        )
        rows.append(
            (name, node["hostname"], ",".join(node.get("services", [])), addresses, endpoints)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for name, link in status.get("links", {}).items():
        click.echo(f"  link {name}: {link['state']} ({link.get('node')} on {link.get('network')})")
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


def choose_backend(backend: str) -> str:
    """`auto`: Docker when an engine answers, in-process otherwise; says which."""
    if backend != "auto":
        return backend
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:
        click.echo(f"backend: inprocess (no Docker engine answers: {type(exc).__name__})", err=True)
        return "inprocess"
    click.echo(
        "backend: docker (a Docker engine answers; --backend inprocess, or make lab-up"
        " BACKEND=inprocess, to run in this process)",
        err=True,
    )
    return "docker"


@main.command()
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
@json_option
@friendly
def up(file: Path, backend: str, name: str | None, detach: bool, as_json: bool) -> None:
    """Bring up the lab of FILE, print its endpoints, and hold it until Ctrl-C.

    A person on this machine who connects to an endpoint is seen by the lab as the
    topology's operator (a LAN client), so the seed articles' telnet sessions work.
    """
    from lab.harness.control import ControlServer, find_lab, registry_dir, request, running_labs
    from lab.topology import load

    topology = load(file).model
    backend = choose_backend(backend)
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
        if as_json:
            emit_json(status)
        else:
            _print_status(status)
            click.echo(
                f"  Running in the background (pid {proc.pid}); `maillab down --lab {name}`"
                " stops it."
            )
        return

    import signal

    from lab.harness.lab import Lab

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    options: dict[str, Any] = {}
    progress = None
    if backend == "docker":
        from lab.backends.docker.image import Progress

        progress = options["progress"] = Progress(quiet=as_json)
    lab = Lab.up(topology, backend=backend, **options)
    if progress is not None:
        progress.clear()  # the status table starts on a line of its own
    lab.source = file
    server = ControlServer(lab, name, file)
    try:
        lab._run(server.start())
        status = lab.status()
        if as_json:
            emit_json(status)
        else:
            _print_status(status)
            click.echo("  Press Ctrl-C to stop the lab.")
        sys.stdout.flush()
        assert server.stopped is not None
        lab._run(server.stopped.wait(), timeout=None)
        click.echo("stopping (maillab down)")
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        try:
            lab._run(server.close())
        finally:
            lab.down()


@main.command()
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


@main.command()
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option(
    "--all-hosts",
    is_flag=True,
    help="Also remove labs owned by processes of other hosts (which cannot be checked here).",
)
@json_option
@friendly
def gc(dry_run: bool, all_hosts: bool, as_json: bool) -> None:
    """Remove the Docker objects of labs whose owner is gone.

    Only containers, networks and volumes labelled by maillab are looked at, and of
    those only the ones whose owning process (the `maillab up` or test run that brought
    the lab up) no longer exists on this machine are removed. Running labs, labs of
    other hosts (unless --all-hosts) and anything not made by maillab are left alone.
    """
    import docker
    import docker.errors
    import requests

    from lab.backends.docker import gc as dockergc

    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        raise LabError(f"no Docker engine answers ({exc}); is Docker running?") from None
    try:
        runs = dockergc.gc(client, dry_run=dry_run, include_foreign_hosts=all_hosts)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise LabError(f"Docker engine error: {exc}") from None
    finally:
        client.close()
    errors = [f"run {r.run}: {e}" for r in runs for e in r.errors]
    if as_json:
        emit_json([r.to_json() for r in runs])
    elif not runs:
        click.echo("nothing to collect")
    else:
        rows: list[tuple[str, ...]] = [("RUN", "LAB", "OWNER", "CONTAINERS", "NETWORKS", "VOLUMES")]
        rows += [(r.run, r.lab, r.owner, *(str(n) for n in r.counts)) for r in runs]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        click.echo("would remove:" if dry_run else "removed:")
        for row in rows:
            click.echo("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    if errors:
        raise LabError("some objects could not be removed:\n  " + "\n  ".join(errors))


def _container(lab_name: str | None, node: str) -> tuple[str, str]:
    """(lab name, container name) of NODE in a running Docker lab."""
    from lab.harness.control import request

    status = request(lab_name, "status")
    name = str(status["name"])
    if node not in status["nodes"]:
        raise LabError(f"unknown node {node!r}; expected one of: {', '.join(status['nodes'])}")
    if status["backend"] != "docker":
        raise LabError(
            f"lab {name!r} runs on the {status['backend']} backend, where hosts are not"
            " machines of their own; bring it up with --backend docker for a shell, or"
            " connect to the endpoints `maillab status` prints (telnet, swaks)"
        )
    return name, str(status["nodes"][node]["container"])


def _docker_cli() -> str:
    import shutil

    found = shutil.which("docker")
    if found is None:
        raise LabError("this needs the docker command-line client (Debian package docker.io)")
    return found


@main.command()
@lab_option
@click.argument("node")
@friendly
def shell(lab_name: str | None, node: str) -> None:
    """Open a shell on NODE's container (telnet, swaks, dig, nc, mail, fetchmail are there)."""
    _, container = _container(lab_name, node)
    docker = _docker_cli()
    flags = "-it" if sys.stdin.isatty() else "-i"
    os.execvp(docker, [docker, "exec", flags, "-e", "TERM", container, "bash", "-l"])


@main.command("exec", context_settings={"ignore_unknown_options": True})
@lab_option
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@friendly
def exec_(lab_name: str | None, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on NODE's container: `maillab exec pc1 -- dig MX freeuk.com`.

    Exits with the command's exit status.
    """
    import subprocess

    _, container = _container(lab_name, node)
    docker = _docker_cli()
    flags = ["-i"] + (["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else [])
    sys.exit(subprocess.call([docker, "exec", *flags, container, *command]))


@main.command()
@lab_option
@click.argument("node")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, help="Only the last N lines.")
@friendly
def logs(lab_name: str | None, node: str, follow: bool, tail: int | None) -> None:
    """Print the log of NODE's container (its agent and services)."""
    import docker
    import docker.errors

    _, container_name = _container(lab_name, node)
    try:
        container = docker.from_env().containers.get(container_name)
        if follow:
            for chunk in container.logs(stream=True, follow=True, tail=tail or "all"):
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
        else:
            sys.stdout.write(container.logs(tail=tail or "all").decode("utf-8", "replace"))
    except docker.errors.DockerException as exc:
        raise LabError(f"cannot read the log of {container_name}: {exc}") from None
    except KeyboardInterrupt:
        pass


@main.command()
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
        _print_status(result)


@main.command()
@lab_option
@click.option("--from-node", required=True, help="The node that submits (a client or an MTA).")
@click.option("--mail-from", required=True, help="Envelope sender ('' for the null sender).")
@click.option("--to", "to", multiple=True, required=True, help="Envelope recipient (repeatable).")
@click.option("--subject", default="maillab test", show_default=True)
@click.option("--body", help="Message body text.")
@click.option(
    "--file",
    "eml",
    type=click.Path(exists=True, path_type=Path),
    help="Send this message file as it is.",
)
@click.option("--via", help="Submit to this MTA instead of the node's submit_to.")
@json_option
@friendly
def send(
    lab_name: str | None,
    from_node: str,
    mail_from: str,
    to: tuple[str, ...],
    subject: str,
    body: str | None,
    eml: Path | None,
    via: str | None,
    as_json: bool,
) -> None:
    """Submit a message as FROM-NODE would; print the receiving MTA's queue id."""
    from lab.harness.control import request

    raw = eml.read_text(encoding="utf-8", errors="surrogateescape") if eml else None
    result = request(
        lab_name,
        "send",
        from_node=from_node,
        mail_from=mail_from,
        to=list(to),
        subject=subject,
        body=body,
        raw=raw,
        via=via,
    )
    if as_json:
        emit_json(result)
    elif result["accepted"]:
        click.echo(result["queue_id"])
    else:
        refusals = [result["mail"], *result["rcpt"].values(), result["data"]]
        detail = result["error"] or next(
            (r for r in refusals if r and not r.startswith("2")), "no reply"
        )
        raise LabError(f"not accepted by {result['server']}: {detail}")


@main.command()
@lab_option
@click.argument("link_name", metavar="LINK")
@click.argument("state", type=click.Choice(["up", "down"]))
@friendly
def link(lab_name: str | None, link_name: str, state: str) -> None:
    """Raise or drop LINK; raising runs its on_up hooks (flush, fetch)."""
    from lab.harness.control import request

    result = request(lab_name, "link", link=link_name, state=state)
    click.echo(f"link {result['link']}: {result['state']}")


@main.command()
@lab_option
@click.argument("node")
@json_option
@friendly
def flush(lab_name: str | None, node: str, as_json: bool) -> None:
    """Run NODE's queue now, like `sendmail -q`."""
    from lab.harness.control import request

    result = request(lab_name, "flush", node=node)
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{node}: tried {result['tried']} message(s), {len(result['queue'])} still queued"
        )


@main.command()
@lab_option
@click.argument("node")
@friendly
def fetch(lab_name: str | None, node: str) -> None:
    """Run NODE's fetch jobs now, like fetchmail."""
    from lab.harness.control import request

    result = request(lab_name, "fetch", node=node)
    click.echo(f"{node}: fetched {result['fetched']} message(s)")


@main.command()
@lab_option
@click.argument("node")
@json_option
@friendly
def queue(lab_name: str | None, node: str, as_json: bool) -> None:
    """List NODE's mail queue, like `mailq`."""
    from lab.harness.control import request

    entries = request(lab_name, "queue", node=node)
    if as_json:
        emit_json(
            [
                {k: e[k] for k in ("id", "envelope_from", "recipients", "attempts")} | e
                for e in entries
            ]
        )
        return
    if not entries:
        click.echo(f"{node}: mail queue is empty")
    for e in entries:
        click.echo(f"{e['id']}  <{e['envelope_from']}>  attempts={e['attempts']}")
        for rcpt in e["recipients"]:
            click.echo(f"    {rcpt}")
        if e.get("last_reply"):
            click.echo(f"    ({e['last_reply']})")


@main.command()
@lab_option
@click.argument("node")
@click.argument("user")
@json_option
@friendly
def mailbox(lab_name: str | None, node: str, user: str, as_json: bool) -> None:
    """Show the messages in USER's mailbox on NODE."""
    from lab.harness.control import request

    messages = request(lab_name, "mailbox", node=node, user=user)
    if as_json:
        emit_json(messages)
        return
    if not messages:
        click.echo(f"{user}@{node}: no messages")
    for m in messages:
        click.echo(f"=== {m['id']} (envelope from <{m['envelope_from']}>)")
        click.echo(m["raw"].replace("\r\n", "\n"))


@main.group()
@lab_option
@click.pass_context
def clock(ctx: click.Context, lab_name: str | None) -> None:
    """The lab clock: `maillab clock [--lab NAME] advance DURATION`."""
    ctx.obj = {"lab": lab_name}


@clock.command("advance")
@lab_option
@click.argument("duration")
@click.pass_context
@friendly
def clock_advance(ctx: click.Context, lab_name: str | None, duration: str) -> None:
    """Move the lab clock forward by DURATION (e.g. 30m, 4h, 5d), running due timers.

    --lab may come before or after `advance`.
    """
    from lab.harness.control import request
    from lab.topology.units import parse_duration

    lab_name = lab_name or (ctx.obj or {}).get("lab")

    try:
        parse_duration(duration)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    result = request(lab_name, "clock", advance=duration)
    click.echo(f"advanced {duration}: {result['timers']} timer(s) ran")


@main.command()
@lab_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--kind", help="Only events of this kind (a prefix ending in .* matches a family).")
@json_option
@friendly
def events(lab_name: str | None, follow: bool, kind: str | None, as_json: bool) -> None:
    """Print the lab's events (SMTP dialogue, queue, deliveries, DNS, links)."""
    import time

    from lab.harness.control import request

    since = 0
    while True:
        batch = request(lab_name, "events", since=since)
        for e in batch:
            since = max(since, e["seq"])
            if kind and not (
                e["kind"] == kind or (kind.endswith(".*") and e["kind"].startswith(kind[:-1]))
            ):
                continue
            if as_json:
                click.echo(json.dumps(e, default=str))
            else:
                detail = " ".join(f"{k}={v}" for k, v in e["data"].items())
                click.echo(f"#{e['seq']} {e['node']:<10} {e['kind']:<22} {detail}")
        if not follow:
            return
        time.sleep(0.5)


@main.command()
@lab_option
@click.argument("ref", metavar="ID")
@json_option
@friendly
def trace(lab_name: str | None, ref: str, as_json: bool) -> None:
    """Follow one message (a queue id or <Message-ID>) hop by hop."""
    from lab.harness.control import request

    result = request(lab_name, "trace", ref=ref)
    if as_json:
        emit_json(result)
        return
    if not result:
        raise LabError(f"no events about {ref!r}")
    for e in result:
        detail = " ".join(f"{k}={v}" for k, v in e["data"].items())
        click.echo(f"#{e['seq']} {e['node']:<10} {e['kind']:<22} {detail}")


# ---------------------------------------------------------------------------------------
# Docker images


@main.group()
def images() -> None:
    """The Docker images of the Docker backend (see images/README.md)."""


@images.command("build")
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild even if the image is there: no Docker layer cache, fresh dependency wheels.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@json_option
@friendly
def images_build(force: bool, quiet: bool, as_json: bool) -> None:
    """Build the node image (maillab-node:<content hash>) unless it is already there.

    Makes the base image debian:bookworm-slim with debootstrap when it is missing and no
    registry answers (needs root), and downloads maillab's dependencies as wheels on this
    machine. Prints the image's tag.
    """
    from lab.backends.docker import image as lab_images

    client = lab_images.docker_client()
    try:
        with lab_images.Progress(quiet=quiet) as progress:
            result = lab_images.make_node_image(client, progress=progress, force=force)
    finally:
        client.close()
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.tag)


@images.command("list")
@json_option
@friendly
def images_list(as_json: bool) -> None:
    """List maillab's images in the Docker engine: tag, id, size and creation time."""
    from lab.backends.docker import image as lab_images

    client = lab_images.docker_client()
    try:
        rows = lab_images.list_images(client)
    finally:
        client.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no maillab images (build one with `maillab images build`)")
        return
    table = [("TAG", "IMAGE ID", "SIZE", "CREATED")]
    table += [(r["tag"], r["id"], f"{r['size'] / 1e6:.0f} MB", r["created"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
