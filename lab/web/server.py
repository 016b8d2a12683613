"""The web server of one running lab: uvicorn serving the app of lab.web.api on the lab's
own event loop, so every request works with the backend directly (no thread hops, no
copies of the lab's state), on both backends alike.

    web = WebServer(lab)            # loopback, an ephemeral port, a fresh token
    lab.run(web.start())            # or: with serve(lab) as web: ...
    print(web.url)                  # http://127.0.0.1:PORT/?token=...
    lab.run(web.stop())

The token is made here, per server; it is in the URL that `maillab up --ui` and
`maillab ui` print, and every API request must carry it (lab.web.security).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lab.errors import LabError
from lab.runtime.events import Event

if TYPE_CHECKING:
    from lab.harness.lab import Lab

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EventHub:
    """Hands every event of the lab's bus to the streams open at the time (one asyncio
    queue each); a stream subscribes before it reads the backlog, so it misses nothing."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Event | None]] = set()
        self.closed = False

    def __call__(self, event: Event) -> None:  # the bus's listener, on the lab's loop
        for queue in self.queues:
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self.queues.discard(queue)

    def close(self) -> None:
        """End every stream (a None in each queue)."""
        self.closed = True
        for queue in self.queues:
            queue.put_nowait(None)


class WebServer:
    """The dashboard and HTTP API of `lab`, served from the lab's event loop."""

    def __init__(
        self,
        lab: Lab,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        token: str | None = None,
        name: str | None = None,
    ):
        self.lab = lab
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.name = name or lab.topology.name
        self.hub = EventHub()
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._listening = False

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page, with the token: what people open."""
        return f"{self.origin}/?token={self.token}"

    def info(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "origin": self.origin,
            "api": f"{self.origin}/api",
            "openapi": f"{self.origin}/api/openapi.json",
            "token": self.token,
            "host": self.host,
            "port": self.port,
        }

    async def start(self) -> dict[str, Any]:
        """Listen and serve (on the running loop, which must be the lab's); returns info()."""
        if self._task is not None:
            return self.info()
        try:
            import uvicorn

            from lab.web.api import create_app
        except ImportError as exc:
            raise LabError(
                f"the web dashboard needs maillab's web extra ({exc.name} is missing):"
                " pip install 'maillab[web]' (make setup installs it)"
            ) from None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise LabError(
                f"the web server cannot listen on {self.host}:{self.port}: {exc}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.lab.backend.events.listen(self.hub)
        config = uvicorn.Config(
            create_app(self),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise LabError("the web server stopped as it started")
            await asyncio.sleep(0.005)
        return self.info()

    async def stop(self) -> None:
        if self._task is None:
            return
        self.hub.close()
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5)
        self._task = None


@contextlib.contextmanager
def serve(lab: Lab, **options: Any) -> Iterator[WebServer]:
    """A web server for `lab` while the block runs (what tests and benchmarks use)."""
    web = WebServer(lab, **options)
    lab.run(web.start())
    try:
        yield web
    finally:
        lab.run(web.stop())


class LabUi:
    """The web server a held lab starts when asked, once: at `maillab up --ui`, or when
    `maillab ui` asks over the control socket (LabOp.UI); it stops with the lab."""

    def __init__(self, lab: Lab, name: str):
        self.lab = lab
        self.name = name
        self.web: WebServer | None = None

    async def start(self, host: str = LOOPBACK, port: int = 0) -> dict[str, Any]:
        """Start the server (the one already running is kept, wherever it listens)."""
        if self.web is None:
            web = WebServer(self.lab, host=host, port=int(port), name=self.name)
            await web.start()
            self.web = web
        return self.web.info()

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
            self.web = None
