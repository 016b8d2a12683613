"""Hands on the Docker backend's containers: shell, exec, logs; and gc for what a lab
left behind."""

from __future__ import annotations

import os
import sys

import click

from lab.cli.output import emit_json, friendly, json_option, lab_option, print_table
from lab.errors import LabError


@click.command()
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
        click.echo("would remove:" if dry_run else "removed:")
        print_table(rows, indent="  ")
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


@click.command()
@lab_option
@click.argument("node")
@friendly
def shell(lab_name: str | None, node: str) -> None:
    """Open a shell on NODE's container (telnet, swaks, dig, nc, mail, fetchmail are there)."""
    _, container = _container(lab_name, node)
    docker = _docker_cli()
    flags = "-it" if sys.stdin.isatty() else "-i"
    os.execvp(docker, [docker, "exec", flags, "-e", "TERM", container, "bash", "-l"])


@click.command("exec", context_settings={"ignore_unknown_options": True})
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


@click.command()
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
