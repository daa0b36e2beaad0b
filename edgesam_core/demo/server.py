"""HTTP server of ``edgesam demo``: the page from ``static/`` plus a small JSON API over a DemoSession.

Routes:
    ``GET /`` (page), ``GET /static/<file>``, ``GET /api/info``;
    ``POST /api/image`` (raw image bytes) -> ``{image_id, width, height, is_hq, encode_ms}``;
    ``POST /api/segment`` (JSON ``{image_id, points, labels, box, multimask, hq}``) -> masks;
    ``POST /api/everything`` (JSON ``{image_id}``) -> coloured overlay and masks;
    ``POST /api/task`` (JSON ``{image_id, task}``) -> the mask of a learned task prompt, no click.

Every error is ``{"error": "one line"}`` with a 4xx status. Body sizes are checked from ``Content-Length``
before anything is read. The server binds to loopback by default and then also checks the ``Host`` header,
so a web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgesam_core.demo.session import DemoRequestError, DemoSession, TooLargeError
from edgesam_core.errors import EdgeSamError, InputError

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7680
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page only talks to this server: no CDN, no inline script, images from data:/blob: URLs.
_CSP = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; script-src 'self'; "
        "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


class LengthRequiredError(DemoRequestError):
    """A body was sent without ``Content-Length`` (chunked uploads are not accepted)."""

    status = 411


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_static(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: URL path -> (content, content type); ``/`` is ``index.html``."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(folder.iterdir()):
        kind = _CONTENT_TYPES.get(path.suffix)
        if path.is_file() and kind is not None:
            files[f"/static/{path.name}"] = (path.read_bytes(), kind)
    if "/static/index.html" not in files:
        raise InputError(f"The demo page is missing from the installation ({folder / 'index.html'}); reinstall edgesam")
    files["/"] = files["/static/index.html"]
    return files


class ClientGoneError(Exception):
    """The client hung up before its request body arrived (nothing to answer)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line for a client that vanished; other errors keep the standard report."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            if self.log is not None:
                self.log(f"{client_address[0]} connection lost: {type(exc).__name__}")
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], session: DemoSession,
                 static: dict[str, tuple[bytes, str]], log: Callable[[str], None] | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.session = session
        self.static = static
        self.log = log
        self.check_host = is_loopback(address[0])
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edgesam-demo"
    protocol_version = "HTTP/1.1"  # keep-alive: clicks reuse one connection
    timeout = 60  # idle keep-alive connections are closed after this many seconds

    # -- plumbing ---------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_allowed(self) -> bool:
        if not self.server.check_host:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    def _read_body(self, limit: int, what: str) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise LengthRequiredError("Chunked bodies are not accepted: send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise LengthRequiredError("Content-Length is required")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise DemoRequestError(f"Invalid Content-Length {raw!r}")
        if length > limit:
            # Refuse before reading: the unread body makes the connection unusable, so close it.
            self.close_connection = True
            raise TooLargeError(f"{what} is {length / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise ClientGoneError(f"client closed the connection after {len(body)} of {length} bytes")
        return body

    def _read_json(self) -> dict[str, Any]:
        body = self._read_body(self.server.session.limits.max_json_bytes, "Request")
        try:
            payload = json.loads(body.decode("utf-8"))
        except RecursionError as exc:
            raise DemoRequestError("Malformed JSON body: nested too deeply") from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's digit limit
            raise DemoRequestError(f"Malformed JSON body: {' '.join(str(exc).split())[:200]}") from exc
        if not isinstance(payload, dict):
            raise DemoRequestError("The JSON body must be an object")
        return payload

    def _dispatch(self, routes: dict[str, Callable[[], None]]) -> None:
        try:
            if not self._host_allowed():
                self.close_connection = True
                self._error(403, f"Host {self.headers.get('Host')!r} is not allowed: open the demo via 127.0.0.1")
                return
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                self._error(404, f"Not found: {urlsplit(self.path).path}")
                return
            route()
        except DemoRequestError as exc:
            self._error(exc.status, str(exc))
        except (EdgeSamError, ValueError) as exc:
            # Backend validation (prompts a runtime cannot take, ...) is still the client's problem.
            self._error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except ClientGoneError as exc:
            self.log_message("%s", f"{urlsplit(self.path).path}: {exc}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self.log_message("%s", f"{urlsplit(self.path).path}: client closed the connection")
        except Exception as exc:  # noqa: BLE001 - a failing request must not kill the server
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._error(500, f"Internal error: {type(exc).__name__}: {exc}")

    # -- routes -----------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in self.server.static:
            self._dispatch({path: self._static})
        else:
            self._dispatch({"/api/info": self._info, "/favicon.ico": self._no_content})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self._dispatch({"/api/image": self._upload, "/api/segment": self._segment,
                        "/api/everything": self._everything, "/api/task": self._task})

    def _static(self) -> None:
        body, kind = self.server.static[urlsplit(self.path).path]
        extra = {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"} if kind.startswith("text/html") else {}
        self._send(200, body, kind, extra)

    def _no_content(self) -> None:
        self._send(204, b"", "text/plain")

    def _info(self) -> None:
        self._json(200, self.server.session.info())

    def _upload(self) -> None:
        session = self.server.session
        data = self._read_body(session.limits.max_upload_bytes, "Upload")
        name = unquote(self.headers.get("X-Filename", "image"))[:200]
        self._json(200, session.upload(data, name=name))

    def _segment(self) -> None:
        payload = self._read_json()
        result = self.server.session.segment(
            payload.get("image_id"), points=payload.get("points"), labels=payload.get("labels"),
            box=payload.get("box"), multimask=payload.get("multimask", False), hq=payload.get("hq", True))
        self._json(200, result)

    def _everything(self) -> None:
        payload = self._read_json()
        self._json(200, self.server.session.everything(payload.get("image_id")))

    def _task(self) -> None:
        payload = self._read_json()
        self._json(200, self.server.session.task(payload.get("image_id"), payload.get("task")))


class DemoServer:
    """A bound demo server; :meth:`start` serves it from a background thread, :meth:`shutdown` stops it.

    Usable as a context manager (shut down on exit).
    """

    def __init__(self, httpd: _Server) -> None:
        self._httpd = httpd
        self._thread: threading.Thread | None = None

    @property
    def session(self) -> DemoSession:
        """The session the server answers from."""
        return self._httpd.session

    @property
    def host(self) -> str:
        """The address the socket is bound to."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the free port picked by the OS when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/`` to open in a browser (``0.0.0.0``/``::`` are shown as loopback)."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> DemoServer:
        """Serve in a daemon thread and return ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="edgesam-demo", daemon=True)
            self._thread.start()
        return self

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until the server stops; Ctrl+C (KeyboardInterrupt) reaches the caller."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(poll_s)

    def shutdown(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DemoServer:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def create_server(session: DemoSession, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                  log: Callable[[str], None] | None = None) -> DemoServer:
    """Bind the demo to ``host:port`` (``port=0``: any free port) without serving yet.

    Raises:
        InputError: the port is out of range, in use or not allowed, or the host is unknown.
    """
    return DemoServer(bind_server(host, port, lambda address: _Server(address, _Handler, session, load_static(), log)))


def bind_server(host: str, port: int, make: Callable[[tuple[str, int]], Any]) -> Any:
    """``make((host, port))`` -> a bound server, with one-line errors for the usual ways binding fails.

    Raises:
        InputError: the port is out of range, in use or not allowed, or the host is unknown.
    """
    if not 0 <= int(port) <= 65535:
        raise InputError(f"Port {port} is out of range: use 1-65535, or 0 for any free port")
    try:
        return make((host, int(port)))
    except socket.gaierror as exc:
        raise InputError(f"Unknown host {host!r}: use an address of this machine such as 127.0.0.1") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"Port {port} on {host} is already in use: pick another with --port "
                             "(0 = any free port)") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise InputError(f"Not allowed to listen on {host}:{port}: use a port above 1023") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InputError(f"{host} is not an address of this machine: use 127.0.0.1 or 0.0.0.0") from exc
        raise


def serve(session: DemoSession, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log: Callable[[str], None] | None = None) -> DemoServer:
    """Bind and start the demo server in a background thread; call ``shutdown()`` (or use ``with``) to stop.

    Args:
        session: the model and image state.
        host: address to bind; loopback by default, anything else exposes the demo to the network.
        port: TCP port; 0 picks a free one (read it back from ``DemoServer.port``).
        log: called with one line per request (None: quiet).

    Returns:
        The running :class:`DemoServer`; ``server.url`` is the page.
    """
    return create_server(session, host, port, log).start()
