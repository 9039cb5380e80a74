"""Local servers standing in for the outside world: webhook receivers, Stripe's API, and a TCP proxy
that cuts storage off for an outage."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Records every request; answers each path from its queue of replies (then `default`)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.default = Reply()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    queue = receiver.replies[self.path.split("?")[0]]
                    reply = queue.popleft() if queue else receiver.default
                reply = receiver.respond(self.command, self.path, body) or reply
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, method: str, path: str, body: bytes) -> Reply | None:
        """Override to compute a reply from the request."""
        return None

    def on(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.replies[path].extend(replies)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [item for item in self.requests if item.path.split("?")[0] == path]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.replies.clear()
            self.default = Reply()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopbackServer:
    """A test HTTP server on a free loopback port, serving on a daemon thread until stop(). Handlers
    that stall watch `stop_event`, which stop() sets before shutting the server down."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()

    def _serve(
        self, handler: type[BaseHTTPRequestHandler], server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    ) -> None:
        self.server = server_class(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """Forwards TCP connections to `upstream` (host, port) until `cut()`, which drops every open
    connection and refuses new ones (an outage), until `restore()`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.available = threading.Event()
        self.available.set()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def cut(self) -> None:
        self.available.clear()
        with self.lock:
            for connection in self.open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.open.clear()

    def restore(self) -> None:
        self.available.set()

    def stop(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.available.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.open.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for connection in (source, target):
                with contextlib.suppress(OSError):
                    connection.close()
