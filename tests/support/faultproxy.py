"""A small fault-injecting HTTP proxy for tests and benchmarks (127.0.0.1, ephemeral port).

Clients use it as their endpoint (``--endpoint-url http://127.0.0.1:PORT``); it forwards each
request to the upstream (moto server) and records it. Rules make matching requests fail:

* ``status``   answer with an S3-style error (default 503 SlowDown) without forwarding
* ``reset``    read part of the request body, then reset the TCP connection (RST)
* ``delay``    sleep, then forward
* ``truncate`` forward, then send only half of the response body and reset the connection
* ``short``    forward, then send only half of the response body and close cleanly (FIN): the
               client sees nothing wrong but a body shorter than its Content-Length
* ``corrupt``  forward, then flip one byte of the response body (headers, ETag included, intact)
* ``flip``     flip one byte of the request body, then forward it (headers, Content-MD5 included,
               intact): damage on the way in, which S3 refuses as ``BadDigest``
* ``etag``     forward, then replace the response's ETag header with another MD5-looking value
* ``stall``    read the request, then never answer: hold the connection until ``delay`` seconds
               (0: until the proxy stops), then close it without a response

Each rule applies to the first ``times`` matching requests (None: all), to a share of them
(``probability``, drawn from the proxy's seeded RNG) and for a while (``seconds`` after it was
added; None: for ever) — e.g. a 503 storm is ``add_rule("status", times=None, probability=0.3,
seconds=5)``. The log records method, path, query, status, selected headers and the highest
number of concurrent requests; ``faults_injected`` counts every fault since the proxy started.

Run standalone: ``python -m tests.support.faultproxy --upstream URL [--delay S] [--bandwidth B/s]``.
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
_RECORDED_HEADERS = ("x-amz-acl", "content-md5", "content-length", "x-amz-copy-source", "range",
                     "expect")


@dataclass
class Rule:
    action: str
    pattern: str = ".*"
    method: str | None = None
    times: int | None = 1
    status: int = 503
    code: str = "SlowDown"
    delay: float = 0.0
    probability: float = 1.0
    seconds: float | None = None
    skip: int = 0  # let the first ``skip`` matching requests through (kill at step N)
    hits: int = 0
    skipped: int = 0
    added: float = field(default_factory=time.monotonic)

    def matches(self, method: str, target: str, rng: random.Random | None = None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.seconds is not None and time.monotonic() - self.added > self.seconds:
            return False
        # ``method`` may name several: "PUT|POST|DELETE".
        if self.method and method.upper() not in self.method.upper().split("|"):
            return False
        if re.search(self.pattern, target) is None:
            return False
        return self.probability >= 1.0 or (rng or random).random() < self.probability


@dataclass
class Record:
    method: str
    path: str
    query: str
    status: int | None = None
    action: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body_prefix: bytes = b""
    started: float = 0.0
    ended: float = 0.0

    @property
    def key(self) -> str:
        """The S3 key of a path-style request (``/bucket/key`` → ``key``)."""
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""


class FaultProxy:
    def __init__(self, upstream: str, *, delay: float = 0.0, bandwidth: float | None = None,
                 seed: int | None = None, trace: TextIO | None = None) -> None:
        split = urlsplit(upstream)
        self.upstream_host = split.hostname or "127.0.0.1"
        self.upstream_port = split.port or 80
        self.delay = delay
        self.bandwidth = bandwidth
        self.rules: list[Rule] = []
        self.log: list[Record] = []
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._stalled = 0  # requests a stall rule holds (counted in _in_flight too)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.rng = random.Random(seed)
        self.faults_injected = 0
        # Set on stop: releases every stalled connection so handler threads end.
        self.released = threading.Event()
        # One line per request (CLOCK_MONOTONIC start and end, method, path, status, body
        # bytes): a benchmark's request timeline, comparable with its own monotonic clock.
        self.trace = trace

    # ------------------------------------------------------------------ control

    def start(self) -> str:
        proxy = self
        self.released.clear()

        class Handler(_Handler):
            owner = proxy

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_rule(self, action: str, pattern: str = ".*", *, method: str | None = None,
                 times: int | None = 1, **kw: object) -> Rule:
        rule = Rule(action, pattern, method, times, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Forget rules, the log and the concurrency counters."""
        with self._lock:
            self.rules.clear()
            self.log.clear()
            self._max_in_flight.clear()

    def max_in_flight(self, method: str = "*") -> int:
        with self._lock:
            return self._max_in_flight.get(method, 0)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Poll until no request is in flight (e.g. after its client was killed, so that a PUT
        still being forwarded has landed before the bucket is inspected). Stalled requests do
        not count: they never reach S3, so there is nothing of theirs to land (waiting for
        their ``delay`` was half a second per killed run in the crash walks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight.get("*", 0) <= self._stalled:
                    return True
            time.sleep(0.01)
        return False

    def requests(self, method: str | None = None, pattern: str = ".*") -> list[Record]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method)
                    and re.search(pattern, r.path + ("?" + r.query if r.query else ""))]

    # ------------------------------------------------------------------ used by the handler

    def _rule_for(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target, self.rng):
                    if rule.skipped < rule.skip:
                        rule.skipped += 1
                        continue
                    rule.hits += 1
                    if rule.action != "delay":  # latency is the setting, not a fault
                        self.faults_injected += 1
                    return rule
        return None

    def _enter(self, method: str) -> None:
        with self._lock:
            for k in (method, "*"):
                self._in_flight[k] = self._in_flight.get(k, 0) + 1
                self._max_in_flight[k] = max(self._max_in_flight.get(k, 0), self._in_flight[k])

    def _leave(self, method: str) -> None:
        with self._lock:
            for k in (method, "*"):
                self._in_flight[k] -= 1

    def _record(self, record: Record) -> None:
        with self._lock:
            self.log.append(record)
            if self.trace is not None:
                self.trace.write(f"{record.started:.6f} {record.ended:.6f} {record.method} "
                                 f"{record.path}{'?' + record.query if record.query else ''} "
                                 f"{record.status} {record.headers.get('content-length', 0)}\n")
                self.trace.flush()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # Clients we kill or time out hang up mid-request: expected here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as every production HTTP server sets it: the headers and the body go out in
    # two writes, and with Nagle's algorithm the body waited for the client's delayed ACK of
    # the headers (~40 ms on Linux) — added to every response with a body (listings,
    # CompleteMultipartUpload, GETs), a stall S3 does not have.
    disable_nagle_algorithm = True

    # keep test output quiet
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        proxy = self.owner
        method = self.command
        split = urlsplit(self.path)
        record = Record(method, split.path, split.query, started=time.monotonic(),
                        headers={h: self.headers[h]
                                 for h in _RECORDED_HEADERS if self.headers.get(h)})
        proxy._enter(method)
        done = False

        def finish() -> None:
            # Record before the last byte goes out: a client that got its response must
            # find the request in the log.
            nonlocal done
            if not done:
                done = True
                record.ended = time.monotonic()
                proxy._leave(method)
                proxy._record(record)

        try:
            rule = proxy._rule_for(method, self.path)
            record.action = rule.action if rule else None
            length = int(self.headers.get("Content-Length") or 0)
            if rule and rule.action == "reset":
                self.rfile.read(length // 2)
                finish()
                self._reset()
                return
            body = self.rfile.read(length) if length else b""
            if rule and rule.action == "stall":
                # Accepted and read, never answered: only the client's read timeout ends this.
                with proxy._lock:
                    proxy._stalled += 1
                try:
                    proxy.released.wait(rule.delay or None)
                finally:
                    with proxy._lock:
                        proxy._stalled -= 1
                finish()
                self._reset()
                return
            record.body_prefix = body[:4096] if "amazonaws" not in split.path else b""
            if rule and rule.action == "flip" and body:
                with proxy._lock:
                    at = proxy.rng.randrange(len(body))
                body = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]
            # The link: the body takes len / bandwidth to arrive, then the answer ``delay``
            # more. Without a rule the upstream handles the request meanwhile, as S3 does
            # while the bytes stream in (answered no earlier than the link allows, so the
            # stand-in's own time per request is not added to every transfer); a rule's
            # request reaches the upstream only after the link's time, as before.
            link = (len(body) / proxy.bandwidth if proxy.bandwidth else 0.0) + proxy.delay
            if rule is not None and link:
                time.sleep(link)
            if rule and rule.action == "delay":
                time.sleep(rule.delay)
            if rule and rule.action == "status":
                payload = ("<?xml version=\"1.0\" "
                           f"encoding=\"UTF-8\"?><Error><Code>{rule.code}</Code><Message>injected "
                           "by faultproxy</Message></Error>").encode()
                record.status = rule.status
                finish()
                self._send(rule.status, [("Content-Type", "application/xml")], payload, method)
                return
            status, headers, data = self._forward(method, body)
            record.status = status
            if rule is None:
                pause = record.started + link - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            if rule and rule.action == "corrupt" and data:
                with proxy._lock:
                    at = proxy.rng.randrange(len(data))
                data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
            if rule and rule.action == "etag":
                fake = '"' + format(proxy.rng.getrandbits(128), "032x") + '"'
                headers = [(k, fake if k.lower() == "etag" else v) for k, v in headers]
            if rule and rule.action in ("truncate", "short") and data:
                finish()
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if rule.action == "truncate":
                    self._reset()
                else:
                    self._close()
                return
            finish()
            self._send(status, headers, data, method)
        finally:
            finish()

    def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.owner
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(method, self.path,
                         body=body if body or method in ("PUT", "POST") else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if method == "HEAD":
                cl = resp.getheader("Content-Length")
                if cl is not None:
                    out.append(("Content-Length", cl))
            return resp.status, out, data
        finally:
            conn.close()

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes, method: str) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)

    def _close(self) -> None:
        # An orderly shutdown (FIN) after a short body: nothing at the TCP level tells the client.
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset".
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--bandwidth", type=float,
                    help="bytes/s per request body (simulates a per-stream WAN limit)")
    ap.add_argument("--trace", type=argparse.FileType("w"),
                    help="write one line per request to this file (a benchmark's timeline)")
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.upstream, delay=args.delay, bandwidth=args.bandwidth,
                       trace=args.trace)
    print(proxy.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
