"""Where a webhook may connect: the addresses a target's name resolves to are checked
when a connection is made, and the connection goes to exactly those addresses.

Checking a name once and letting the HTTP client resolve it again to connect leaves a
gap (DNS rebinding): a hostile name server answers a public address to the check and
127.0.0.1 to the connect. ``GuardedResolver`` closes it: the client's connector asks it
for the addresses, it refuses the lot if any is private, and the connector connects only
to what it returned. The name stays the request's Host header, TLS SNI name and the name
the certificate is checked against: only the addresses come from here.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PrivateTarget(OSError):
    """A target's name resolved to a private address (an OSError, as aiohttp expects of
    a resolver: it arrives as the cause of a ClientConnectorError)."""


def private(address: str) -> bool:
    addr = ipaddress.ip_address(address.split("%")[0])
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified)


def refusal(host: str, addresses: list[str]) -> str:
    """Why ``host`` may not be connected to at these addresses ("" if it may)."""
    for a in addresses:
        if private(a):
            return (f"{host} resolves to {a.split('%')[0]}, a private address "
                    "(webhooks.allow_private = true allows it)")
    return ""


class GuardedResolver(AbstractResolver):
    """``inner`` (the system's resolver by default) with every answer checked: a name with
    a private address among its answers is refused (PrivateTarget), unless
    ``allow_private``."""

    def __init__(self, inner: AbstractResolver | None = None, *,
                 allow_private: bool = False) -> None:
        self.inner = inner if inner is not None else DefaultResolver()
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        hosts = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            why = refusal(host, [h["host"] for h in hosts])
            if why:
                raise PrivateTarget(why)
        return hosts

    async def close(self) -> None:
        await self.inner.close()


def connector(allow_private: bool, resolver: AbstractResolver | None = None,
              **options: Any) -> aiohttp.TCPConnector:
    """A connector that connects only to addresses its guarded resolver checked."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(resolver, allow_private=allow_private), **options)


def tls_for(ca_file: str) -> ssl.SSLContext | bool:
    """How an endpoint's https certificate is checked: against ``ca_file``'s CAs, or
    (True) aiohttp's default, the system's. Either way against the URL's name, never
    the pinned address the connection goes to."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def refused(e: BaseException) -> PrivateTarget | None:
    """The PrivateTarget behind an aiohttp connection error, if that is what it was."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, PrivateTarget):
            return seen
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
                seen.os_error, PrivateTarget):
            return seen.os_error
        seen = seen.__cause__
    return None
