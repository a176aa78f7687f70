"""The stand-in reads a request's body at once (strictaws.requestbody) and gets what werkzeug's
own read gets: the same bytes for every size, the same ClientDisconnected for a body that ends
early, werkzeug's own way for form data — and over HTTP the stored object is the body sent."""

from __future__ import annotations

import io
import os
import random
import socket

import pytest
from moto.moto_server.werkzeug_app import BackendRequest
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request

from tests.support.strictaws import requestbody

SIZES = [0, 1, 2, 8191, 8192, 8193, 65535, 65536, 65537, 1 << 20, 5 * (1 << 20) + 3]


class _Trickle(io.RawIOBase):
    """A raw stream that answers at most 1000 bytes a read (a socket without a buffer)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        chunk = self._data.read(min(len(b), 1000))
        b[:len(chunk)] = chunk
        return len(chunk)


def _environ(body: bytes, length: int | None, content_type: str = "application/octet-stream",
             reader: str = "buffered") -> dict[str, object]:
    stream: io.IOBase = io.BytesIO(body)
    if reader == "buffered":  # as the server hands it over: a buffered reader over the socket
        stream = io.BufferedReader(io.BytesIO(body))  # type: ignore[arg-type]
    elif reader == "trickle":
        stream = _Trickle(body)
    environ: dict[str, object] = {"REQUEST_METHOD": "PUT", "wsgi.input": stream,
                                  "CONTENT_TYPE": content_type, "SERVER_NAME": "127.0.0.1",
                                  "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    return environ


def _werkzeug(environ: dict[str, object]) -> object:
    try:
        return ("ok", Request(environ).get_data(parse_form_data=True))
    except ClientDisconnected:
        return ("disconnected",)


def _ours(environ: dict[str, object]) -> object:
    request = Request(environ)
    request._load_form_data()
    try:
        body = requestbody.read_body(request)
    except ClientDisconnected:
        return ("disconnected",)
    return ("ok", request.get_data(parse_form_data=True) if body is None else body)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("short", [0, 1, 4096])
@pytest.mark.parametrize("reader", ["buffered", "bytes", "trickle"])
def test_read_body_answers_as_werkzeug(size, short, reader):
    """Whole bodies (and bodies cut short by 1 byte or 4 KiB: the client gone mid-body)."""
    body = random.Random(size).randbytes(size)
    sent = body[:max(0, size - short)]
    ours = _ours(_environ(sent, size, reader=reader))
    assert ours == _werkzeug(_environ(sent, size, reader=reader))
    if not short or not size:
        assert ours == ("ok", body)


def test_read_body_leaves_what_it_must_to_werkzeug():
    """Form data (werkzeug parses it: EC2's requests), no Content-Length, a body already read."""
    text = b"Action=DescribeImages&Version=2016-11-15"
    form = _environ(text, len(text), "application/x-www-form-urlencoded")
    request = Request(form)
    request._load_form_data()
    assert requestbody.read_body(request) is None
    assert request.form["Action"] == "DescribeImages"
    assert requestbody.read_body(Request(_environ(b"abc", None))) is None
    request = Request(_environ(b"abc", 3))
    request.get_data()
    assert requestbody.read_body(request) is None


def test_the_stand_in_reads_bodies_its_own_way(s3, bucket):
    """Over HTTP: moto's server-mode request is patched, and what it stores is what was sent."""
    assert BackendRequest.__dict__["data"].fget.__module__ == requestbody.__name__
    for size in (0, 1, 65537, 3 * (1 << 20) + 1):
        data = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=f"k{size}", Body=data)
        assert s3.get_object(Bucket=bucket, Key=f"k{size}")["Body"].read() == data


def test_the_stand_in_takes_the_one_read_over_http(s3, bucket, monkeypatch):
    """The saving itself: over HTTP a body of a known length is read_body's (one read), not
    werkzeug's loop. Were the server to hand moto another stream (no LimitedStream, a
    length-less input), every answer would stay right and this would be the one test to say
    the stand-in's CPU per part went back up."""
    read: list[int | None] = []
    real = requestbody.read_body

    def spy(request: object) -> bytes | None:
        body = real(request)
        read.append(None if body is None else len(body))
        return body

    monkeypatch.setattr(requestbody, "read_body", spy)
    s3.put_object(Bucket=bucket, Key="one-read", Body=os.urandom(65537))
    assert 65537 in read


def test_a_body_cut_short_over_http_stores_nothing(endpoint, s3, bucket):
    """A client that sends less than its Content-Length and goes away: nothing stored."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"PUT /{bucket}/cut HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):  # the server closes once it has given up on the body
            pass
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
