"""S3Sink's tail hook (``_TailSent``): called once, when the last part's data requests are
about to go out (botocore's before-send), or at the commit when no part was known to be last."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bundler.aws import AwsOptions, make_session, s3_client
from bundler.s3.stream import _TailSent


@pytest.fixture
def client():
    opts = AwsOptions(region="us-east-1", access_key="AKIDEXAMPLE", secret_key="secret",
                      endpoint_url="http://127.0.0.1:9")
    return s3_client(opts, session=make_session(opts), bucket="b")


def _send(client, operation: str, url: str) -> None:
    client.meta.events.emit(f"before-send.s3.{operation}", request=SimpleNamespace(url=url))


BASE = "http://127.0.0.1:9/b/pre%20fix/img.part.5"


def test_both_pieces_about_to_go_out_call_it_once(client):
    calls = []
    tail = _TailSent(client, lambda: calls.append(1))
    tail.arm("pre fix/img.part.5", 2)
    _send(client, "UploadPart", "http://127.0.0.1:9/b/pre%20fix/img.part.4?partNumber=1&uploadId=x")
    _send(client, "UploadPart", f"{BASE}?partNumber=1&uploadId=u")
    _send(client, "UploadPart", f"{BASE}?partNumber=1&uploadId=u")  # a retry
    assert calls == []
    _send(client, "UploadPart", f"{BASE}?partNumber=2&uploadId=u")
    _send(client, "UploadPart", f"{BASE}?partNumber=2&uploadId=u")
    tail.committing()
    assert calls == [1]
    tail.close()


def test_a_whole_last_part_calls_it_on_its_put(client):
    calls = []
    tail = _TailSent(client, lambda: calls.append(1))
    tail.arm("pre fix/img.part.5", 1)
    _send(client, "PutObject", "http://127.0.0.1:9/b/pre%20fix/img.manifest.xml")
    assert calls == []
    _send(client, "PutObject", BASE)
    assert calls == [1]
    tail.close()


def test_with_no_part_known_to_be_last_the_commit_calls_it(client):
    calls = []
    tail = _TailSent(client, lambda: calls.append(1))
    tail.committing()
    tail.committing()
    assert calls == [1]


def test_an_armed_tail_waits_for_its_requests_not_the_commit(client):
    calls = []
    tail = _TailSent(client, lambda: calls.append(1))
    tail.arm("pre fix/img.part.5", 1)
    tail.committing()
    assert calls == []
    _send(client, "PutObject", BASE)
    assert calls == [1]
    tail.close()


def test_closed_it_hears_nothing_and_a_failing_hook_is_kept_to_itself(client):
    def boom():
        raise RuntimeError("boom")

    tail = _TailSent(client, boom)
    tail.arm("pre fix/img.part.5", 1)
    _send(client, "PutObject", BASE)  # raises nothing
    calls = []
    other = _TailSent(client, lambda: calls.append(1))
    other.arm("k", 1)
    other.close()
    _send(client, "PutObject", "http://127.0.0.1:9/b/k")
    assert calls == []
    tail.close()
