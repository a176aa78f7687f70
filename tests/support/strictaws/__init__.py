"""The strict local AWS: moto (pinned in pyproject) on 127.0.0.1, patched where moto is more
lenient than AWS exactly where instance-store bundles break.

Choice: the patches live in the server process (``install()`` wraps moto's S3 and EC2 response
handlers before the server starts) rather than in a proxy in front of moto, because the EC2
checks need the S3 state (objects, ACLs) that only the server holds, and one process keeps the
stand-in fast. Everything that starts a local endpoint — the integration fixtures,
``tests/support/s3kit.MotoEndpoint``, ``scripts/local_endpoint.py`` (benchmarks, demo) — goes
through ``StrictEndpoint``. See ``s3rules``, ``ec2images`` and ``bundlecheck`` for what is
enforced, ``s3digests`` for Content-MD5 and x-amz-checksum-* (BadDigest, InvalidDigest, as S3
answers them; a checked MD5 becomes the object's ETag, not hashed again), ``s3copy`` for
CopyObject's ETag (as AWS documents it, without hashing the copy again), ``s3complete`` for
CompleteMultipartUpload's object (one copy of its bytes, not moto's five), ``requestbody`` for a
request's body (read from the socket at once) and ``dispatch`` for a request's way to its
service (all four: less of the host's CPU per request, the same answers), ``s3uploads`` for
multipart uploads' part order and unknown upload ids (InvalidPartOrder, NoSuchUpload),
``s3kms`` for SSE-KMS objects' ETags (not their MD5, as on AWS), ``accounts`` for several
accounts (STS AssumeRole, per-account S3 and images, launch permissions across accounts), and
``keyring`` for the stand-in EC2's own key pairs (one per partition and one opt-in region), whose
certificates the tool gets through ``--ec2cert-dir``.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT = 15.0


def install() -> None:
    """Patch moto in this process (idempotent)."""
    from . import (
        accounts,
        dispatch,
        ec2images,
        requestbody,
        s3complete,
        s3copy,
        s3digests,
        s3kms,
        s3rules,
        s3uploads,
    )

    dispatch.install()
    requestbody.install()
    s3rules.install()
    s3uploads.install()
    s3complete.install()
    s3digests.install()
    s3copy.install()
    s3kms.install()  # after s3copy: a KMS object's ETag is never the MD5 it passes on
    ec2images.install()
    accounts.install()  # after both: it wraps their S3 handlers and replaces DescribeImages


def wait_ready(host: str, port: int, timeout: float = READY_TIMEOUT, *,
               tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:  # poll until it answers: no fixed sleeps
        try:
            conn = (http.client.HTTPConnection(host, port, timeout=2) if tls is None
                    else http.client.HTTPSConnection(host, port, timeout=2, context=tls))
            conn.request("GET", "/moto-api/")
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"local AWS on {host}:{port} not ready after {timeout}s: {last}")
        time.sleep(0.02)


class StrictEndpoint:
    """``with StrictEndpoint() as url:`` — the strict local AWS on 127.0.0.1:<ephemeral>."""

    def __init__(self, ready_timeout: float = READY_TIMEOUT, *,
                 register_check: str = "full", tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate, key) PEM files: served over HTTPS with them, as AWS is
        reached (the client must trust the certificate: ``AWS_CA_BUNDLE``)."""
        from .bundlecheck import REGISTER_CHECKS

        if register_check not in REGISTER_CHECKS:
            raise ValueError(f"register_check must be one of {', '.join(REGISTER_CHECKS)}")
        self.ready_timeout = ready_timeout
        # How deep RegisterImage checks the bundle (bundlecheck): "full" reads every part,
        # "manifest" only what EC2 checks at registration.
        self.register_check = register_check
        self.tls = tls
        self._server: Any = None
        self.url = ""

    @property
    def keys(self) -> Any:
        """The stand-in EC2's key ring: ``keys.cert_dir`` is what the tool's ``--ec2cert-dir``
        (or ``$AMI_BUNDLER_EC2_CERT_DIR``) should name."""
        from .keyring import keyring

        return keyring()

    def make_role(self, account: str, name: str = "ami-bundler-publish", *,
                  trusted: tuple[str, ...] = ("123456789012",), external_id: str | None = None,
                  max_session: int = 3600) -> str:
        """A role in ``account`` that ``trusted`` (account ids or principal ARNs) may assume
        (see ``accounts``); returns its ARN. The server must be running in this process."""
        from .accounts import make_role

        return make_role(account, name, trusted=trusted, external_id=external_id,
                         max_session=max_session)

    def start(self) -> str:
        from . import bundlecheck

        install()
        bundlecheck.REGISTER_CHECK = self.register_check  # the server runs in this process
        self.keys  # noqa: B018 - make the key pairs before the first RegisterImage needs them
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        if self.tls is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        else:
            self._server = _tls_moto_server(self.tls, ip_address="127.0.0.1", port=0,
                                            verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        client_tls = None
        if self.tls is not None:
            client_tls = ssl.create_default_context(cafile=str(self.tls[0]))
        wait_ready(host, port, self.ready_timeout, tls=client_tls)
        self.url = f"{'http' if self.tls is None else 'https'}://{host}:{port}"
        return self.url

    def stop(self) -> None:
        from . import bundlecheck

        bundlecheck.REGISTER_CHECK = bundlecheck.FULL
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tls_moto_server(tls: tuple[Path, Path], **kwargs: Any) -> Any:
    """moto's threaded server with werkzeug's TLS, serving ``tls`` (certificate, key): moto's
    own has no TLS option. (moto imported here, as in ``start``.)"""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class TlsMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server = make_server(self._ip_address, self._port,
                                       DomainDispatcherApplication(create_backend_app), True,
                                       request_handler=MotoRequestHandler,
                                       ssl_context=context)
            self._server_ready_event.set()
            self._server.serve_forever()

    return TlsMotoServer(**kwargs)
