"""``edgesam demo --client-side``: serve a site built by ``edgesam export-web`` from this machine.

A plain static file server with the cross-origin isolation headers (COOP/COEP/CORP) that let the page use
WASM threads, the MIME types browsers insist on for modules and WebAssembly, no directory listings, and
the same loopback ``Host`` check as the demo server. The model runs in the browser; this only sends files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgesam_core.demo.server import DEFAULT_HOST, DEFAULT_PORT, DemoServer, bind_server, is_loopback

#: Headers on every answer: cross-origin isolation (SharedArrayBuffer for WASM threads) and no sniffing.
SITE_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
    "": "application/octet-stream",
}


class _SiteHandler(SimpleHTTPRequestHandler):
    extensions_map = _TYPES
    server: _SiteServer

    def end_headers(self) -> None:
        for key, value in SITE_HEADERS.items():
            self.send_header(key, value)
        super().end_headers()

    def list_directory(self, path: Any) -> None:  # no listings: the page names every file it needs
        self.send_error(404, "Not found")
        return None

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.server.check_host:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if not is_loopback(host):
                self.send_error(421, "Misdirected request: this server answers only to localhost")
                return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def send_head(self) -> Any:
        self.server.requests.append(self.path)
        return super().send_head()


class _SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, log: Callable[[str], None] | None) -> None:
        super().__init__(address, handler)
        self.log = log
        #: Paths asked for, in order (tests check that the page fetched its model from here).
        self.requests: list[str] = []
        self.check_host = is_loopback(str(address[0]))


class SiteServer(DemoServer):
    """A bound static-site server; ``start``/``wait``/``shutdown``/``url`` as :class:`DemoServer`."""

    @property
    def requests(self) -> list[str]:
        """Paths requested so far."""
        return self._httpd.requests


def serve_site(site: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               log: Callable[[str], None] | None = None) -> SiteServer:
    """Serve ``site`` (a folder built by ``edgesam export-web``) on ``host:port`` in a background thread.

    Raises:
        InputError: not a built site, or the port/host cannot be used.
    """
    from edgesam_core.export.web_export import read_manifest

    site = Path(site)
    read_manifest(site)
    handler = partial(_SiteHandler, directory=str(site.resolve()))
    return SiteServer(bind_server(host, port, lambda address: _SiteServer(address, handler, log))).start()
