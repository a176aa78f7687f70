"""The benchmarks' link (tests/support/faultproxy.py ``delay`` and ``bandwidth``): a request is
answered no earlier than its body's time on the link plus the latency, and the upstream's own
time overlaps the link's (S3 handles a request while its bytes stream in) instead of being
added to it; a request a rule acts on still reaches the upstream only after the link's time."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.faultproxy import FaultProxy

UPSTREAM_SECONDS = 0.3
BODY = b"x" * (256 * 1024)
BANDWIDTH = 1024 * 1024.0  # 256 KiB: 0.25 s on the link
DELAY = 0.05
LINK = len(BODY) / BANDWIDTH + DELAY


@pytest.fixture
def upstream():
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_PUT(self) -> None:  # noqa: N802
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(UPSTREAM_SECONDS)  # the stand-in's own work on the request
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    server.shutdown()
    server.server_close()


def _put(url: str) -> tuple[float, float, bytes]:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.monotonic()
    conn.request("PUT", "/bucket/key", body=BODY)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return started, time.monotonic() - started, data


def test_the_upstreams_time_overlaps_the_link(upstream):
    url, arrivals = upstream
    with FaultProxy(url, delay=DELAY, bandwidth=BANDWIDTH) as proxy:
        started, took, data = _put(proxy.url)
    assert data == b"ok"
    assert took >= LINK  # never earlier than the link allows
    assert took < LINK + UPSTREAM_SECONDS - 0.1  # not the sum of both
    assert arrivals[0] - started < LINK  # forwarded while the bytes were "on the link"


def test_a_request_a_rule_acts_on_reaches_the_upstream_after_the_link(upstream):
    url, arrivals = upstream
    with FaultProxy(url, delay=DELAY, bandwidth=BANDWIDTH) as proxy:
        proxy.add_rule("delay", r"/key$", method="PUT", delay=0.0)
        started, took, data = _put(proxy.url)
    assert data == b"ok"
    assert arrivals[0] - started >= LINK
    assert took >= LINK + UPSTREAM_SECONDS


def test_a_response_with_a_body_is_not_held_back_by_nagle():
    """The headers and the body leave in two writes: without TCP_NODELAY the body waited for
    the client's delayed ACK of the headers, ~40 ms per response on Linux (20 requests on one
    connection: ≥ 0.8 s; a few ms each without the stall)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            body = b"<ListBucketResult/>" * 20
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_address[1]}") as proxy:
            conn = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]),
                                              timeout=10)
            conn.request("GET", "/bucket?list-type=2")  # the connection is set up
            conn.getresponse().read()
            started = time.monotonic()
            for _ in range(20):
                conn.request("GET", "/bucket?list-type=2")
                assert conn.getresponse().read().startswith(b"<ListBucketResult/>")
            took = time.monotonic() - started
            conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert took < 0.4, f"20 responses took {took:.2f} s: delayed behind the client's ACKs"
