"""moto's server finds each request's service by listing its own package directory again (one
``listdir`` and ~180 ``stat`` calls, twice per request: ~1.5 ms of the stand-in's one core per
request, on the same cores as the tool it serves). The list cannot change while the server
runs: it is read once."""

from __future__ import annotations

import functools

_installed = False


def install() -> None:
    """Patch moto's backend dispatch (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto import backends

    listing = backends.list_of_moto_modules
    backends.list_of_moto_modules = functools.cache(lambda: tuple(listing()))  # type: ignore[assignment]
    _installed = True
