"""A request's body read from the socket into one bytes object instead of through werkzeug's
64 KiB loop.

moto takes every request's body as ``request.data`` (werkzeug's ``get_data``): its
``LimitedStream.readall`` reads 64 KiB at a time (each read a new bytes object), extends a
bytearray with each and copies that into ``bytes`` at the end — three copies and ~160 Python
iterations for a 10 MiB part, the second-largest share of the stand-in's CPU while the tool
installs a bundle (after CompleteMultipartUpload). The socket's buffered reader reads a known
length straight into one new bytes object of that size, so that is what is asked of it here:
the same bytes, the same ``ClientDisconnected`` for a body that ends early.

Only a body of a known length that no form parser wants (every S3 and EC2 request the tool
sends: EC2's form bodies are parsed by werkzeug as before) takes this way; anything else —
chunked bodies, form data, a body already read — is werkzeug's.
"""

from __future__ import annotations

from typing import Any

# The bodies werkzeug's form parser reads itself (its FormDataParser; any other type it leaves).
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")

_installed = False


def read_body(request: Any) -> bytes | None:
    """The whole body of ``request`` read at once, or None where werkzeug's way must be taken."""
    from werkzeug.wsgi import LimitedStream

    if request.mimetype in FORMS or getattr(request, "_cached_data", None) is not None:
        return None
    stream = request.stream
    if type(stream) is not LimitedStream or stream._limit_is_max or stream._pos:
        return None
    wanted = stream.limit
    if not wanted:
        return b""
    chunks: list[bytes] = []
    got = 0
    try:
        while got < wanted:
            # A buffered reader's read(n) fills one new bytes object of n straight from the
            # socket (what it already holds first), looping until n or the end: one pass. An
            # unbuffered stream may answer less; the rest is asked for again.
            chunk = stream._stream.read(wanted - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except (OSError, ValueError) as exc:
        stream.on_disconnect(error=exc)
        raise  # on_disconnect raises for a limit that is not a maximum; keep mypy certain
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    stream._pos = len(body)
    if len(body) < wanted:
        stream.on_disconnect()  # the client went away mid-body: werkzeug's ClientDisconnected
    return body


def install() -> None:
    """Patch moto's server-mode request (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.moto_server.werkzeug_app import BackendRequest
    from werkzeug.utils import cached_property

    def data(self: Any) -> bytes:
        # What werkzeug's Request.data does first: form bodies parsed (and so never read here).
        self._load_form_data()
        body = read_body(self)
        if body is None:
            return self.get_data(parse_form_data=True)  # type: ignore[no-any-return]
        self._cached_data = body  # get_data() and the form parser see it, as werkzeug's would
        return body

    BackendRequest.data = cached_property(data)  # type: ignore[method-assign]
    _installed = True
