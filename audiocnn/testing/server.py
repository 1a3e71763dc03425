"""A real HTTP server on 127.0.0.1 serving registered byte strings, with the faults a
flaky host shows (dropped connections, wrong bytes, ignored ranges, stalls, redirect loops)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr logging
        pass

    def do_GET(self):  # noqa: N802
        srv: FixtureServer = self.server.fixture  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        entry = srv.routes.get(path)
        if entry is None:
            srv.record(path, rng, 404, 0)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, mode = entry
        if mode.startswith("redirect-to:"):  # as Hugging Face's resolve/ URLs answer: 302 to a CDN
            srv.record(path, rng, 302, 0)
            self.send_response(302)
            self.send_header("Location", mode.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "redirect-loop":
            srv.record(path, rng, 302, 0)
            self.send_response(302)
            self.send_header("Location", path)  # to itself, for ever
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        n_requests = sum(1 for r in srv.requests if r["path"] == path)
        start = 0
        stop = len(data)  # exclusive
        status = 200
        if rng and mode != "ignore-range":
            first, _dash, last = rng.split("=", 1)[1].partition("-")
            start = int(first)
            if last:
                stop = min(len(data), int(last) + 1)
            if start >= len(data):
                srv.record(path, rng, 416, 0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:stop]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "corrupt-once" and n_requests == 0:
            body = bytes(len(body))  # a whole answer of the wrong bytes, as a bad cache serves
        if mode == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            srv.record(path, rng, status, len(body) // 2)
            time.sleep(srv.stall_seconds)  # then the connection closes: a server that hangs
            self.close_connection = True
            return
        if mode == "drop-once" and n_requests == 0:
            cut = len(body) // 2
            self.wfile.write(body[:cut])
            self.wfile.flush()
            srv.record(path, rng, status, cut)
            self.close_connection = True
            self.connection.shutdown(2)  # drop mid-file, as a flaky host does
            return
        self.wfile.write(body)
        srv.record(path, rng, status, len(body))


class FixtureServer:
    """Serves registered byte strings; modes: normal, drop-once, corrupt-once, ignore-range,
    stall (half the body, then silence for ``stall_seconds``), redirect-loop, redirect-to:PATH.
    Range requests may name an end (``bytes=a-b``), as :mod:`audiocnn.datasets.remotezip` asks."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[dict] = []
        self.stall_seconds = 3.0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fixture = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes, mode: str = "normal") -> str:
        self.routes[path] = (data, mode)
        return self.base_url + path

    def add_files(self, prefix: str, files: dict[str, bytes]) -> str:
        for name, data in files.items():
            self.add(f"{prefix.rstrip('/')}/{name}", data)
        return self.base_url + prefix.rstrip("/")

    def record(self, path: str, rng: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.requests.append({"path": path, "range": rng, "status": status, "sent": sent})

    def bytes_served(self, path: str) -> int:
        return sum(r["sent"] for r in self.requests if r["path"] == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
