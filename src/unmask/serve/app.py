"""The web application (FastAPI) around :class:`Endpoints`, and :func:`serve`, which runs it with uvicorn.

FastAPI and uvicorn are the optional extra ``unmask[serve]``: they are imported where they are
used, so that the rest of unmask works without them.

Shutdown: on Ctrl-C (SIGINT) or SIGTERM uvicorn stops accepting connections and waits for the
requests in flight (streams included) to finish; then the batcher finishes what it still holds
and stops. A second Ctrl-C stops at once.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run time,
# and their types are imported inside create_app.
import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from unmask.errors import UserError, require
from unmask.pipeline import Pipeline, load
from unmask.serve.endpoints import Answer, ClientGone, Endpoints, error_data
from unmask.serve.requests import LOOPBACK_HOSTS, MAX_BODY_BYTES, Limits, RequestError, check_origin

PURPOSE = "unmask serve"
LOG = logging.getLogger("unmask.serve")


class ServeError(UserError):
    """The server cannot start as asked (e.g. its port is taken); the message names the fix."""


def page() -> str:
    """The live page served at ``/`` (plain HTML and JavaScript, no assets from elsewhere)."""
    return (resources.files("unmask.serve") / "static" / "index.html").read_text(encoding="utf-8")


class OriginGuard:
    """ASGI middleware: every HTTP request passes :func:`check_origin` first (the Host it names, the type of a
    POST's body), or is answered with its 4xx here."""

    def __init__(self, app: Any, allowed_hosts: Sequence[str]) -> None:
        self.app, self.allowed_hosts = app, tuple(host.lower() for host in allowed_hosts)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            try:
                check_origin(scope["method"], headers.get("host"), headers.get("content-type"), self.allowed_hosts)
            except RequestError as err:
                from fastapi.responses import JSONResponse

                status, body = error_data(err)
                await JSONResponse(body, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(pipeline: Pipeline, *, model: str = "unmask", max_batch: int = 64, limits: Limits | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> Any:
    """A FastAPI app serving ``pipeline`` (``model`` is its name in the API); see docs/serving.md.

    It answers requests that name one of ``allowed_hosts`` in their Host header ("*": any), takes POST
    bodies declared JSON only, and sends no CORS headers: a web page elsewhere can neither read its
    answers nor make it generate (:func:`unmask.serve.requests.check_origin`).
    """
    require("fastapi", PURPOSE)
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    endpoints = Endpoints(pipeline, model=model, max_batch=max_batch, limits=limits)

    @asynccontextmanager
    async def lifespan(_app):
        endpoints.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(endpoints.batcher.close)

    # No generated docs: their pages load assets from elsewhere, and the bodies are checked by hand.
    app = FastAPI(title="unmask", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(OriginGuard, allowed_hosts=allowed_hosts)
    app.state.endpoints = endpoints

    def error_response(err: Exception) -> JSONResponse:
        status, body = error_data(err)
        return JSONResponse(body, status_code=status)

    def respond(answer: Answer) -> Response:
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return StreamingResponse(answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def body(request: Request) -> bytes:
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RequestError(f"the request body is over {MAX_BODY_BYTES >> 20} MiB; send a shorter "
                                       "prompt", status=413)
                chunks.append(chunk)
        except ClientDisconnect:
            # Not a server error: one line in the log, not a traceback per client (ClientGone's handler).
            client = request.client.host if request.client else "a client"
            LOG.warning("%s disconnected while sending its request to %s", client, request.url.path)
            raise ClientGone from None
        return b"".join(chunks)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, err: UserError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        fix = {404: "no such endpoint", 405: "method not allowed"}.get(err.status_code, err.detail)
        message = (f"{fix}: {where}; the endpoints are GET /, GET /health, GET /v1/models, POST /v1/generate, "
                   "POST /v1/completions and POST /v1/chat/completions")
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}},
                            status_code=err.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _err: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has gone

    @app.exception_handler(Exception)
    async def server_error(_request: Request, err: Exception) -> JSONResponse:
        return error_response(err)

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page())

    @app.get("/health")
    async def health() -> dict:
        return endpoints.health()

    @app.get("/v1/models")
    async def models() -> dict:
        return endpoints.models()

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        return respond(await endpoints.generate(await body(request), request.receive))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return respond(await endpoints.complete(await body(request), request.receive))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return respond(await endpoints.chat(await body(request), request.receive))

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port), or a ServeError naming the fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port or --host, "
                         "or stop what uses it") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def serving(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a thread (in a notebook, a test, a benchmark) and yield its base URL;
    on exit the server drains its requests and stops."""
    require("uvicorn", PURPOSE)
    import uvicorn

    sock = listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="unmask-server", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise ServeError("the server stopped while starting; see its log above")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def answered_hosts(host: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names a server listening on ``host`` answers to: the loopback names, the address itself, this
    machine's names when it listens on every interface, and ``extra``."""
    names = [*LOOPBACK_HOSTS, host.strip("[]").lower()]
    if host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    return tuple(dict.fromkeys(name for name in [*names, *(e.lower() for e in extra)] if name))


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
          device: str = "auto", step: int | None = None, limits: Limits | None = None,
          trust_remote_code: bool = False, allowed_hosts: Sequence[str] = ()) -> None:
    """Serve the model at ``path`` (a run directory or checkpoint folder) until Ctrl-C, then drain and stop.
    Requests must name ``host`` (or a loopback name, or one of ``allowed_hosts``) in their Host header."""
    require("fastapi", PURPOSE)
    require("uvicorn", PURPOSE)
    import uvicorn

    pipeline = load(path, step=step, device=device, trust_remote_code=trust_remote_code)
    model = Path(path).resolve().name
    app = create_app(pipeline, model=model, max_batch=max_batch, limits=limits,
                     allowed_hosts=answered_hosts(host, allowed_hosts))
    sock = listening_socket(host, port)
    print(f"unmask serve: {model} at {url_of(sock)}/ (Ctrl-C drains and stops)", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it handled again once it has drained
        pass
    finally:
        sock.close()
