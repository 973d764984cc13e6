"""A real HTTP server on loopback that fails on cue, then forwards to the real service.

Used to prove the SDK's retries: each incoming request takes the next step of `script`
("reset": close the connection without answering, an int: answer that status, "slow": answer
after a long pause, a `CutStream`: forward a streamed answer and break it partway), and once the
script is used up requests are forwarded to `upstream`.  With `scripted_path`, only requests to
that path take steps.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

SLOW_S = 3.0


@dataclass(frozen=True)
class CutStream:
    """Forward the upstream answer's status and its first `lines` lines, streamed (chunked, as the
    service sends them), then `end` it: "close" the connection mid-body, "reset" it, "finish" the
    body cleanly there, or, given `error=(status, code)`, finish it with that VideoError line."""

    lines: int
    end: str = "close"
    error: tuple[int, str] | None = None

    def closing_line(self) -> bytes | None:
        if self.error is None:
            return None
        status, code = self.error
        return json.dumps({"type": "error", "status": status,
                           "error": {"code": code, "message": f"scripted {code}"}}).encode() + b"\n"


class FlakyProxy:
    def __init__(self, upstream: str, script: list, retry_after: str | None = None, scripted_path: str | None = None):
        self.upstream = upstream
        self.script = list(script)
        self.scripted_path = scripted_path
        self.retry_after = retry_after
        self.calls: list[tuple[float, str]] = []  # (monotonic time, what was done)
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self.paths: list[str] = []  # and its path
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_step(self, path: str):
        with self._lock:
            scripted = self.script and self.scripted_path in (None, path)
            step = self.script.pop(0) if scripted else "forward"
            self.calls.append((time.monotonic(), str(step)))
            return step

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.authorizations.append(self.headers.get("authorization"))
                proxy.paths.append(self.path)
                step = proxy._next_step(self.path)
                if step == "reset":
                    self._reset()
                    return
                if step == "slow":
                    time.sleep(SLOW_S)
                if isinstance(step, int):
                    self._reply(step, b'{"error": {"code": "overloaded", "message": "scripted failure"}}',
                                {"content-type": "application/json",
                                 **({"retry-after": proxy.retry_after} if proxy.retry_after else {})})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                if isinstance(step, CutStream):
                    self._cut(step, body, headers)
                    return
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                       timeout=60)
                self._reply(answer.status_code, answer.content, {"content-type": answer.headers["content-type"]})

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends a TCP RST, as a crashed or restarting server would.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _cut(self, cut: CutStream, body: bytes, headers: dict) -> None:
                with httpx.stream(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                  timeout=60) as answer:
                    if answer.status_code != 200:  # refused before streaming: forwarded as it is
                        self._reply(answer.status_code, answer.read(), {"content-type": answer.headers["content-type"]})
                        return
                    self.send_response(200)
                    self.send_header("content-type", answer.headers["content-type"])
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    lines = answer.iter_lines()
                    for _ in range(cut.lines):
                        self._chunk(next(lines).encode() + b"\n")
                # Leaving the upstream answer unread closes it: the service stops tracking, as
                # it does when any client goes away.
                if cut.end == "reset":
                    self._reset()
                    return
                if cut.end == "close":
                    self.close_connection = True  # no last chunk: the body is cut mid-stream
                    return
                if (line := cut.closing_line()) is not None:
                    self._chunk(line)
                self._chunk(b"")  # the zero-length chunk: the body ends here

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

            def _reply(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class FrontDoor:
    """A TCP forwarder on loopback in front of a service.  `kill()` is the service dying as its
    clients see it: every open connection reset at once, then nothing listening on the port."""

    def __init__(self, upstream: str):
        url = httpx.URL(upstream)
        self._upstream = (url.host, url.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._dead = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # killed
                return
            with self._lock:
                if self._dead:
                    client.close()
                    return
                upstream = socket.create_connection(self._upstream)
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def kill(self) -> None:
        with self._lock:
            self._dead = True
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
            self._listener.close()
            for sock in self._sockets:
                # As a killed server's kernel does: the connection ends at once (shutdown also
                # wakes the forwarding thread blocked on it; SO_LINGER 0 makes the close a reset).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> "FrontDoor":
        return self

    def __exit__(self, *exc) -> None:
        if not self._dead:
            self.kill()
