"""The httpx client msmall talks to engines with (health probes, smoke checks, the Ollama API)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import httpx


def new_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """An httpx.Client for base_url that ignores the environment's proxies (trust_env=False: a
    proxy must not intercept loopback probes) and builds no TLS context for plain http."""
    import httpx

    return httpx.Client(base_url=base_url, trust_env=False, verify=_verify(base_url), **kwargs)


def _verify(base_url: str) -> ssl.SSLContext | bool:
    # httpx builds a verifying SSL context for every client by default, loading certifi's CA
    # bundle: about 40 ms of CPU each, and a `msmall serve` made seven clients, all for
    # http://127.0.0.1. An http:// client never makes a TLS connection (its requests are relative
    # to base_url and it follows no redirects), so it gets none; an https:// one gets the
    # process's one verifying context.
    if base_url.lower().startswith("https://"):
        return _verified_context()
    return False


@functools.cache
def _verified_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context(trust_env=False)
