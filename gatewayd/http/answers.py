"""What an intake answer is before it is written: shared by aiohttp's handler
(gatewayd.http.server) and the fast lane (gatewayd.http.fastlane), which must not
import each other (the lane is built by the server)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

# An answer before it is a web.Response: status, the JSON document, extra headers. The
# intake's core returns these so that aiohttp's handler and the fast lane answer from
# the same code.
Answer = tuple[int, Any, "dict[str, str] | None"]
INTAKE_ROUTE: Final = "/v1/messages"


def err(status: int, code: str, message: str, headers: dict[str, str] | None = None,
        **extra: Any) -> Answer:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="gatewayd"'}
    return status, {"error": {"code": code, "message": message}, **extra}, headers


def remote_of(transport: asyncio.BaseTransport | None) -> str:
    """The peer's address, as aiohttp's ``request.remote`` gives it ("" if unknown)."""
    if transport is None:
        return ""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (list, tuple)) and peer:
        return str(peer[0])
    return "" if peer is None else str(peer)


DRAINING: Final[Answer] = err(503, "draining",
                              "the gateway is shutting down; retry on another instance")
