"""A small local HTTP file server for download tests (127.0.0.1, free port, stops by itself).

Serves a dict of ``path -> bytes`` and/or a folder, honours ``Range: bytes=a-b`` with 206/416, and has
switches that reproduce what real servers do to downloads::

    with FileServer({"/w.pth": data}) as srv:
        url = srv.url("/w.pth")
        srv.cut_after = 1000        # next response stops after 1000 body bytes (connection dropped)
        srv.ignore_range = True     # answer Range requests with 200 and the whole file
        srv.fail_next = 2           # next two requests get 503
        srv.drive_files["ID"] = data  # Google-Drive-style confirmation page at /download?id=ID
        srv.hits("/w.pth")          # number of GETs of that path

Every attribute can be changed while the server runs; ``srv.requests`` records each request.
"""

from __future__ import annotations

import html
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Mapping


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


@dataclass
class FileServer:
    """Threaded HTTP server on 127.0.0.1 with fault-injection switches (see module docstring).

    Args:
        files: URL path (leading ``/``) -> body bytes.
        root: optional folder whose files are served under ``/`` (after ``files``).
        ignore_range: answer Range requests with 200 and the full body (a server without Range support).
        cut_after: drop the connection after this many body bytes, for the next ``cut_times`` responses.
        cut_times: how many responses ``cut_after`` applies to (then it switches itself off).
        fail_next: answer the next N requests with ``fail_status`` (transient server errors).
        fail_status: status code used by ``fail_next`` (503 by default; 429 works too).
        drive_files: Google Drive file id -> bytes; ``/download?id=X`` first returns the large-file
            warning page whose form points back at this server, and serves the bytes once
            ``confirm`` and ``uuid`` are present.
        content_type: Content-Type for served files.
        lifetime: seconds after which the server shuts itself down even if nobody stops it.
    """

    files: Mapping[str, bytes] = field(default_factory=dict)
    root: Path | None = None
    ignore_range: bool = False
    cut_after: int | None = None
    cut_times: int = 1
    fail_next: int = 0
    fail_status: int = 503
    drive_files: dict[str, bytes] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    lifetime: float = 300.0
    requests: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = dict(self.files)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.drive_uuid = "6d0b1c2e-test-uuid"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FileServer:
        """Bind to a free port on 127.0.0.1 and serve from a daemon thread."""
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        # A safety net so a test that forgets to stop the server cannot leave it running.
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Shut the server down (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._httpd is None:
            raise RuntimeError("FileServer is not running; use it as a context manager or call start()")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def hits(self, path: str, method: str = "GET") -> int:
        """How many requests for ``path`` (query ignored) were received."""
        return sum(1 for r in self.requests if r.path == path and r.method == method)

    def range_requests(self, path: str) -> list[str]:
        """The ``Range`` headers sent for ``path``, in order (requests without one are skipped)."""
        return [r.headers["range"] for r in self.requests if r.path == path and "range" in r.headers]

    def _body_for(self, path: str) -> bytes | None:
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            root = Path(self.root).resolve()
            candidate = (root / urllib.parse.unquote(path).lstrip("/")).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return candidate.read_bytes()
        return None

    def _take_cut(self) -> int | None:
        with self._lock:
            if self.cut_after is None or self.cut_times <= 0:
                return None
            self.cut_times -= 1
            cut = self.cut_after
            if self.cut_times == 0:
                self.cut_after = None
            return cut

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False


class _QuietServer(ThreadingHTTPServer):
    """Does not print tracebacks when a client (or a simulated cut) drops a connection."""

    def handle_error(self, request: object, client_address: object) -> None:
        return None


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.0"  # one request per connection: simple and deterministic

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return None  # keep pytest output clean

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        record = RequestRecord(self.command, parsed.path, query, {k.lower(): v for k, v in self.headers.items()})
        self.owner.requests.append(record)
        if self.owner._take_failure():
            record.status = self.owner.fail_status
            self._send_simple(self.owner.fail_status, b"temporarily unavailable\n", head)
            return
        if parsed.path == "/download" and query.get("id") in self.owner.drive_files:
            body = self.owner.drive_files[query["id"]]
            if "confirm" not in query or query.get("uuid") != self.owner.drive_uuid:
                record.status = 200
                page = _drive_warning_page(self.owner.base_url, query["id"], self.owner.drive_uuid)
                self._send_simple(200, page, head, content_type="text/html; charset=utf-8")
                return
        else:
            body = self.owner._body_for(parsed.path)
        if body is None:
            record.status = 404
            self._send_simple(404, b"not found\n", head)
            return
        self._send_file(body, record, head)

    def _send_simple(self, status: int, body: bytes, head: bool, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_file(self, body: bytes, record: RequestRecord, head: bool) -> None:
        size = len(body)
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted and not self.owner.ignore_range:
            parsed = _parse_range(wanted, size)
            if parsed is None:
                record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", self.owner.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "none" if self.owner.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        payload = body[start:end + 1]
        cut = self.owner._take_cut()
        if cut is not None and cut < len(payload):
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            # Drop the connection mid-body: the client sees fewer bytes than Content-Length.
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end), or None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _drive_warning_page(base_url: str, file_id: str, uuid: str) -> bytes:
    """An HTML page shaped like Google Drive's "can't scan this file for viruses" interstitial."""
    action = html.escape(f"{base_url}/download")
    inputs = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
        for name, value in (("id", file_id), ("export", "download"), ("confirm", "t"), ("uuid", uuid))
    )
    page = (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        "<p>Google Drive can't scan this file for viruses.</p>"
        f'<form id="download-form" action="{action}" method="get">'
        f'<input type="submit" id="uc-download-link" value="Download anyway">{inputs}</form>'
        "</body></html>"
    )
    return page.encode()
