"""Run a topology's `checks:`: each named check on a fresh lab, step by step.

    from lab.harness.checks import run_check
    from lab.topology import load

    result = run_check(load("topologies/home-dialup.yaml").model, "queued-while-down")
    print(result.report())

Every check gets a lab of its own, brought up for it and stopped after it, so checks are
independent of each other and of their order. The steps run in file order through the
Lab API only (send, link, clock, flush, fetch, the assertions, mailbox and trace), so a
check means the same on every backend. The first step that fails stops the check; the
steps after it are reported as not run. A failed step says what was expected, what
happened instead, and shows the trace of the last message sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab.errors import LabError
from lab.harness.describe import (
    bounced_words,
    delivered_words,
    describe,
    join_addresses,
)
from lab.harness.lab import Lab, LabAssertionError
from lab.harness.pool import LabPool
from lab.harness.refusals import await_refusal, refusal, rejected_words
from lab.harness.reports import dsn_mismatch
from lab.runtime.events import Event, format_events
from lab.services.client import SubmitResult, attachment_text
from lab.topology.checks import (
    BouncedExpect,
    DeliveredExpect,
    Expect,
    QueuedExpect,
    RejectedExpect,
    SendStep,
    Step,
)
from lab.topology.model import Topology
from lab.topology.units import format_duration

Status = Literal["passed", "failed", "not run"]
TRACE_HEAD, TRACE_TAIL = 10, 40  # a long trace (days of retries) is shown cut in the middle
MARKS: dict[str, str] = {"passed": "PASS", "failed": "FAIL", "not run": "----"}


class UnknownCheckError(LabError):
    """A check name that the topology does not define."""

    exit_code = 2


class StepFailed(Exception):
    """A step whose outcome is not what the check expects; the message explains."""


@dataclass
class StepResult:
    """One step of a check: what it was, whether it held, and why not."""

    index: int
    description: str
    status: Status = "not run"
    detail: str = ""
    trace: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "description": self.description,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "trace": self.trace,
            "duration": round(self.duration, 4),
        }

    def report(self, indent: str = "  ") -> str:
        """This step as text: one line, and for a failure what was expected and the trace."""
        head = f"{indent}{MARKS[self.status]}  {self.index}. {self.description}"
        if self.status == "not run":
            return f"{head} (not run)"
        if self.status == "passed":
            return f"{head}: {self.detail}" if self.detail else head
        pad = indent + " " * 6
        lines = [head]
        lines += [pad + line for line in self.detail.splitlines()]
        if self.trace:
            lines += [pad + line for line in self.trace.splitlines()]
        return "\n".join(lines)


@dataclass
class CheckResult:
    """One check run on its own lab: every step's result, in order."""

    name: str
    topology: str
    steps: list[StepResult] = field(default_factory=list)
    duration: float = 0.0
    file: str | None = None
    backend: str = "inprocess"
    error: str = ""  # the lab could not be brought up or stopped
    seed: int | None = None  # what the run's chances were drawn from: --seed replays it

    @property
    def ok(self) -> bool:
        return not self.error and all(s.ok for s in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "topology": self.topology,
            "file": self.file,
            "backend": self.backend,
            "ok": self.ok,
            "duration": round(self.duration, 4),
            "error": self.error,
            "seed": self.seed,
            "steps": [s.to_json() for s in self.steps],
        }

    def header(self) -> str:
        return check_header(self.name, self.file or self.topology, self.backend)

    def summary(self) -> str:
        took = f"{self.duration:.2f}s"
        if self.ok:
            return f"PASS {self.name}: {len(self.steps)} steps ({took})"
        failed = self.failed_step
        if failed is not None:
            return f"FAIL {self.name}: step {failed.index} of {len(self.steps)} failed ({took})"
        if all(s.status == "not run" for s in self.steps):
            return f"FAIL {self.name}: the lab did not come up ({took})"
        return f"FAIL {self.name}: the lab did not stop cleanly ({took})"

    def report(self) -> str:
        """The whole check as text: a header, every step, the error if any, a summary."""
        lines = [self.header()]
        lines += [s.report() for s in self.steps]
        if self.error:
            lines += ["  " + line for line in self.error.splitlines()]
        if not self.ok and self.seed is not None:
            lines.append(f"  seed {self.seed}: `maillab check --seed {self.seed}` replays this run")
        lines.append(self.summary())
        return "\n".join(lines)


def check_header(name: str, where: str, backend: str) -> str:
    return f"check {name} ({where}, {backend} backend)"


# ---------------------------------------------------------------------------------------
# running


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").rstrip("\n").split("\n")


def _delivery_matches(e: Event, d: DeliveredExpect) -> bool:
    """The same rule as Lab.assert_delivered: the original or the final address."""
    if e.kind != "mailbox.delivered":
        return False
    if d.to.lower() not in ((e.get("rcpt") or "").lower(), (e.get("address") or "").lower()):
        return False
    if d.node and e.node != d.node:
        return False
    if d.mailbox and e.get("user") != d.mailbox:
        return False
    return d.envelope_from is None or e.get("envelope_from") == d.envelope_from


class _CheckRun:
    def __init__(self, lab: Lab, steps: list[Step]):
        self.lab = lab
        self.steps = steps
        self.last: SubmitResult | None = None
        self.last_index = 0
        self.sent_after = 0  # the last event before the last message was sent
        self.sent_at = 0.0  # the lab time the last message was sent
        self.sent_body = ""  # the body of the last message sent

    # the trace shown with a failure ------------------------------------------------

    def trace(self) -> str:
        if self.last is None:
            return ""
        label = f"--- trace of the last message sent (step {self.last_index}) ---"
        if not self.last.queue_id:
            text = refusal(self.last)[1]
            return f"{label}\n(not accepted by {self.last.server}: {text})"
        events = self.lab.trace(self.last)
        if len(events) > TRACE_HEAD + TRACE_TAIL:
            left_out = len(events) - TRACE_HEAD - TRACE_TAIL
            shown = (
                format_events(events[:TRACE_HEAD])
                + f"\n... ({left_out} events left out) ...\n"
                + format_events(events[-TRACE_TAIL:])
            )
        else:
            shown = format_events(events) or "(no events)"
        return f"{label}\n{shown}"

    def _explain(self, what: str, events: list[Event]) -> str:
        interesting = [
            e
            for e in events
            if e.kind.startswith(
                ("queue.", "delivery.result", "dsn.", "mailbox.", "policy.", "link.", "client.")
            )
        ]
        shown = format_events(interesting[-40:]) or "(no events)"
        return f"{what}\n--- what happened ---\n{shown}"

    # steps ---------------------------------------------------------------------------

    def run(self, index: int, step: Step) -> str:
        """Run one step; return what happened, or raise StepFailed / LabAssertionError."""
        if step.send is not None:
            return self.send(index, step.send)
        if step.link is not None:
            for name, state in step.link.items():
                handle = self.lab.link(name)
                if state == "up":
                    handle.up()
                else:
                    handle.down()
            return ", ".join(f"{name} is {state}" for name, state in step.link.items())
        if step.advance is not None:
            ran = self.lab.clock.advance(step.advance)
            return f"{ran} timer(s) ran"
        if step.flush is not None:
            return f"tried {self.lab.flush(step.flush)} message(s)"
        if step.fetch is not None:
            return f"fetched {self.lab.fetch(step.fetch)} message(s)"
        if step.expect is not None:
            return self.expect(step.expect)
        raise StepFailed("a step with no action")

    def send(self, index: int, s: SendStep) -> str:
        events = self.lab.events
        self.sent_after = events[-1].seq if events else 0
        self.sent_at = self.lab.clock.now()
        body = s.body + ("\n" + attachment_text(s.attach) if s.attach else "")
        self.sent_body = body
        result = self.lab.send(
            s.from_,
            mail_from=s.mail_from,
            to=s.to,
            subject=s.subject,
            body=body,
            headers=s.headers,
            via=s.via,
        )
        self.last, self.last_index = result, index
        if result.accepted:
            refused = {
                r: str(reply) for r, reply in result.rcpt_replies.items() if reply.code >= 400
            }
            note = "".join(f"; {r} refused: {reply}" for r, reply in refused.items())
            return f"accepted by {result.server} as {result.queue_id}{note}"
        text = refusal(result)[1]
        outcome = f"refused by {result.server} at {result.stage()}: {text}"
        following = self.steps[index] if index < len(self.steps) else None
        if following is None or following.expect is None or following.expect.rejected is None:
            raise StepFailed(
                "expected the message to be accepted (no `expect: rejected` follows this"
                f" step)\nit was {outcome}"
            )
        return outcome

    def expect(self, e: Expect) -> str:
        if e.delivered is not None:
            return self.delivered(e.delivered, e.within)
        if e.not_delivered is not None:
            return self.not_delivered(e.not_delivered)
        if e.queued is not None:
            return self.queued(e.queued, e.within)
        if e.bounced is not None:
            return self.bounced(e.bounced, e.within)
        if e.rejected is not None:
            return self.rejected(e.rejected, e.within)
        raise StepFailed("an expectation with nothing to expect")

    def delivered(self, d: DeliveredExpect, within: float) -> str:
        message = self.lab.assert_delivered(
            d.to,
            node=d.node,
            mailbox=d.mailbox,
            envelope_from=d.envelope_from,
            headers=d.headers,
            timeout=within,
        )
        wrong = dsn_mismatch(message.message, d.dsn) if d.dsn else None
        if wrong:
            raise LabAssertionError(f"delivered {delivered_words(d)}, but {wrong}")
        sender = message.envelope_from or "<>"
        got = message.raw.replace("\r\n", "\n").split("\n\n", 1)[-1]
        if d.whole and _lines(got) != _lines(self.sent_body):
            raise StepFailed(f"delivered, but its body is not the {len(self.sent_body)} sent")
        whole = f", whole ({len(self.sent_body)} bytes of body)" if d.whole else ""
        took = "" if d.within is None else self._in_lab_time(d)
        return (
            f"delivered{whole}{took}, envelope sender {sender}, From: {message['From'] or '(none)'}"
        )

    def _in_lab_time(self, d: DeliveredExpect) -> str:
        """' after 1h0m of lab time', or StepFailed when that is longer than `d.within`."""
        assert d.within is not None
        found = [e for e in self.lab.events if e.seq > self.sent_after]
        landed = next((e for e in found if _delivery_matches(e, d)), None)
        took = (landed.time if landed else self.lab.clock.now()) - self.sent_at
        if landed is None or took > d.within + 1e-3:
            raise StepFailed(
                self._explain(
                    f"expected delivery {delivered_words(d)} after the send;"
                    f" it took {format_duration(round(took, 3))}",
                    found,
                )
            )
        return f" after {format_duration(round(took))} of lab time"

    def not_delivered(self, d: DeliveredExpect) -> str:
        if d.envelope_from is None and not d.headers and not d.dsn:
            self.lab.assert_not_delivered(d.to, node=d.node, mailbox=d.mailbox)
            if d.node and d.mailbox and (held := self.lab.mailbox(d.node, d.mailbox)):
                raise StepFailed(f"{d.node}'s mailbox {d.mailbox} holds {len(held)} message(s)")
            return "not delivered"
        self.lab.settle()
        events = self.lab.events
        for e in events:
            if not _delivery_matches(e, d):
                continue
            if d.headers or d.dsn:
                found = self._message(e)
                if found is None or not all(
                    value.lower() in (found[name] or "").lower()
                    for name, value in d.headers.items()
                ):
                    continue
                if d.dsn and dsn_mismatch(found.message, d.dsn):
                    continue
            raise LabAssertionError(
                self._explain(
                    f"expected no delivery {delivered_words(d)}, but it was delivered on"
                    f" {e.node} in mailbox {e.get('user')}",
                    events,
                )
            )
        return "not delivered"

    def _message(self, e: Event) -> Any:
        return next(
            (m for m in self.lab.mailbox(e.node, e.get("user")) if m.id == e.get("key")), None
        )

    def queued(self, q: QueuedExpect, within: float) -> str:
        entry = self.lab.assert_queued(q.on, to=q.to, timeout=within)
        reply = entry.get("last_reply")
        return f"{entry['id']} queued on {q.on}" + (f" ({reply})" if reply else "")

    def bounced(self, b: BouncedExpect, within: float) -> str:
        dsn = self.lab.assert_bounced(
            recipient=b.recipient, to=b.to, status=b.status, by=b.by, timeout=within
        )
        outcome = (
            f"{dsn.node} sent a bounce ({dsn.get('id')}) to {dsn.get('to')}"
            f" for {join_addresses(dsn.get('recipients', []))},"
            f" status {join_addresses(dsn.get('status', []))}"
        )
        if b.lands is None:
            return outcome
        lands = b.lands
        dsn_id = str(dsn.get("id"))

        def landed(e: Event) -> bool:
            return _delivery_matches(e, lands) and any(
                t.seq == e.seq for t in self.lab.trace(dsn_id)
            )

        try:
            event = self.lab.wait_for(predicate=landed, timeout=within)
        except LabAssertionError:
            raise LabAssertionError(
                f"expected {bounced_words(b)} within {format_duration(within)};\n"
                f"{outcome}, but it was not delivered {delivered_words(lands)}\n"
                f"--- what happened to the bounce ---\n"
                f"{self.lab.format_trace(dsn_id) or '(no events)'}"
            ) from None
        found = self._message(event)
        for name, value in lands.headers.items():
            actual = None if found is None else found[name]
            if actual is None or value.lower() not in actual.lower():
                raise LabAssertionError(
                    f"expected {bounced_words(b)};\n{outcome}; it landed on {event.node} in"
                    f" mailbox {event.get('user')}, but header {name}: is {actual!r},"
                    f" expected it to contain {value!r}"
                )
        wrong = None
        if lands.dsn:
            wrong = dsn_mismatch(found.message, lands.dsn) if found else "it is not in the mailbox"
        if wrong:
            raise LabAssertionError(f"expected {bounced_words(b)};\n{outcome}; {wrong}")
        return f"{outcome}; it landed on {event.node} in mailbox {event.get('user')}"

    def rejected(self, r: RejectedExpect, within: float) -> str:
        want = rejected_words(r)
        if self.last is None:
            raise StepFailed(f"expected {want}\nbut no message was sent before this step")
        if r.by is not None:  # any hop: the refusal is in that node's events
            hit, found = await_refusal(self.lab, r, self.sent_after, within)
            if hit is None:
                raise StepFailed(
                    f"expected {want} of the message sent in step {self.last_index}\n"
                    + ("; ".join(str(f) for f in found) or f"{r.by} refused nothing")
                )
            return str(hit)
        result = self.last
        if result.accepted:
            raise StepFailed(
                f"expected {want} of the message sent in step {self.last_index}\n"
                f"it was accepted by {result.server} as {result.queue_id}"
            )
        code, text = refusal(result)
        stage = result.stage()
        if (r.code is not None and code != r.code) or (r.stage is not None and stage != r.stage):
            raise StepFailed(
                f"expected {want} of the message sent in step {self.last_index}\n"
                f"it was refused by {result.server} at {stage}: {text}"
            )
        return f"refused by {result.server} at {stage}: {text}"


def run_check(
    topology: Topology,
    name: str,
    *,
    backend: str = "inprocess",
    file: str | Path | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    pool: LabPool | None = None,
    **options: Any,
) -> CheckResult:
    """Run check `name` of `topology` on a fresh lab (or one of `pool`'s, reset, given
    back afterwards); stop at the first failing step.

    `options` go to the backend (state_dir, ...). `on_step` is called with each step's
    result as soon as it is known (a live report)."""
    if name not in topology.checks:
        raise UnknownCheckError(_unknown(topology, [name], file))
    steps = topology.checks[name]
    result = CheckResult(
        name=name,
        topology=topology.name,
        steps=[StepResult(i, describe(step)) for i, step in enumerate(steps, 1)],
        file=None if file is None else str(file),
        backend=backend,
    )
    started = time.monotonic()
    try:
        up = Lab.up if pool is None else pool.acquire
        lab = up(topology, backend=backend, **options)
    except LabError as exc:
        result.error = f"the lab could not be brought up: {exc}"
    except Exception as exc:
        result.error = f"the lab could not be brought up: {type(exc).__name__}: {exc}"
    else:
        _run_steps(lab, steps, result, file, on_step, pool)
    if on_step is not None:
        for outcome in result.steps:
            if outcome.status == "not run":
                on_step(outcome)
    result.duration = time.monotonic() - started
    return result


def _run_steps(
    lab: Lab,
    steps: list[Step],
    result: CheckResult,
    file: str | Path | None,
    on_step: Callable[[StepResult], None] | None,
    pool: LabPool | None = None,
) -> None:
    """Run the steps on a running lab until one fails; then stop the lab (or give it
    back to `pool`, which resets it before its next use)."""
    lab.source = None if file is None else Path(file)
    result.seed = lab.seed
    run = _CheckRun(lab, steps)
    try:
        for step, outcome in zip(steps, result.steps, strict=True):
            begun = time.monotonic()
            try:
                outcome.detail = run.run(outcome.index, step)
                outcome.status = "passed"
            except (StepFailed, LabAssertionError, LabError) as exc:
                outcome.status, outcome.detail = "failed", str(exc)
            except TimeoutError:
                outcome.status, outcome.detail = "failed", "the lab did not answer in time"
            except Exception as exc:
                outcome.status, outcome.detail = "failed", f"{type(exc).__name__}: {exc}"
            outcome.duration = time.monotonic() - begun
            if outcome.status == "failed":
                outcome.trace = run.trace()
            if on_step is not None:
                on_step(outcome)
            if outcome.status == "failed":
                break
    finally:
        try:
            lab.down() if pool is None else pool.release(lab)
        except Exception as exc:
            result.error = f"the lab did not stop cleanly: {type(exc).__name__}: {exc}"


def _unknown(topology: Topology, names: list[str], file: str | Path | None) -> str:
    where = f"{file} ({topology.name})" if file else topology.name
    known = ", ".join(topology.checks) or "(none)"
    plural = "s" if len(names) > 1 else ""
    return (
        f"{where}: unknown check{plural} {', '.join(repr(n) for n in names)}; known checks: {known}"
    )


def select_checks(
    topology: Topology, names: Iterable[str] = (), file: str | Path | None = None
) -> list[str]:
    """The checks to run: all, or the named ones (UnknownCheckError lists the known names)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return list(topology.checks)
    unknown = [n for n in wanted if n not in topology.checks]
    if unknown:
        raise UnknownCheckError(_unknown(topology, unknown, file))
    return wanted


def run_checks(
    topology: Topology,
    names: Iterable[str] = (),
    *,
    backend: str = "inprocess",
    file: str | Path | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    pool: LabPool | None = None,
    **options: Any,
) -> list[CheckResult]:
    """Run every check of `topology` (or the named ones), each on its own lab (or on
    `pool`'s lab, reset between checks)."""
    run = {"backend": backend, "file": file, "on_step": on_step, "pool": pool, **options}
    return [run_check(topology, name, **run) for name in select_checks(topology, names, file)]
