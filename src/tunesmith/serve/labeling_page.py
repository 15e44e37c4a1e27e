"""The labeling page of ``tunesmith label --serve``: one row at a time, answered by a click or a key.

:func:`create_labeling_app` builds a small FastAPI app over a
:class:`~tunesmith.quality.labeling.LabelingSession`; :func:`serve_labeling` runs it with uvicorn,
bound to 127.0.0.1 unless told otherwise. The page is one HTML document with its script and
style inline (nothing is fetched from elsewhere). Every answer is on disk before the server
replies (the session fsyncs it), so a reload, a closed tab or a killed server loses nothing that
the page showed as done.

JSON API (errors are ``{"error": "..."}`` with a 4xx status):

- ``GET /api/next``: ``{"row": {...} or null, "progress": {...}}``, the row on show;
- ``POST /api/answer`` ``{"row": ID, "label": LABEL}``, ``POST /api/skip`` ``{"row": ID}``,
  ``POST /api/undo`` ``{}``, ``POST /api/keep-going`` ``{}``: the same shape, after the change;
- ``GET /api/progress``: :meth:`~tunesmith.quality.labeling.LabelingSession.progress`;
- ``GET /api/image/{row}``: the row's image, only from under the session's ``root`` and only
  a PNG, JPEG, GIF, WebP or BMP by its first bytes (else 415), sent sandboxed.

An unknown row is 404, an answer for another row than the one on show 409 (the page then
shows the current one), a label that is not a class 400.

Other web sites. Requests naming another host than the loopback names are refused (421), so a
page elsewhere cannot reach the server through DNS rebinding. A POST is refused (403) when the
browser says it comes from another page: an ``Origin`` header other than this server's own, or
``Sec-Fetch-Site`` ``cross-site`` or ``same-site`` (another port of the same host). Every POST
must also be ``Content-Type: application/json`` (else 415), which a page elsewhere can send
only after a CORS preflight that this server never grants, so even a browser that sends
neither header cannot be made to label, skip or undo.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from tunesmith.errors import DataError
from tunesmith.quality.labeling import LabelingSession, NotCurrentError, UnknownRowError

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
"""Host names the page answers to by default."""

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# An image is shown, never run: a file that is an SVG or HTML page could carry a script.
_IMAGE_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
_RASTER = (
    (b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)  # fmt: skip
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class AnswerIn(BaseModel):
    """``POST /api/answer``."""

    model_config = ConfigDict(extra="forbid")
    row: int | str
    label: bool | int | float | str


class RowIn(BaseModel):
    """``POST /api/skip``."""

    model_config = ConfigDict(extra="forbid")
    row: int | str


def create_labeling_app(session: LabelingSession, *, allowed_hosts: Iterable[str] | None = LOOPBACK) -> FastAPI:
    """The labeling page and its JSON API over ``session``.

    ``allowed_hosts``: the host names (without port) a request may name; ``None`` accepts any
    (for a server bound to another interface on purpose).
    """
    app = FastAPI(title="tunesmith labeling", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if hosts is not None and name not in hosts:
            return _error(421, f"this server answers to {', '.join(sorted(hosts))}, not {host!r}")
        if request.method not in _SAFE_METHODS:
            refused = _foreign(request, host)
            if refused is not None:
                return refused
        response = await call_next(request)
        for key, value in _HEADERS.items():
            response.headers.setdefault(key, value)  # the image route sets its own
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(400, f'bad request body ({problems}); send JSON such as {{"row": 3, "label": "spam"}}')

    @app.exception_handler(DataError)
    async def refused(request: Request, exc: DataError) -> Response:
        status = 404 if isinstance(exc, UnknownRowError) else 409 if isinstance(exc, NotCurrentError) else 400
        return _error(status, str(exc))

    def state(**extra: Any) -> dict[str, Any]:
        row = session.current()
        return {"row": row.to_dict() if row is not None else None, "progress": session.progress(), **extra}

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/api/next")
    def next_row() -> dict[str, Any]:
        return state()

    @app.post("/api/answer")
    def answer(body: AnswerIn) -> dict[str, Any]:
        session.answer(body.row, body.label)
        return state()

    @app.post("/api/skip")
    def skip(body: RowIn) -> dict[str, Any]:
        session.skip(body.row)
        return state()

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        try:
            undone = session.undo()
        except UnknownRowError:
            raise
        except DataError as exc:
            return _error(409, str(exc))  # type: ignore[return-value]
        return state(undone=undone)

    @app.post("/api/keep-going")
    def keep_going() -> dict[str, Any]:
        session.keep_going()
        return state()

    @app.get("/api/progress")
    def progress() -> dict[str, Any]:
        return session.progress()

    @app.get("/api/image/{row}")
    def image(row: str) -> Response:
        try:
            path = session.image_path(row)
        except DataError as exc:
            return _error(404, str(exc))
        media = _raster_type(path)
        if media is None:
            return _error(
                415, f"the image of row {row} is not a PNG, JPEG, GIF, WebP or BMP file; the page shows only those"
            )
        return FileResponse(path, media_type=media, headers=_IMAGE_HEADERS)

    return app


def serve_labeling(
    session: LabelingSession, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning"
) -> None:
    """Serve the labeling page until interrupted (Ctrl-C); the session stays open for the caller to close."""
    everywhere = host in ("0.0.0.0", "::", "")
    hosts = None if everywhere else (*LOOPBACK, host if ":" not in host else f"[{host}]")
    uvicorn.run(create_labeling_app(session, allowed_hosts=hosts), host=host, port=port, log_level=log_level)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_HEADERS)


def _foreign(request: Request, host: str) -> JSONResponse | None:
    """Refuse a state-changing request another page may have sent (``None``: it may go on)."""
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, host):
        return _error(403, f"refused a request from {origin!r}: only this server's own page may change labels")
    site = (request.headers.get("sec-fetch-site") or "").lower()
    if site in ("cross-site", "same-site"):
        return _error(403, f"refused a {site} request: only this server's own page may change labels")
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return _error(415, f"send Content-Type: application/json (got {media or 'none'!r}), with {{}} for no body")
    return None


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` is this server as the request's Host header (``host``) names it."""
    try:
        theirs, ours = urlsplit(origin.strip().lower()), urlsplit("//" + host)
        if theirs.scheme not in ("http", "https") or not theirs.hostname:
            return False  # "null": a sandboxed frame or a local file
        default = 80 if theirs.scheme == "http" else 443
        return theirs.hostname == ours.hostname and (theirs.port or default) == (ours.port or default)
    except ValueError:  # a malformed origin or port
        return False


def _raster_type(path: Path) -> str | None:
    """The media type of a PNG, JPEG, GIF, WebP or BMP file by its first bytes, else ``None``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in _RASTER if head.startswith(magic)), None)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunesmith labeling</title>
<style>
 body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 main{max-width:880px;margin:0 auto;padding:18px}
 header{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:baseline}
 h1{font-size:18px;margin:0}
 #status{color:#555}
 .bar{height:8px;background:#dde2ea;border-radius:4px;overflow:hidden;margin:8px 0 14px}
 .bar div{height:100%;background:#3b7ddd;width:0;transition:width .2s}
 #card{background:#fff;border:1px solid #d8dde6;border-radius:8px;padding:16px;min-height:120px}
 #kind{font-size:13px;color:#666}#kind.review{color:#a35a00;font-weight:600}
 #text{white-space:pre-wrap;font-size:18px;margin:10px 0}
 #image{max-width:100%;max-height:420px;display:block;margin:10px 0}
 table{border-collapse:collapse;margin:8px 0}td{border-top:1px solid #eee;padding:3px 10px 3px 0;vertical-align:top}
 td:first-child{color:#666}
 #guess{color:#444;margin-top:8px}
 #buttons{display:flex;flex-wrap:wrap;gap:8px;margin:14px 0}
 button{font:inherit;padding:7px 12px;border:1px solid #b8c0cc;border-radius:6px;background:#fff;cursor:pointer}
 button.class{border-color:#3b7ddd}button.guess{background:#e8f0fc}
 kbd{font:12px monospace;background:#eef;border:1px solid #ccd;border-radius:3px;padding:0 4px;margin-right:5px}
 #error{color:#b00020;min-height:1.4em}
 #banner{background:#fff4e0;border:1px solid #f0c36d;border-radius:6px;padding:8px 12px;margin:10px 0}
 #curve svg{background:#fff;border:1px solid #d8dde6;border-radius:8px}
 .hidden{display:none!important}
</style></head>
<body><main>
<header><h1>tunesmith labeling</h1><span id="status">loading</span></header>
<div class="bar" title="this batch"><div id="batchbar"></div></div>
<div id="banner" class="hidden"><span id="banner-text"></span>
 <button id="keep" class="hidden"><kbd>k</kbd>keep labeling</button></div>
<section id="card" data-row="">
 <div id="kind"></div><div id="text"></div><img id="image" class="hidden" alt="the row's image">
 <table id="fields"></table><div id="guess"></div>
</section>
<div id="buttons"></div>
<div><button id="skip"><kbd>s</kbd>skip</button> <button id="undo"><kbd>u</kbd>undo</button></div>
<div id="error" role="alert"></div>
<h2 style="font-size:15px">Progress: <span id="labeled">0</span> labeled</h2>
<div id="counts"></div>
<div id="curve"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let row = null, progress = null, keys = {}, chain = Promise.resolve(), polling = null;

async function call(method, url, body) {
  const init = {method, headers: {}};
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { const e = new Error(data.error || response.statusText); e.status = response.status; throw e; }
  return data;
}

function later(action) {  // keys pressed quickly are done in order, none dropped
  chain = chain.then(action).then(() => { $("error").textContent = ""; }, async (e) => {
    $("error").textContent = e.message;
    if (e.status === 409) { await refresh(); $("error").textContent = e.message; }
  });
}

function pct(x) { return Math.round(100 * x) + "%"; }

function setButtons(classes) {
  const box = $("buttons"); box.textContent = ""; keys = {};
  const firsts = {};
  for (const c of classes) { const f = String(c).charAt(0).toLowerCase(); firsts[f] = (firsts[f] || 0) + 1; }
  classes.forEach((c, i) => {
    const key = i < 9 ? String(i + 1) : null, first = String(c).charAt(0).toLowerCase();
    if (key) keys[key] = c;
    if (firsts[first] === 1 && !"suk".includes(first) && !/[0-9]/.test(first)) keys[first] = c;
    const b = document.createElement("button");
    b.className = "class"; b.dataset.label = String(c);
    const k = document.createElement("kbd"); k.textContent = key || first;
    b.append(k, document.createTextNode(String(c)));
    b.addEventListener("click", () => later(() => answer(c)));
    box.append(b);
  });
}

function render(data) {
  row = data.row; progress = data.progress;
  if ($("buttons").children.length !== progress.classes.length) setButtons(progress.classes);
  const card = $("card"); card.dataset.row = row ? String(row.row) : "";
  $("kind").className = row && row.kind === "review" ? "review" : "";
  $("kind").textContent = !row ? "" : row.kind === "review"
    ? "review: labeled \\u201c" + row.given + "\\u201d - is that right? (row " + row.row + ")"
    : "row " + row.row;
  $("text").textContent = row && row.text !== null ? row.text : "";
  const img = $("image");
  if (row && row.image) { img.src = "/api/image/" + encodeURIComponent(row.row); img.classList.remove("hidden"); }
  else { img.removeAttribute("src"); img.classList.add("hidden"); }
  const table = $("fields"); table.textContent = "";
  if (row) for (const [name, value] of Object.entries(row.fields)) {
    const tr = table.insertRow(); tr.insertCell().textContent = name;
    tr.insertCell().textContent = value === null ? "(missing)"
      : typeof value === "number" && !Number.isInteger(value) ? String(+value.toPrecision(6)) : String(value);
  }
  $("guess").textContent = !row ? "" : row.guess === null ? "no model yet"
    : "model's guess: " + row.guess + " (" + pct(row.confidence) + ")";
  for (const b of $("buttons").children) b.classList.toggle("guess", !!row && String(row.guess) === b.dataset.label);
  if (!row) {
    $("text").textContent = progress.waiting ? "retraining - the next rows come in a moment"
      : progress.stop_reason ? "" : "nothing left to label";
  }
  const p = progress, batch = p.batch;
  $("labeled").textContent = p.labeled;
  $("batchbar").style.width = pct(batch.done / batch.size);
  $("status").textContent = "batch " + batch.done + "/" + batch.size + (p.retraining ? " - retraining" : "");
  $("counts").textContent = p.labeled + " labeled (" + p.original + " given, " + p.answered + " answered, "
    + p.relabeled + " relabeled) - " + p.skipped + " skipped - " + p.unlabeled + " left - " + p.fits + " fits"
    + (p.last_error ? " - last fit failed: " + p.last_error : "")
    + (p.cannot_fit ? " - no model: " + p.cannot_fit : "");
  $("banner").classList.toggle("hidden", !p.stop_reason);
  $("keep").classList.toggle("hidden", !p.stop_reason);
  $("banner-text").textContent = p.stop_reason
    ? "Stopped: " + p.stop_reason + ". More labels are unlikely to help. " : "";
  drawCurve(p.curve, p.score_on);
  clearTimeout(polling);
  if (p.retraining || p.waiting) polling = setTimeout(() => later(refresh), 1000);
}

function drawCurve(points, scoreOn) {
  const box = $("curve"), ns = "http://www.w3.org/2000/svg", w = 420, h = 160, m = 34;
  box.textContent = "";
  const caption = document.createElement("div");
  caption.textContent = "learning curve: score (" + scoreOn + ") by labels";
  box.append(caption);
  const pts = points.filter((q) => q[1] !== null);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.dataset.points = pts.length;
  box.append(svg);
  const text = (x, y, s, anchor) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", x);
    t.setAttribute("y", y); t.setAttribute("font-size", "11"); t.setAttribute("text-anchor", anchor || "start");
    t.textContent = s; svg.append(t); };
  if (!pts.length) { text(w / 2, h / 2, "no fit scored yet", "middle"); return; }
  const xs = pts.map((q) => q[0]), ys = pts.map((q) => q[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys, 1) - 0.02, y1 = Math.max(...ys) + 0.02;
  const X = (v) => m + (w - 2 * m) * (v - x0) / (x1 - x0), Y = (v) => h - m + (2 * m - h) * (v - y0) / (y1 - y0 || 1);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.map((q) => X(q[0]) + "," + Y(q[1])).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#3b7ddd"); line.setAttribute("stroke-width", "2");
  svg.append(line);
  for (const q of pts) { const c = document.createElementNS(ns, "circle"); c.setAttribute("cx", X(q[0]));
    c.setAttribute("cy", Y(q[1])); c.setAttribute("r", "3"); c.setAttribute("fill", "#3b7ddd"); svg.append(c); }
  text(m, h - 8, String(x0)); text(w - m, h - 8, String(x1), "end");
  text(4, Y(y1) + 4, y1.toFixed(2)); text(4, Y(y0), y0.toFixed(2));
}

async function refresh() { render(await call("GET", "/api/next")); }
async function answer(label) { if (row) render(await call("POST", "/api/answer", {row: row.row, label})); }
async function skip() { if (row) render(await call("POST", "/api/skip", {row: row.row})); }
async function undo() { render(await call("POST", "/api/undo", {})); }
async function keepGoing() { render(await call("POST", "/api/keep-going", {})); }

$("skip").addEventListener("click", () => later(skip));
$("undo").addEventListener("click", () => later(undo));
$("keep").addEventListener("click", () => later(keepGoing));
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const key = e.key.toLowerCase();
  if (key === "backspace" || key === "u") { e.preventDefault(); later(undo); }
  else if (key === "s") later(skip);
  else if (key === "k" && progress && progress.stop_reason) later(keepGoing);
  else if (key in keys) { const label = keys[key]; later(() => answer(label)); }
});
later(refresh);
</script></body></html>
"""
