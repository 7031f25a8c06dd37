"""Reading a message's status record (shared by the CLI and the HTTP API)."""

from __future__ import annotations

from typing import Any, cast

from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

_NUMERIC = {"updated_at", "enqueued_at", "submitted_at", "done_at", "until", "converted_at"}
_INT = {"segments", "attempts", "receipts"}
# Bookkeeping kept with the status, not part of it: the claim on publishing the final
# event (lua/receipt.lua), the funnel key, the raw entry that holds the id (lua/claim.lua).
_INTERNAL = {"event_claim", "fk", "entry"}


async def read_status(redis: Redis, keys: Keys, msg_id: str) -> dict[str, Any] | None:
    raw: dict[str, str] = cast(dict[str, str], await redis.hgetall(keys.status(msg_id)))
    if not raw:
        return None
    out: dict[str, Any] = {"id": msg_id}
    parts: dict[str, str] = {}
    for k, v in raw.items():
        if k in _INTERNAL:
            continue
        if k in _NUMERIC:
            out[k] = float(v)
        elif k in _INT:
            out[k] = int(v)
        elif k.startswith("p") and k[1:].isdigit():
            parts[k[1:]] = v
        else:
            out[k] = v
    if parts:
        # One receipt state a PDU: "receipts" when not one a segment (message_payload).
        n = int(out.get("receipts", out.get("segments", 0)))
        out["parts"] = [parts.get(str(i), "") for i in range(n)]
    return out
