"""`qa-ebm serve`: answer questions over HTTP with a saved pipeline, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import threading

from qa_ebm.errors import ConfigError

log = logging.getLogger("qa_ebm.service")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a pipeline over HTTP: a JSON API (POST /answer) and a small page (GET /)",
        description="Load a pipeline once and answer over HTTP: POST /answer with {question, context?, steps?, "
        "candidates?, seed?} returns what `qa-ebm answer --json` prints; GET / is a page to try it; GET /health "
        "says which pipeline runs. Model calls run one at a time on one worker; a request past --timeout is "
        "stopped and gets 504. SIGINT or SIGTERM stops accepting, lets requests in flight finish, and exits.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR", help="a pipeline dir (qa-ebm export, pipeline run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback; no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="413 past this (default 1 MiB)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="504 past this many seconds (default 30)")
    limits = p.add_argument_group("limits (past one: 503 for connections, 400 for a request's fields)")
    limits.add_argument("--max-connections", type=int, default=64, metavar="N", help="served at once (default 64)")
    limits.add_argument("--max-steps", type=int, default=1000, metavar="N", help="largest 'steps' (default 1000)")
    limits.add_argument("--max-candidates", type=int, default=16, metavar="N", help="largest 'candidates' (default 16)")
    limits.add_argument("--max-batch", type=int, default=32, metavar="N", help="questions in a 'batch' (default 32)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for the model (default: torch's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qa_ebm.pipeline import load_pipeline
    from qa_ebm.service import AnswerServer, RequestLimits, ServeSettings

    settings = ServeSettings(  # bad values fail before the pipeline loads
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        timeout=args.timeout,
        max_connections=args.max_connections,
        limits=RequestLimits(args.max_steps, args.max_candidates, args.max_batch),
    )
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline)
    try:
        server = AnswerServer(pipe, settings)
    except OSError as e:
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen ({e.strerror or e})") from e
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)  # the access log, on stderr
    if not _loopback(args.host):
        log.warning(
            "listening on %s: anyone who can reach it can use the model (there is no authentication)", args.host
        )

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    info = server.info
    print(f"serving {info['pipeline']} from {args.pipeline} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():  # a second Ctrl-C interrupts the graceful stop
            signal.signal(sig, handler)
        print("stopping: no new requests; waiting for the ones in flight", flush=True)
        finished = server.stop()
    print("stopped" if finished else "stopped; requests still running at the grace limit were dropped", flush=True)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
