"""maillab benchmarks: `make bench` (python -m bench [--quick] [--write docs/benchmarks.md]).

Each figure is measured inside this process on the in-process backend, with durable
queues (fsync), on loopback; the targets are the project's:

- home-dialup up and down:   median up <= 100 ms, down <= 50 ms
- end-to-end rate:           client -> hub -> ISP -> remote MX, 1 KB messages, at least
                             0.25 x a bare aiosmtpd sink fed by the same client, same run
                             (STARTTLS everywhere), 0.33 x without TLS
- queued then flushed:       10,000 messages queued while the link is down, link up, all
                             delivered once (none lost, none doubled), >= 250 msg/s
- a day of dial-ups:         hourly 5-minute dials (topologies/hourly-dialup.yaml), 1,000
                             messages queued: `clock advance 1d` in <= 10 s, each
                             delivered once (bench/dialup.py)
- a large lab:               100 clients and 20 remote domains up in <= 1 s, RSS <= 300 MB;
                             1,000 MTAs and 100 clients up in <= 0.5 s, RSS <= 150 MB
                             (bench/big.py)
- reset, Docker up and down per phase, the test suite: bench/reset.py, bench/docker.py,
  bench/suite.py
- the web dashboard:         an event reaches the open page in <= 200 ms (median), the
                             page stays responsive with 10,000 events, the API's wait
                             answers within 50 ms of the event (bench/web.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.big import bench_big, bench_big_apart
from bench.big import rows as big_rows
from bench.dialup import bench_dial_day
from bench.dialup import rows as dial_rows
from lab.backends.inprocess.backend import InProcessBackend
from lab.backends.inprocess.net import Endpoint
from lab.services.client import build_message, submit
from lab.topology import load
from lab.topology.model import StartTls

ROOT = Path(__file__).resolve().parents[1]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
BODY_1K = "All work and no play makes Jack a dull boy. All work and no play.\n" * 15  # ~1 KB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_up_down(rounds: int) -> dict[str, Any]:
    topology = load(HOME_DIALUP).model
    ups, downs = [], []
    for _ in range(rounds):
        backend = InProcessBackend(topology)
        t0 = time.perf_counter()
        await backend.up()
        t1 = time.perf_counter()
        await backend.down()
        t2 = time.perf_counter()
        ups.append((t1 - t0) * 1000)
        downs.append((t2 - t1) * 1000)
    return {
        "rounds": rounds,
        "up_ms": statistics.median(ups),
        "down_ms": statistics.median(downs),
        "up_max_ms": max(ups),
        "down_max_ms": max(downs),
    }


async def _send_many(
    backend: InProcessBackend, node: str, count: int, concurrency: int, to: str, mail_from: str
) -> int:
    sem = asyncio.Semaphore(concurrency)
    accepted = 0

    async def one(i: int) -> None:
        nonlocal accepted
        content = await backend.message(
            node, mail_from=mail_from, to=[to], subject=f"bench {i}", body=BODY_1K
        )
        async with sem:
            result = await backend.send(node, mail_from=mail_from, to=[to], content=content)
        if result.accepted:
            accepted += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return accepted


async def _wait_delivered(
    backend: InProcessBackend, node: str, count: int, timeout: float
) -> float:
    """Time at which `count` messages have been delivered to mailboxes on `node`."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    seen = sum(1 for e in backend.events.events if e.kind == "mailbox.delivered" and e.node == node)

    def listener(event: Any) -> None:
        nonlocal seen
        if event.kind == "mailbox.delivered" and event.node == node:
            seen += 1
            if seen >= count and not done.done():
                done.set_result(time.perf_counter())

    if seen >= count:
        return time.perf_counter()
    backend.events.listen(listener)
    try:
        return float(await asyncio.wait_for(done, timeout))
    except TimeoutError:
        raise TimeoutError(f"only {seen} of {count} delivered on {node}") from None


class _SinkHandler:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 Ok: queued"


async def _sink_rate(backend: InProcessBackend, count: int, concurrency: int, tls: bool) -> float:
    """A bare aiosmtpd sink on the hub's LAN address, fed by the same client code
    (lab.services.client.submit) from the same client host; with `tls` it offers STARTTLS
    with a lab certificate, as the lab's MTAs do."""
    handler = _SinkHandler()
    loop = asyncio.get_running_loop()
    hub_iface = backend.vnet.interfaces[("hub", "lan")]
    context = backend.ca.server_context("sink.lab.test") if tls and backend.ca else None
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.lab.test", loop=loop, tls_context=context),
        host=hub_iface.real_address,
        port=0,
    )
    sink_port = server.sockets[0].getsockname()[1]
    sink_lab_port = 2525
    backend.vnet.endpoints[(hub_iface.lab_address, sink_lab_port, "tcp")] = Endpoint(
        hub_iface.real_address, sink_port, ("hub", "lan")
    )
    host = backend.hosts["pc1"]
    sem = asyncio.Semaphore(concurrency)
    content = build_message(
        mail_from="eddy@shofar.org.uk",
        to=["paulmidgley@freeuk.com"],
        subject="sink",
        body=BODY_1K,
        headers=None,
        hostname=host.hostname,
        date=time.time(),
    )

    async def sink_one() -> None:
        async with sem:
            result = await submit(
                host,
                hub_iface.lab_address,
                server_name="sink.lab.test",
                port=sink_lab_port,
                mail_from="eddy@shofar.org.uk",
                recipients=["paulmidgley@freeuk.com"],
                content=content,
            )
        if not result.accepted:
            raise RuntimeError(f"the sink refused: {result.to_json()}")

    t0 = time.perf_counter()
    await asyncio.gather(*(sink_one() for _ in range(count)))
    sink_time = time.perf_counter() - t0
    server.close()
    del backend.vnet.endpoints[(hub_iface.lab_address, sink_lab_port, "tcp")]
    assert handler.count == count, f"sink got {handler.count} of {count}"
    return count / sink_time


async def bench_rate(
    count: int,
    concurrency: int,
    tls: bool,
    rounds: int = 5,
    *,
    durable: bool = True,
    disk_process: bool = True,
) -> dict[str, Any]:
    """End to end pc1 -> hub -> ISP -> freeuk, against the sink in the same run. With
    `tls` every hop uses STARTTLS (the topology's default) and so does the sink; without,
    STARTTLS is off everywhere and the sink offers none. Sink and lab take turns,
    `rounds` times each, and the medians are compared, so that a passing disturbance of
    the machine does not decide the ratio. `durable=False` (the queues written but not
    fsync'd) shows what the fsyncs cost the path; `disk_process=False` (the hosts' disk
    work in threads of this process, as before the disk process) what the disk process
    gives it."""
    topology = load(HOME_DIALUP).model
    topology.links["dialup"].state = "up"
    if not tls:
        for node in topology.nodes.values():
            node.policy.starttls = StartTls.off
    backend = InProcessBackend(topology, durable=durable, disk_process=disk_process)
    await backend.up()
    sink_rates: list[float] = []
    lab_rates: list[float] = []
    accepted = 0
    try:
        for _ in range(rounds):
            sink_rates.append(await _sink_rate(backend, count, concurrency, tls))
            before = len(await backend.mailbox("freeuk", "paulmidgley"))
            t0 = time.perf_counter()
            accepted += await _send_many(
                backend, "pc1", count, concurrency, "paulmidgley@freeuk.com", "eddy@shofar.org.uk"
            )
            t1 = await _wait_delivered(backend, "freeuk", before + count, timeout=600)
            lab_rates.append(count / (t1 - t0))
            await backend.settle()
        delivered = len(await backend.mailbox("freeuk", "paulmidgley"))
    finally:
        await backend.down()
    sink_rate, lab_rate = statistics.median(sink_rates), statistics.median(lab_rates)
    return {
        "tls": tls,
        "durable": durable,
        "disk_process": disk_process,
        "messages": count,
        "rounds": rounds,
        "concurrency": concurrency,
        "accepted": accepted,
        "delivered": delivered,
        "sink_rate": sink_rate,
        "lab_rate": lab_rate,
        "sink_rates": sink_rates,
        "lab_rates": lab_rates,
        "ratio": lab_rate / sink_rate,
    }


async def bench_flush(count: int, concurrency: int) -> dict[str, Any]:
    topology = load(HOME_DIALUP).model
    backend = InProcessBackend(topology)
    await backend.up()
    try:
        t0 = time.perf_counter()
        accepted = await _send_many(
            backend, "pc1", count, concurrency, "paulmidgley@freeuk.com", "eddy@shofar.org.uk"
        )
        await backend.settle()
        queued = len(await backend.queue("hub"))
        t1 = time.perf_counter()
        cpu1 = time.thread_time()  # the loop's thread: every host's protocol work
        await backend.set_link("dialup", True)
        t2 = await _wait_delivered(backend, "freeuk", count, timeout=1800)
        busy = (time.thread_time() - cpu1) / (t2 - t1)
        await backend.settle()
        box = await backend.mailbox("freeuk", "paulmidgley")
        ids = [m["raw"].split("Message-ID: ", 1)[1].split("\r\n", 1)[0] for m in box]
        left = sum([len(await backend.queue(n)) for n in ("hub", "isp", "freeuk")])
    finally:
        await backend.down()
    return {
        "messages": count,
        "accepted": accepted,
        "queued_while_down": queued,
        "queue_seconds": t1 - t0,
        "flush_seconds": t2 - t1,
        "rate": count / (t2 - t1),
        "loop_busy": busy,
        "delivered": len(box),
        "unique": len(set(ids)),
        "left_in_queues": left,
    }


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def _rates(rates: list[float]) -> str:
    return "runs " + ", ".join(f"{r:.0f}" for r in rates)


def rate_rows(rate: dict[str, Any], how: str, target: float = 0.25) -> list[str]:
    runs = rate["rounds"]
    return [
        f"| bare aiosmtpd sink, same client, {how} ({rate['messages']} x 1 KB,"
        f" {rate['concurrency']} at a time; median of {runs}) | {rate['sink_rate']:.0f} msg/s"
        f" ({_rates(rate['sink_rates'])}) | baseline | |",
        f"| end to end pc1 -> hub -> ISP -> freeuk MX, {how} (median of {runs}) |"
        f" {rate['lab_rate']:.0f} msg/s ({_rates(rate['lab_rates'])};"
        f" {rate['delivered']} delivered) | | |",
        f"| ratio end to end / sink, {how} | {rate['ratio']:.2f} | >= {target:.2f} |"
        f" {verdict(rate['ratio'] >= target)} |",
    ]


def comparison_rows(results: dict[str, Any]) -> list[str]:
    """The same path with the disk work in threads of the lab's process, and with the
    queues and mailboxes written but not fsync'd: figures to explain the ratio, not
    targets."""
    rows = []
    for key, how in (
        ("rate_threads", "the hosts' disk work in threads of the lab's process"),
        ("rate_nosync", "queues and mailboxes not fsync'd (`durable: false`)"),
    ):
        rate = results.get(key)
        if rate is not None:
            rows.append(
                f"| for comparison: the same, no TLS, {how}; median of {rate['rounds']} |"
                f" {rate['lab_rate']:.0f} msg/s ({_rates(rate['lab_rates'])}); ratio"
                f" {rate['ratio']:.2f} (sink {rate['sink_rate']:.0f} msg/s) | | |"
            )
    return rows


def report(results: dict[str, Any], command: str) -> str:
    ud, flush, big = (results[k] for k in ("up_down", "flush", "big"))
    flush_ok = (
        flush["rate"] >= 250
        and flush["unique"] == flush["messages"] == flush["delivered"]
        and flush["left_in_queues"] == 0
    )
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `{command}` on {platform.node()} ({os.cpu_count()} cores,"
        f" Python {platform.python_version()}), {time.strftime('%Y-%m-%d')}.",
        f"Machine yardstick: ten million additions in a pure-Python loop take"
        f" {results['python_speed']:.2f} s here (rates scale roughly with it).",
        "In-process backend, durable queues (every 250 is fsync'd), loopback only.",
        "Regenerate with `make bench`.",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
        f"| home-dialup up (median of {ud['rounds']}) | {ud['up_ms']:.1f} ms (max"
        f" {ud['up_max_ms']:.1f}) | <= 100 ms | {verdict(ud['up_ms'] <= 100)} |",
        f"| home-dialup down (median of {ud['rounds']}) | {ud['down_ms']:.1f} ms (max"
        f" {ud['down_max_ms']:.1f}) | <= 50 ms | {verdict(ud['down_ms'] <= 50)} |",
        *rate_rows(results["rate_tls"], "STARTTLS on every hop and on the sink"),
        *rate_rows(results["rate_plain"], "no TLS anywhere", 0.33),
        *comparison_rows(results),
        f"| {flush['messages']} queued while down, then link up | {flush['rate']:.0f} msg/s"
        f" ({flush['flush_seconds']:.1f} s; {flush['delivered']} delivered,"
        f" {flush['unique']} unique, {flush['left_in_queues']} left queued) | >= 250 msg/s,"
        f" none lost or doubled | {verdict(flush_ok)} |",
        *dial_rows(results["dialup"], verdict),
        f"| lab of {big['clients']} clients + {big['domains']} remote domains: up |"
        f" {big['up_seconds'] * 1000:.0f} ms ({big['nodes']} nodes) | <= 1 s |"
        f" {verdict(big['up_seconds'] <= 1)} |",
        f"| same lab: resident memory | {big['rss_mb']:.0f} MB (process total) | <= 300 MB |"
        f" {verdict(big['rss_mb'] <= 300)} |",
        *big_rows(results["big_1000"]),
        "",
        "Notes:",
        f"- Queueing the {flush['messages']} messages while the link was down took"
        f" {flush['queue_seconds']:.1f} s ({flush['messages'] / flush['queue_seconds']:.0f} msg/s"
        " accepted by the hub, each fsync'd before 250).",
        "- The rate benchmark runs both the sink and the lab in this one process and loop, so"
        " the client's own cost is in both figures alike; sink and lab take turns, five"
        " times each, and the medians are compared (the runs are listed).",
        f"- During the flush the event loop's thread (every host's SMTP, TLS, routing and"
        f" events) was busy {flush['loop_busy'] * 100:.0f}% of the time; the disk work runs"
        " in the lab's disk process (group commit of file and directory fsyncs).",
        "- The disk process (lab/services/diskproc.py): every host's queue files, state"
        " files, removals and Maildir deliveries go to one child process as pickled calls"
        " (one write to its pipe per turn of the event loop), which does them in order and"
        " in groups, the new files of a group fsync'd side by side (on a file system with"
        " a journal their fsyncs share its commits) and each directory once; the loop reads the"
        " answers between its other work. Before it, each host had a disk thread in the"
        " lab's process, and that thread gave up and took back the interpreter's lock"
        " around every open, write, fsync, rename and unlink (50 to 75 switches per"
        " message): the loop's socket calls waited for the lock (a send cost 37 us against"
        " 7 in the sink's run, under cProfile). The row with the disk work in threads is"
        " that design, measured in this run.",
        "- Spare files (lab/services/diskjobs.py `retire`): a queue's finished files are"
        " kept in DIR/.spare and written over by its next messages. This machine's ext4 has"
        " no journal, and there the kernel gives a freed inode out again only seconds to"
        " minutes later, stepping over each such one at every new file of the block group:"
        " with a file made and removed per message and hop, a create took 700 us after a"
        " few thousand messages (20 us in a quiet directory), and the 250s waited for it."
        " A file written over keeps its inode: nothing freed, nothing stepped over.",
        "- The event history (lab/runtime/events.py `History`) is kept as tuples of strings"
        " and numbers with their data beside them, which Python's garbage collector stops"
        " visiting; kept as Event instances (40 a message), they made every full collection"
        " longer than the last, 15% of the loop's time over a few thousand messages.",
        "- What is left is the loop's own work for three hops (some 2.2 to 2.5 ms of CPU per"
        " message here): aiosmtpd and the SMTP clients parsing each command and reply, the"
        " socket calls, 40 events per message (26 of them smtp.command and smtp.reply),"
        " the policies, routing and queue of each MTA; no function of the lab's own takes"
        " more than a few percent. The fsyncs still cost the path through their latency"
        " (a 250 waits for its file and directory), and their system time varies with this"
        " machine's disk: the runs of one benchmark spread by 20% or more.",
        "- The big labs' sample messages (last client to last domain) were"
        f" {'delivered' if big['sample_delivered'] else 'NOT delivered'} (100 + 20) and"
        f" {'delivered' if results['big_1000']['sample_delivered'] else 'NOT delivered'}"
        " (1,000 MTAs; `python -m bench.big`). A host's TLS certificate is issued when it"
        " is first connected to, its queue directory made with its first message.",
        "",
        *web_report(results),
        *links_report(results),
        *reset_report(results),
        *docker_report(results),
        *real_report(results),
        *suite_report(results),
    ]
    return "\n".join(lines)


def links_report(results: dict[str, Any]) -> list[str]:
    from bench.links import report as link_figures

    if "links" not in results:
        return []
    rate = results["rate_plain"]  # the mail path unimpaired: the figure above, this run
    return link_figures({**results["links"], "path": rate})


def web_report(results: dict[str, Any]) -> list[str]:
    from bench.web import report as web_figures

    return web_figures(results)


def suite_report(results: dict[str, Any]) -> list[str]:
    from bench.suite import report as suite_figures

    return suite_figures(results["suite"]) if "suite" in results else []


def reset_report(results: dict[str, Any]) -> list[str]:
    from bench.reset import report as reset_figures

    return reset_figures(results.get("reset", {}))


def docker_report(results: dict[str, Any]) -> list[str]:
    from bench.docker import DOWN_TARGET, UP_TARGET, phase_rows

    lines = ["## Docker backend", ""]
    docker, built = results.get("docker"), results.get("images")
    if not isinstance(docker, dict) or not isinstance(built, dict):
        return [*lines, f"Not measured: {results.get('docker_error', 'no Docker engine')}.", ""]
    lines += [
        "home-dialup (8 hosts: 8 containers, a switch container and the operator's network),"
        " node image already built; wall time of `Lab.up` / `Lab.down` in this process, and"
        " of each of their phases (medians; `python -m bench.docker`).",
        "",
        "| benchmark | result | target | verdict |",
        "|---|---|---|---|",
        f"| home-dialup up (median of {docker['rounds']}) | {docker['up_s']:.2f} s (max"
        f" {docker['up_max_s']:.2f}) | <= {UP_TARGET:.0f} s |"
        f" {verdict(docker['up_s'] <= UP_TARGET)} |",
        f"| home-dialup down (median of {docker['rounds']}) | {docker['down_s']:.2f} s (max"
        f" {docker['down_max_s']:.2f}) | <= {DOWN_TARGET} s |"
        f" {verdict(docker['down_s'] <= DOWN_TARGET)} |",
        *phase_rows(docker),
    ]
    if "cold_build_s" in built:
        lines.append(
            f"| node image, cold: no images, no wheel cache (debootstrap, wheels, every layer)"
            f" | {built['cold_build_s']:.0f} s | | |"
        )
    lines += [
        f"| node image, warm: nothing changed (`maillab images build`) |"
        f" {built['warm_noop_s'] * 1000:.0f} ms | | |",
        f"| node image after a code change (the maillab layer only) |"
        f" {built['code_change_rebuild_s']:.1f} s | | |",
        "",
    ]
    return lines


def real_report(results: dict[str, Any]) -> list[str]:
    from bench.realmta import report as real_software_report

    if "real" not in results:
        return []
    return real_software_report(results["real"])


def python_speed() -> float:
    """Seconds for ten million additions in a pure-Python loop (best of three): a
    yardstick for comparing these figures across machines."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


async def run_all(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"python_speed": python_speed()}
    # first, so that the resident memory is the big lab's and not what earlier runs left
    print("100 clients, 20 domains ...", file=sys.stderr)
    results["big"] = await bench_big(100, 20)
    print(results["big"], file=sys.stderr)
    print("1,000 MTAs, 100 clients (a process of its own) ...", file=sys.stderr)
    results["big_1000"] = await asyncio.to_thread(bench_big_apart, 100, 998)
    print(results["big_1000"], file=sys.stderr)
    print("home-dialup up/down ...", file=sys.stderr)
    results["up_down"] = await bench_up_down(5 if quick else 30)
    print(results["up_down"], file=sys.stderr)
    for tls in (True, False):
        key = "rate_tls" if tls else "rate_plain"
        print(f"end-to-end rate vs sink ({key}) ...", file=sys.stderr)
        results[key] = await bench_rate(100 if quick else 1000, 8, tls)
        print(results[key], file=sys.stderr)
    print("end-to-end rate vs sink, disk work in threads ...", file=sys.stderr)
    results["rate_threads"] = await bench_rate(100 if quick else 1000, 8, False, disk_process=False)
    print(results["rate_threads"], file=sys.stderr)
    print("end-to-end rate vs sink, queues not fsync'd ...", file=sys.stderr)
    results["rate_nosync"] = await bench_rate(100 if quick else 1000, 8, False, durable=False)
    print(results["rate_nosync"], file=sys.stderr)
    print("queued while down, then flushed ...", file=sys.stderr)
    results["flush"] = await bench_flush(500 if quick else 10_000, 16)
    print(results["flush"], file=sys.stderr)
    print("a day of hourly dial-ups, clock advance 1d ...", file=sys.stderr)
    results["dialup"] = await bench_dial_day(1000)
    print(results["dialup"], file=sys.stderr)
    return results


def run_docker(quick: bool, cold: bool) -> dict[str, Any]:
    """The Docker figures, when an engine answers (outside the asyncio loop: Lab runs its own)."""
    from bench.docker import bench_docker_up_down
    from bench.images import bench_images
    from bench.realmta import run_all as run_real
    from lab.errors import LabError

    results: dict[str, Any] = {}
    try:
        print("node image build times ...", file=sys.stderr)
        results["images"] = bench_images(cold=cold)
        print(results["images"], file=sys.stderr)
        print("Docker home-dialup up/down ...", file=sys.stderr)
        results["docker"] = bench_docker_up_down(3 if quick else 7)
        print(results["docker"], file=sys.stderr)
    except LabError as exc:
        results["docker_error"] = str(exc)
        return results
    try:
        results["real"] = run_real(3 if quick else 5, 150 if quick else 500)
    except LabError as exc:
        results["real"] = {"error": str(exc)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    parser.add_argument(
        "--no-cold", action="store_true", help="skip the cold node image build (about a minute)"
    )
    parser.add_argument("--docker-only", action="store_true", help="only the Docker figures")
    parser.add_argument(
        "--no-suite",
        action="store_true",
        help="do not run the in-process test suite (make test's reports are still read)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    if args.docker_only:
        results = run_docker(args.quick, cold=not args.no_cold)
        print("\n".join(docker_report(results)))
        print("\n".join(real_report(results)))
        return
    results = asyncio.run(run_all(args.quick))
    from bench.web import run_safely as run_web

    print("web dashboard and API ...", file=sys.stderr)
    results["web"] = run_web(args.quick)  # outside asyncio.run: the Lab runs its own loop
    print(results["web"], file=sys.stderr)
    from bench.links import run_modems

    print("100 KB over 33.6 kbit/s ...", file=sys.stderr)
    results["links"] = {"modem": run_modems(["inprocess", "docker"])}
    print(results["links"], file=sys.stderr)
    results.update(run_docker(args.quick, cold=not args.no_cold))
    from bench.reset import run_all as run_reset

    results["reset"] = run_reset(5 if args.quick else 10, docker="docker" in results)
    from bench.suite import run_all as run_suite

    results["suite"] = run_suite(run=not (args.quick or args.no_suite))
    flags = [
        f
        for f, on in (
            ("--quick", args.quick),
            ("--no-cold", args.no_cold),
            ("--no-suite", args.no_suite),
        )
        if on
    ]
    command = "make bench" + (f" (python -m bench {' '.join(flags)})" if flags else "")
    text = report(results, command)
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
