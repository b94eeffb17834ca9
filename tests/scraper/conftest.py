"""A scriptable HTTP(S) server on 127.0.0.1 for the scraper tests (nothing here touches the internet)."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]


Route = Callable[[BaseHTTPRequestHandler, int], None]  # (handler, 0-based hit number) -> writes the response


class LocalServer:
    """Threaded HTTP server on 127.0.0.1; ``route`` answers every GET; ``seen`` records what arrived."""

    def __init__(self, route: Route, tls: ssl.SSLContext | None = None) -> None:
        self.route = route
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with outer.lock:
                    hit = len(outer.seen)
                    outer.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    outer.route(self, hit)
                except (ConnectionError, ssl.SSLError):
                    pass  # the client gave up on purpose (size limit, timeout)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                exc = sys.exc_info()[1]
                if not isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
                    outer.errors.append(exc)  # the client hanging up is expected; anything else is kept

        self.errors: list[BaseException | None] = []
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.seen)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(
    handler: BaseHTTPRequestHandler,
    status: int = 200,
    body: bytes = b"",
    content_type: str | None = "text/html; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> None:
    """Write a complete response with Content-Length."""
    handler.send_response(status)
    if content_type is not None:
        handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    """Factory: ``serve(route, tls=None)`` starts a LocalServer that is closed after the test."""
    servers: list[LocalServer] = []

    def start(route: Route, tls: ssl.SSLContext | None = None) -> LocalServer:
        server = LocalServer(route, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    for server in servers:
        assert server.errors == [], f"the test server failed: {server.errors!r}"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    """A getaddrinfo stand-in answering from ``table`` (host -> addresses); unknown hosts fail like DNS."""

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in table[host]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if fam == socket.AF_INET6 else (address, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return getaddrinfo
