"""The HTTP API and the page of a running lab (FastAPI): everything the CLI does, as
JSON, with an OpenAPI document at /api/openapi.json; the events as a stream (Server-Sent
Events) and a server-side wait. Every handler runs on the lab's own event loop and works
with the backend directly. Errors are JSON, {"error": "..."}: a LabError's message as it
is (400, or 404 for an unknown name), never a traceback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from lab.errors import LabError
from lab.protocols import wire
from lab.runtime.events import Event
from lab.topology.defaults import DEFAULT_BODY, DEFAULT_SUBJECT
from lab.topology.units import parse_duration
from lab.web import views
from lab.web.security import Guard

if TYPE_CHECKING:
    from lab.harness.lab import Lab


class WebServer(Protocol):
    """What the app needs of its server (lab.web.server.WebServer)."""

    lab: Lab
    token: str
    name: str
    host: str
    port: int
    hub: Any  # server.EventHub

    @property
    def origin(self) -> str: ...


STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0  # seconds between comments on an idle event stream


class LabJSON(JSONResponse):
    """JSON as the control wire writes it (orjson; text of 8-bit mail kept as escapes)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # lone surrogates: the stdlib writes them escaped
            return json.dumps(content, default=str).encode()


def error(status: int, text: str, **extra: Any) -> LabJSON:
    return LabJSON({"error": text, **extra}, status_code=status)


# request bodies ----------------------------------------------------------------------------


class SendBody(BaseModel):
    from_node: str = Field(description="the node that submits (a client or an MTA)")
    mail_from: str = Field(description="envelope sender ('' for the null sender)")
    to: list[str] = Field(min_length=1, description="envelope recipients")
    subject: str = DEFAULT_SUBJECT
    body: str = DEFAULT_BODY
    headers: dict[str, str] | None = Field(None, description="extra or replaced headers")
    raw: str | None = Field(None, description="send this message as it is (headers and body)")
    via: str | None = Field(None, description="submit to this MTA instead of submit_to")


class LinkBody(BaseModel):
    state: Literal["up", "down"]


class ImpairBody(BaseModel):
    rate: str | None = Field(None, description="the line's speed, e.g. 33.6kbit")
    delay: str | float | None = Field(None, description="one-way latency, e.g. 150ms")
    jitter: str | float | None = Field(None, description="variation of the delay, e.g. 20ms")
    loss: str | float | None = Field(None, description="packets lost, e.g. 1%")
    drop_after: str | int | None = Field(None, description="a link: hang up after, e.g. 50KB")
    drop_at: str | float | None = Field(None, description="a link: hang up at this lab time")
    clear: bool = Field(False, description="start from no impairment rather than the present")


class AdvanceBody(BaseModel):
    duration: str = Field(description="how far to move the lab clock: 30m, 4h, 5d, 90s")


class DnsBody(BaseModel):
    name: str
    type: Literal["A", "MX", "CNAME", "TXT", "NS", "PTR"] | None = Field(
        None, description="the record type to replace (with values); none: set the fault"
    )
    values: list[str] = Field(default_factory=list, description="MX values: '10 host'")
    fault: Literal["servfail", "nxdomain", "timeout"] | None = Field(
        None, description="make the name fail this way (null: answer again)"
    )


def create_app(server: WebServer) -> Any:
    lab = server.lab
    backend = lab.backend
    bus = backend.events
    app = FastAPI(
        title="maillab",
        version="1",
        description="A running mail lab: its topology, queues, mailboxes, traces, clock,"
        " DNS and events. Every request carries the lab's token (X-Maillab-Token, or"
        " ?token=); see docs/ui.md.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        default_response_class=LabJSON,
    )

    # errors -----------------------------------------------------------------------------

    @app.exception_handler(LabError)
    async def lab_error(request: Request, exc: LabError) -> Response:
        text = str(exc)
        return error(404 if text.startswith(("unknown ", "no events")) else 400, text)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> Response:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return error(400, problems)
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return error(422, f"bad request: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> Response:
        return error(500, f"{type(exc).__name__}: {exc}")

    # the page ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text()
        meta = f'<meta name="maillab-token" content="{server.token}">'
        return HTMLResponse(html.replace("<!--token-->", meta))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # the lab ----------------------------------------------------------------------------

    @app.get("/api/status", summary="The lab: nodes, addresses, endpoints, links, clock")
    async def status() -> Any:
        result = await backend.status()
        result["topology"] = result["name"]
        result["name"] = server.name
        return result

    @app.get("/api/topology", summary="What the page draws: networks, hosts, links")
    async def topology() -> Any:
        return views.topology_view(lab, await status())

    @app.post("/api/send", summary="Submit a message from a node over SMTP")
    async def send(body: SendBody) -> Any:
        if body.raw is not None:
            text = body.raw.replace("\r\n", "\n").replace("\n", "\r\n")
            content = text.encode("utf-8", "surrogateescape")
        else:
            content = await backend.message(
                body.from_node,
                mail_from=body.mail_from,
                to=body.to,
                subject=body.subject,
                body=body.body,
                headers=body.headers,
            )
        result = await backend.send(
            body.from_node, mail_from=body.mail_from, to=body.to, content=content, via=body.via
        )
        return wire.encode_submit(result)

    @app.get("/api/links", summary="Every link and its state")
    async def links() -> Any:
        return {name: (await backend.link_state(name)).value for name in lab.topology.links}

    @app.post("/api/links/{link}", summary="Raise or drop a link (up runs its on_up hooks)")
    async def set_link(link: str, body: LinkBody) -> Any:
        await backend.set_link(link, body.state == "up")
        await backend.settle()
        return {"link": link, "state": (await backend.link_state(link)).value}

    @app.post(
        "/api/impair/{name}",
        summary="Change a link's or a network's impairment: rate, delay, jitter, loss, drops",
    )
    async def impair(name: str, body: ImpairBody) -> Any:
        settings = body.model_dump(exclude={"clear"}, exclude_none=True)
        return {"name": name, "impair": await backend.impair(name, settings, clear=body.clear)}

    @app.post("/api/nodes/{node}/flush", summary="Run a node's queue now (sendmail -q)")
    async def flush(node: str) -> Any:
        tried = await backend.flush(node)
        return {"node": node, "tried": tried, "queue": await backend.queue(node)}

    @app.post("/api/nodes/{node}/fetch", summary="Run a node's fetch jobs now (fetchmail)")
    async def fetch(node: str) -> Any:
        return {"node": node, "fetched": await backend.fetch(node)}

    @app.get("/api/nodes/{node}/queue", summary="A node's mail queue (mailq)")
    async def queue(node: str, settle: bool = False) -> Any:
        if settle:
            await backend.settle(timeout=30.0)
        return await backend.queue(node)

    @app.get("/api/queues", summary="The queue of every node that runs an MTA")
    async def queues() -> Any:
        result = {}
        for node, spec in lab.topology.nodes.items():
            if "smtp" in {str(s) for s in spec.service_set()}:
                result[node] = await backend.queue(node)
        return result

    @app.get("/api/nodes/{node}/mailboxes", summary="A node's mailboxes: user -> messages")
    async def mailboxes(node: str) -> Any:
        backend.check_node(node)  # type: ignore[attr-defined]
        return {
            user: len(await backend.mailbox(node, user)) for user in views.mailbox_names(lab, node)
        }

    @app.get("/api/nodes/{node}/mailboxes/{user}", summary="The messages in a mailbox")
    async def mailbox(node: str, user: str) -> Any:
        events = bus.events
        return [views.message_view(dict(m), events) for m in await backend.mailbox(node, user)]

    @app.post("/api/nodes/{node}/faults", summary="Add a scripted fault to a node's SMTP server")
    async def add_fault(
        node: str,
        fault: dict[str, Any] = Body(  # noqa: B008 - FastAPI's way
            ..., examples=[{"on": "rcpt", "reply": "421 4.3.2 try later", "times": 1}]
        ),
    ) -> Any:
        from lab.topology.model import Fault

        Fault.model_validate(fault)
        await backend.add_fault(node, fault)
        return {"node": node, "fault": fault}

    @app.delete("/api/nodes/{node}/faults", summary="Remove the faults added to a node's SMTP")
    async def clear_faults(node: str) -> Any:
        return {"node": node, "cleared": await backend.clear_faults(node)}

    @app.post("/api/dns/faults", summary="Make the lab DNS fail for a name glob (window, chance)")
    async def add_dns_fault(
        rule: dict[str, Any] = Body(  # noqa: B008 - FastAPI's way
            ..., examples=[{"name": "*.freeuk.com", "fault": "servfail", "until": "30m"}]
        ),
    ) -> Any:
        await backend.add_dns_fault(rule)
        return {"rule": rule}

    @app.delete("/api/dns/faults", summary="Remove the DNS fault rules added while running")
    async def clear_dns_faults() -> Any:
        return {"cleared": await backend.clear_dns_faults()}

    @app.put("/api/links/{link}/schedule", summary="Make a link dial on a schedule")
    async def set_schedule(
        link: str,
        schedule: dict[str, Any] = Body(  # noqa: B008 - FastAPI's way
            ..., examples=[{"every": "1h", "for": "5m"}]
        ),
    ) -> Any:
        await backend.set_schedule(link, schedule)
        return (await backend.status())["links"][link]

    @app.delete("/api/links/{link}/schedule", summary="Make a link dial on no schedule")
    async def clear_schedule(link: str) -> Any:
        await backend.set_schedule(link, None)
        return (await backend.status())["links"][link]

    @app.get("/api/trace/{ref}", summary="One message hop by hop, with each hop's dialogue")
    async def trace(ref: str) -> Any:
        result = views.trace_view(lab, ref)
        if not result["events"]:
            raise LabError(f"no events about {ref!r}")
        return result

    @app.get("/api/clock", summary="The lab clock: its time and the timers pending")
    async def clock() -> Any:
        now = await backend.now()
        return {
            "now": now,
            "offset": now - time.time(),
            "timers": await views.pending_timers(lab),
        }

    @app.post("/api/clock/advance", summary="Move the lab clock forward, running due timers")
    async def advance(body: AdvanceBody) -> Any:
        ran = await backend.advance(parse_duration(body.duration))
        return {"advanced": body.duration, "timers": ran, "now": await backend.now()}

    @app.post("/api/settle", summary="Wait until the work under way has finished")
    async def settle() -> Any:
        await backend.settle()
        return {"events": len(bus.events)}

    @app.post("/api/reset", summary="Put the lab back to its topology's initial state")
    async def reset() -> Any:
        began = time.monotonic()
        await backend.reset()
        return {"reset": True, "seconds": round(time.monotonic() - began, 4)}

    @app.get("/api/dns", summary="The lab DNS's records")
    async def dns() -> Any:
        return views.dns_view(lab)

    @app.post("/api/dns", summary="Replace a name's records of one type, or set its fault")
    async def set_dns(body: DnsBody) -> Any:
        if body.type is not None:
            values: list[Any] = list(body.values)
            if body.type == "MX":
                values = [_mx(v) for v in body.values]
            await backend.set_dns(body.name, body.type, values)
        else:
            await backend.set_dns_fault(body.name, body.fault)
        return {
            "name": body.name,
            "records": [
                r for r in views.dns_view(lab) if r["name"] == body.name.lower().rstrip(".")
            ],
        }

    # events -----------------------------------------------------------------------------

    @app.get("/api/events", summary="The lab's events (filters: node, kind, message)")
    async def events(
        since: int = 0,
        node: str | None = None,
        kind: str | None = None,
        message: str | None = Query(None, description="a queue id or <Message-ID>"),
        limit: int = Query(10000, ge=1),
    ) -> Any:
        found = views.filter_events(
            bus.events, since=since, node=node, kind=kind, message=message, lab=lab
        )
        return [views.event_json(e) for e in found[-limit:]]

    @app.get(
        "/api/events/stream",
        summary="Server-Sent Events: every event after `since`, then each new one",
        response_class=StreamingResponse,
    )
    async def stream(
        request: Request, since: int = 0, node: str | None = None, kind: str | None = None
    ) -> StreamingResponse:
        last_id = request.headers.get("last-event-id")
        if last_id and last_id.isdigit():
            since = int(last_id)
        return StreamingResponse(
            _stream(server, since, node, kind),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/api/wait",
        summary="Wait on the server until a message is delivered / bounced / queued",
        responses={408: {"description": "not within the timeout: what happened instead"}},
    )
    async def wait(
        until: Literal["delivered", "bounced", "queued", "event"] = "delivered",
        to: str | None = Query(None, description="the recipient address"),
        node: str | None = Query(None, description="only on this node (queued: required)"),
        kind: str | None = Query(None, description="until=event: the event kind (x.* family)"),
        timeout: float = Query(10.0, gt=0, le=3600),
        since: int = Query(0, description="only events after this seq"),
    ) -> Any:
        if until == "queued" and not node:
            raise LabError("until=queued needs node=NODE (where the message waits)")
        if until == "event" and not kind:
            raise LabError("until=event needs kind=KIND")
        if node:
            backend.check_node(node)  # type: ignore[attr-defined]
        match = views.wait_matcher(until, to, node, kind)
        start = time.monotonic()
        try:
            event = await bus.wait_for(match, since=since, timeout=timeout)
        except TimeoutError:
            where = (f" for {to}" if to else "") + (f" on {node}" if node else "")
            text = (
                f"no {kind} event{where} within {timeout:g}s"
                if until == "event"
                else f"not {until}{where} within {timeout:g}s"
            )
            return error(
                408,
                text,
                happened=views.what_happened(bus.events, to, node),
            )
        return {"event": views.event_json(event), "waited": time.monotonic() - start}

    return Guard(app, server.token, lambda: _origins(server), server.host in ("0.0.0.0", "::"))


def _origins(server: WebServer) -> set[str]:
    port = server.port
    found = {server.origin}
    if server.host in ("127.0.0.1", "localhost", "::1"):
        found |= {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
    return found


def _mx(value: str) -> tuple[int, str]:
    preference, _, host = value.strip().partition(" ")
    if not preference.isdigit() or not host.strip():
        raise LabError(
            f"an MX value is 'PREFERENCE HOST', e.g. '10 mail.example.com'; not {value!r}"
        )
    return int(preference), host.strip()


def _sse(event: Event) -> bytes:
    data = orjson.dumps(event.to_json(), default=str)
    return b"id: %d\nevent: lab\ndata: %s\n\n" % (event.seq, data)


async def _stream(server: WebServer, since: int, node: str | None, kind: str | None) -> Any:
    """The backlog after `since`, then every new event as it is recorded (in batches of
    what arrived together), with a comment line every KEEPALIVE seconds when idle."""
    bus = server.lab.backend.events
    queue = server.hub.subscribe()
    try:
        events = bus.events
        last = events[-1].seq if events else 0
        yield b"retry: 1000\n\n"
        backlog = views.filter_events(events, since=since, node=node, kind=kind)
        for i in range(0, len(backlog), 500):
            yield b"".join(_sse(e) for e in backlog[i : i + 500])
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if None in batch:
                return
            chosen = [
                e
                for e in batch
                if e is not None and e.seq > last and views.filter_events([e], node=node, kind=kind)
            ]
            if chosen:
                yield b"".join(_sse(e) for e in chosen)
    finally:
        server.hub.unsubscribe(queue)
