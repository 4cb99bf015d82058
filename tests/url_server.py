"""A real HTTP(S) server on a loopback address for URL-input tests: routes by path, records every request."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    path: str
    host: str | None
    sni: str | None


@dataclass
class UrlServer:
    """``with UrlServer() as srv: srv.routes["/x"] = srv.body(b"...")``; ``srv.seen`` lists what was asked."""

    address: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __enter__(self) -> UrlServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                sni = getattr(self.connection, "tenexa_sni", None)
                server.seen.append(Seen(self.path, self.headers.get("Host"), sni))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer((self.address, self.port), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            def remember_sni(sock, name, _ctx):
                sock.tenexa_sni = name
            self.tls.sni_callback = remember_sni
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.address}:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    @staticmethod
    def body(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Route:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        return route

    @staticmethod
    def redirect(location: str, status: int = 302) -> Route:
        return UrlServer.body(b"", status, {"Location": location})
