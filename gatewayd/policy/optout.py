"""Opt-out records (check 3's data) and their audit trail.

A number's opt-outs live in one HASH, ``Keys.optout(digits)``: scope -> opted-out-at
(Unix s). Scope ``"*"`` is global; any other scope is a signature (the text of the
【…】 without brackets, e.g. ``京东``) or a sender address, as ``[optout].scope`` in the
policy file says the check matches:

- ``global``: only ``"*"`` suppresses (per-signature records are kept but ignored);
- ``signature``: ``"*"`` or the message's signature suppresses;
- ``sender``: ``"*"`` or the message's ``from`` suppresses.

Numbers are keyed by their digits (``+86 138-0013-8000`` = ``8613800138000``). Every
change is appended to the ``Keys.optout_audit`` stream (action, number, scope, source,
at) in the same MULTI, so the record and its audit never diverge. The stream is not
trimmed: consent records are kept for at least two years; archiving is the operator's.
"""

from __future__ import annotations

from typing import Any, Final, cast

import redis.asyncio as aioredis

from gatewayd.ops import metrics
from gatewayd.policy.lua import text
from gatewayd.policy.normalize import number_key
from gatewayd.store.connection import is_cluster
from gatewayd.store.keys import Keys

# Metric label vocabulary (labels stay bounded whatever callers pass as source).
_SOURCES: Final = frozenset({"mo", "api", "cli", "admin", "import"})


def _check_number(number: str) -> str:
    digits = number_key(number)
    if not 6 <= len(digits) <= 15:
        raise ValueError(f"{number!r}: not an E.164 number (6-15 digits, e.g. +8613800138000)")
    return digits


def _check_scope(scope: str) -> str:
    s = scope.strip()
    if not s or len(s) > 64:
        raise ValueError("scope: use \"*\" (global) or a signature/sender of 1-64 characters")
    return s


async def _record(redis: aioredis.Redis, keys: Keys, number: str, *, action: str, scope: str,
                  source: str, at: float) -> None:
    digits = _check_number(number)
    scope = _check_scope(scope)
    r = cast(Any, redis)
    # MULTI keeps record and audit together; on Redis Cluster they live in different
    # slots and no transaction can span them: there they are one pipeline, in order.
    async with r.pipeline(transaction=not is_cluster(r)) as pipe:
        if action == "out":
            pipe.hset(keys.optout(digits), scope, repr(at))
        else:
            pipe.hdel(keys.optout(digits), scope)
        pipe.xadd(keys.optout_audit, {
            "action": action, "number": digits, "scope": scope, "source": source,
            "at": repr(at),
        })
        await pipe.execute()
    kind = source.split(":", 1)[0]  # "mo:cmcc" counts as "mo"
    label = kind if kind in _SOURCES else "other"
    metrics.OPTOUTS.labels("opt_out" if action == "out" else "opt_in", label).inc()


async def opt_out(redis: aioredis.Redis, keys: Keys, number: str, *, scope: str = "*",
                  source: str, at: float) -> None:
    """Record that ``number`` opted out of ``scope`` ("*" = everything) at ``at``.

    ``source`` says how (``mo`` reply, ``api``, ``cli`` ...); raises ValueError for a
    number that is not E.164 or an empty scope.
    """
    await _record(redis, keys, number, action="out", scope=scope, source=source, at=at)


async def opt_in(redis: aioredis.Redis, keys: Keys, number: str, *, scope: str = "*",
                 source: str, at: float) -> None:
    """Remove the opt-out of ``scope`` (other scopes stay); audited like opt_out."""
    await _record(redis, keys, number, action="in", scope=scope, source=source, at=at)


async def optout_status(redis: aioredis.Redis, keys: Keys, number: str) -> dict[str, float]:
    """scope -> opted-out-at for every scope the number is opted out of ({} = none)."""
    digits = _check_number(number)
    raw = await cast(Any, redis).hgetall(keys.optout(digits))
    return {text(k): float(text(v)) for k, v in raw.items()}


async def optout_history(redis: aioredis.Redis, keys: Keys, number: str, *,
                         count: int = 10_000) -> list[dict[str, str]]:
    """The audit entries of one number, oldest first (scans the newest ``count`` entries)."""
    digits = _check_number(number)
    rows = await cast(Any, redis).xrevrange(keys.optout_audit, count=count)
    out: list[dict[str, str]] = []
    for sid, fields in reversed(rows):
        entry = {text(k): text(v) for k, v in fields.items()}
        if entry.get("number") == digits:
            entry["id"] = text(sid)
            out.append(entry)
    return out
