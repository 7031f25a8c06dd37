"""Reading flow control shared by the protocol sessions (SMPP, CMPP)."""

from __future__ import annotations

import asyncio


def set_reading(transport: asyncio.Transport | None, paused: bool) -> None:
    """Pause or resume a session's reading (a backlog being parsed turn by turn, or too
    many handler tasks awaiting Redis: carrier.smpp.session.MAX_ANSWERING); a transport
    gone or closing is left alone. Both calls are idempotent on asyncio's and uvloop's
    transports."""
    if transport is None or transport.is_closing():
        return
    if paused:
        transport.pause_reading()
    else:
        transport.resume_reading()
