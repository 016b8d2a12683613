"""The web dashboard and HTTP API of a running lab (docs/ui.md).

server.py runs uvicorn on the lab's own event loop; api.py is the FastAPI app (the
JSON API, the event stream, the server-side wait, the page); security.py checks the
token, the Host and the origin of every request; views.py shapes what the API answers;
static/ holds the page (plain HTML, CSS and JavaScript, no build step, nothing from a
CDN). It sits above lab.harness and below lab.cli, which starts it (`maillab up --ui`,
`maillab ui`)."""

from lab.web.server import LabUi, WebServer, serve

__all__ = ["LabUi", "WebServer", "serve"]
