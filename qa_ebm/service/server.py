"""The HTTP server of `qa-ebm serve`: the standard library's ThreadingHTTPServer, JSON in and out.

Routes::

    GET  /          the page (page.py)
    GET  /health    {"status", "pipeline", "kind", "context", "version", "busy_for_s", "limits"}
    POST /answer    a request (requests.py) -> the record of `qa-ebm answer --json`, or {"answers": [...]}

Threads: one per connection (at most ``max_connections``; past that a connection gets 503 from a short-lived
thread, at most ``MAX_REFUSALS`` of them), each reading and checking its request, then waiting for the single
model worker (worker.py). Every response is JSON with a status that says whose fault it was, never a traceback:

    400  the body is not JSON, or a field is missing, of the wrong type or out of range
    404 / 405 / 501  no such route / method
    411 / 413  no Content-Length / a body over ``max_body_bytes``, refused from the header, before it is read
    422  the pipeline refused the input (a project error: empty question, a passage it cannot read, ...)
    500  anything else (logged here with its traceback)
    503  too many connections, or the model worker is gone
    504  no answer within ``timeout`` seconds; the model call was stopped and the server goes on

The standard library rather than a framework: the service is three routes on loopback, and the parts a
framework would bring (routing, JSON) are a few lines; the parts that matter here (refusing a body from its
header, stopping a runaway model call) it would not bring. Each connection carries one request (HTTP/1.0
semantics), so an idle keep-alive connection never holds one of the slots.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from qa_ebm import __version__
from qa_ebm.errors import ConfigError, QaEbmError
from qa_ebm.pipeline.answering import answer_rows
from qa_ebm.service.page import PAGE
from qa_ebm.service.requests import RequestError, RequestLimits, parse_answer_request
from qa_ebm.service.worker import DeadlineExceeded, ModelWorker

log = logging.getLogger(__name__)

DRAIN_BYTES = 1 << 20  # after a refusal, read and drop at most this much of the request so the client sees it
DRAIN_SECONDS = 1.0
MAX_REFUSALS = 256  # connections told 503 at once, each by a thread that lives at most DRAIN_SECONDS; past it, closed
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ServeSettings:
    """Where to listen and how much one request may take (checked on construction)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1 << 20
    timeout: float = 30.0  # seconds from a request's arrival at the model queue to its answer
    max_connections: int = 64
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, f"port must be in [0, 65535], got {self.port}"),
            (self.max_body_bytes >= 1, f"max_body_bytes must be >= 1, got {self.max_body_bytes}"),
            (math.isfinite(self.timeout) and self.timeout > 0, f"timeout must be > 0 seconds, got {self.timeout}"),
            (self.max_connections >= 1, f"max_connections must be >= 1, got {self.max_connections}"),
            (self.limits.max_steps >= 0, f"max_steps must be >= 0, got {self.limits.max_steps}"),
            (self.limits.max_candidates >= 1, f"max_candidates must be >= 1, got {self.limits.max_candidates}"),
            (self.limits.max_batch >= 1, f"max_batch must be >= 1, got {self.limits.max_batch}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"serve: {message}")


def describe(pipe: Any) -> dict[str, str]:
    """The pipeline's class, its kind, and whether it reads a passage: required, optional or ignored."""
    from qa_ebm.pipeline.reading import ReadingPipeline

    if isinstance(pipe, ReadingPipeline):
        return {"pipeline": type(pipe).__name__, "kind": "reading", "context": "required"}
    return {
        "pipeline": type(pipe).__name__,
        "kind": "answer",
        "context": "optional" if pipe.uses_context else "ignored",
    }


class AnswerServer(ThreadingHTTPServer):
    """Serves one loaded pipeline; ``start()`` in a background thread, ``stop()`` gracefully."""

    daemon_threads = True  # stop() waits for requests itself, with a bound

    def __init__(self, pipe: Any, settings: ServeSettings):
        self.pipe, self.settings = pipe, settings
        self.info = describe(pipe)
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._refusals = threading.BoundedSemaphore(MAX_REFUSALS)
        # The listen backlog: socketserver's 5 overflows under a burst, and the kernel may then reset connections
        # their clients already saw open. The kernel's own cap instead: a connection is accepted, then served or
        # told 503, rather than reset.
        self.request_queue_size = socket.SOMAXCONN
        super().__init__((settings.host, settings.port), AnswerHandler)  # binds: OSError if the port is taken
        self.worker = ModelWorker()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> AnswerServer:
        self._thread = threading.Thread(target=self.serve_forever, name="qa-ebm-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float | None = None) -> bool:
        """Stop accepting, let the requests in flight finish (at most `grace` seconds, default the request
        timeout and a second), close. True if every request finished in time."""
        grace = self.settings.timeout + 1.0 if grace is None else grace
        if self._thread is not None:
            self.shutdown()  # serve_forever returns: no new connections
            self._thread.join()
        deadline = time.monotonic() + grace
        finished = all(
            self._slots.acquire(timeout=max(0.0, deadline - time.monotonic()))
            for _ in range(self.settings.max_connections)
        )
        self.server_close()
        self.worker.close(timeout=max(0.0, deadline - time.monotonic()))
        return finished

    # ------------------------------------------------------------------------------- one thread per connection

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if self._refusals.acquire(blocking=False):  # a thread of its own: the 503 waits for the request
                threading.Thread(target=self._refuse_busy, args=(request,), daemon=True).start()
            else:
                self.shutdown_request(request)  # a flood: closed unanswered rather than one more thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        limit = self.settings.max_connections
        body = json.dumps({"error": f"server busy: {limit} connections open (--max-connections); retry"}).encode()
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(DRAIN_SECONDS)
            request.sendall(head.encode("ascii") + body)
            _linger(request, DRAIN_BYTES)
        except OSError:
            pass  # the client is gone already; nothing to tell it
        finally:
            self.shutdown_request(request)
            self._refusals.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection that broke mid-response (the client left): one line, not socketserver's traceback.
        e = sys.exc_info()[1]
        log.warning("connection from %s: %s: %s", client_address[0], type(e).__name__, e)


def _linger(sock: socket.socket, max_bytes: int) -> None:
    """After the response: stop writing, then read and drop what the client still sends (at most `max_bytes`,
    DRAIN_SECONDS) before the socket is closed. Closing with unread data resets the connection, and a client
    that is still sending its request would lose the response with it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_SECONDS
        while max_bytes > 0 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(min(max_bytes, 65536))
            if not chunk:
                break
            max_bytes -= len(chunk)
    except OSError:
        pass  # the client closed first, or the time is up: nothing left to protect


class AnswerHandler(BaseHTTPRequestHandler):
    """One request: route it, check it, hand the model call to the worker, answer JSON."""

    server: AnswerServer
    server_version = f"qa-ebm/{__version__}"
    sys_version = ""  # the Python version is nobody's business (see version_string)
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        self.timeout = self.server.settings.timeout  # socket reads: a client that stops sending is dropped
        self._unread = 0  # bytes of a refused body still on the wire
        self._allow: str | None = None  # the Allow header of a 405
        super().setup()

    def finish(self) -> None:
        super().finish()
        if self._unread > 0:
            _linger(self.connection, min(self._unread, DRAIN_BYTES))

    # ------------------------------------------------------------------------------- routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        routes: dict[str, Callable[[], None]] = {"/": self._page, "/health": self._health}
        if path in routes:
            self._respond(routes[path])
        else:
            self._respond(lambda: self._no_route(path, "GET"))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self._unread = _declared_or_zero(self.headers.get("Content-Length"))
        if path == "/answer":
            self._respond(self._answer)
        else:
            self._respond(lambda: self._no_route(path, "POST"))

    def _no_route(self, path: str, method: str) -> None:
        allowed = {"/": "GET", "/health": "GET", "/answer": "POST"}.get(path)
        if allowed is None:
            raise RequestError(404, f"no route {path!r}; try GET /, GET /health or POST /answer")
        self._allow = allowed
        raise RequestError(405, f"{path} takes {allowed}, not {method}")

    def _page(self) -> None:
        body = PAGE.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", PAGE_CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _health(self) -> None:
        worker = self.server.worker
        busy = worker.busy_for
        payload = {
            "status": "ok" if worker.alive else "down",
            **self.server.info,
            "version": __version__,
            "busy_for_s": None if busy is None else round(busy, 3),
            "limits": {
                "max_body_bytes": self.server.settings.max_body_bytes,
                "timeout_s": self.server.settings.timeout,
                **asdict(self.server.settings.limits),
            },
        }
        self._send_json(200 if worker.alive else 503, payload)

    def _answer(self) -> None:
        body = self._read_body()
        request = parse_answer_request(body, self.server.info["kind"] == "reading", self.server.settings.limits)
        pipe = self.server.pipe
        records = self.server.worker.run(
            lambda: answer_rows(pipe, request.rows, request.options), self.server.settings.timeout
        )
        self._send_json(200, {"answers": records} if request.batch else records[0])

    # ------------------------------------------------------------------------------- errors

    def _respond(self, route: Callable[[], None]) -> None:
        """Run a route; turn every failure into a JSON error with the status that names whose fault it was."""
        try:
            route()
        except RequestError as e:
            self._send_error_json(e.status, e.message)
        except DeadlineExceeded:
            limit = self.server.settings.timeout
            self._send_error_json(504, f"no answer within the {limit:g} s limit (--timeout); the request was stopped")
        except QaEbmError as e:  # the pipeline refused the input: the client can fix it
            self._send_error_json(422, str(e))
        except (ConnectionError, TimeoutError):
            raise  # the client left or stalled mid-response: nobody to answer (handle_error logs it)
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            self._send_error_json(500, "internal error; the server log has the details")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, header too long, unknown method) as JSON too."""
        self.close_connection = True
        self._send_error_json(code, message or HTTPStatus(code).phrase)

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl's default for big bodies): judge the declared size first, so a body
        that is too big is never sent at all."""
        try:
            self._declared_length()
        except RequestError as e:
            self._unread = _declared_or_zero(self.headers.get("Content-Length"))
            self._send_error_json(e.status, e.message)
            return False
        return super().handle_expect_100()

    # ------------------------------------------------------------------------------- the body

    def _declared_length(self) -> int:
        """Content-Length, checked against the limit before a byte of the body is read."""
        if "Transfer-Encoding" in self.headers:
            raise RequestError(411, "chunked bodies are not accepted; send the body with a Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestError(411, "Content-Length is required")
        raw = values[0].strip()
        if len(set(values)) > 1 or not (raw.isascii() and raw.isdigit()):
            raise RequestError(400, f"Content-Length must be one non-negative integer, got {', '.join(values)[:40]}")
        limit = self.server.settings.max_body_bytes
        if len(raw) > 18 or int(raw) > limit:
            raise RequestError(413, f"body of {raw} bytes is over the {limit}-byte limit (--max-body-bytes)")
        return int(raw)

    def _read_body(self) -> bytes:
        n = self._declared_length()
        try:
            body = self.rfile.read(n)
        except TimeoutError as e:
            raise RequestError(408, f"the body did not arrive within {self.timeout:g} s") from e
        self._unread = 0
        if len(body) < n:
            raise RequestError(400, f"the body ended after {len(body)} of the {n} bytes its Content-Length declared")
        return body

    # ------------------------------------------------------------------------------- responses

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(_finite(payload), ensure_ascii=False, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == 405 and self._allow:
            self.send_header("Allow", self._allow)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _declared_or_zero(value: str | None) -> int:
    """A Content-Length header as bytes to drain (0 when absent or not a number; the route says why)."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else 0


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON, which a browser's JSON.parse accepts (NaN it does not)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
