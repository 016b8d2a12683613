"""Who may use a lab's web server: the person who was given its URL, from the page it
serves, and nobody else's web page.

- The server listens on loopback unless told otherwise (lab.web.server).
- Every API request carries the lab's token: the `X-Maillab-Token` header, an
  `Authorization: Bearer` header, or `?token=` (an EventSource cannot set headers). The
  page itself is served only at the URL with the token, and holds it (a meta tag).
- The Host header must name this server (a DNS-rebinding page has another name).
- A request that changes the lab (anything but GET and HEAD) must come from this origin:
  an `Origin` header, when sent, must be this server's, and `Sec-Fetch-Site`, when sent,
  must be `same-origin` or `none`. A page elsewhere cannot read the token (no CORS
  headers are ever sent), so it can neither read the lab nor drive it.

The OpenAPI document and the static files (no secrets in them) need no token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_HEADER = "x-maillab-token"
PUBLIC = ("/api/openapi.json", "/static/", "/favicon.ico")
SAFE_METHODS = ("GET", "HEAD")


def request_token(scope: Scope) -> str:
    headers = _headers(scope)
    if TOKEN_HEADER in headers:
        return headers[TOKEN_HEADER]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [""])[0]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class Guard:
    """ASGI middleware: the checks above, before the app sees a request."""

    def __init__(self, app: App, token: str, origins: Callable[[], set[str]], any_host: bool):
        self.app = app
        self.token = token
        self.origins = origins  # this server's origins (its port is known once it listens)
        self.any_host = any_host  # listening on every address (0.0.0.0): any Host will do

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem, status = self.check(scope)
        if problem:
            body = orjson.dumps({"error": problem})
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] not in SAFE_METHODS:
            # bodies are JSON whatever the client called them (`curl -d` says form data)
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> tuple[str, int]:
        headers = _headers(scope)
        origins = self.origins()
        if self.any_host and "host" in headers:
            origins = {f"http://{headers['host']}"}
        hosts = {o.split("://", 1)[1] for o in origins}
        if headers.get("host") not in hosts:
            return (
                f"this server answers only to {', '.join(sorted(hosts))}, not Host:"
                f" {headers.get('host')!r}",
                403,
            )
        path = scope["path"]
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin not in origins:
                return f"cross-origin request refused (Origin: {origin})", 403
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return f"cross-site request refused (Sec-Fetch-Site: {site})", 403
        if path.startswith(PUBLIC):
            return "", 200
        if not hmac.compare_digest(request_token(scope), self.token):
            return (
                "this lab's token is missing or wrong: open the URL that `maillab up --ui` or"
                " `maillab ui` printed, or send the X-Maillab-Token header",
                401,
            )
        return "", 200
