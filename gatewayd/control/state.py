"""The operator's carrier overrides in Redis (one hash, one field per setting), and the
binds each daemon publishes.

A field per setting, so every change is one atomic command (HSET, HDEL, HINCRBY) and two
operators never overwrite each other's settings of another field. Values are checked by
``check_tps`` / ``check_window`` before they are written and again (ValueError) when a
daemon applies them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

# A daemon's published binds older than this are left out (the daemon is gone).
STALE_S = 10.0


@dataclass(frozen=True, slots=True)
class Override:
    suspended: bool = False
    tps: float | None = None  # None: the config's
    window: int | None = None
    restart: int = 0  # generation: each increase restarts the carrier's binds once

    def public(self) -> dict[str, Any]:
        return {"suspended": self.suspended, "tps": self.tps, "window": self.window,
                "restart": self.restart}


def check_tps(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("tps: a number greater than 0")
    tps = float(value)
    if not math.isfinite(tps) or not 0 < tps <= 1_000_000:
        raise ValueError("tps: a number greater than 0 (at most 1000000)")
    return tps


def check_window(value: Any, protocol: str = "smpp") -> int:
    top = 64 if protocol == "cmpp" else 65_535
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ValueError(f"window: a whole number from 1 to {top}")
    return value


async def read(redis: Redis, keys: Keys) -> dict[str, Override]:
    """Every carrier's override (carriers with none are absent)."""
    raw = cast(dict[str, str], await redis.hgetall(keys.carrier_control))
    fields: dict[str, dict[str, str]] = {}
    for key, value in raw.items():
        name, _, what = key.rpartition(":")
        if name:
            fields.setdefault(name, {})[what] = value
    out = {}
    for name, f in fields.items():
        restart = f.get("restart", "0")
        out[name] = Override(
            suspended=f.get("suspended") == "1",
            tps=_parsed(f.get("tps"), float, check_tps),
            window=_parsed(f.get("window"), int, check_window),
            restart=int(restart) if restart.isdigit() else 0,
        )
    return out


def _parsed(text: str | None, kind: Callable[[str], Any], check: Callable[[Any], Any]
            ) -> Any:
    """A stored value, or None (the config's) when absent or not one the override can
    take (written by hand): one bad field must not stop the others applying."""
    if not text:
        return None
    try:
        return check(kind(text))
    except ValueError:
        return None


async def suspend(redis: Redis, keys: Keys, name: str, on: bool) -> None:
    if on:
        await redis.hset(keys.carrier_control, f"{name}:suspended", "1")
    else:
        await redis.hdel(keys.carrier_control, f"{name}:suspended")


async def tune(redis: Redis, keys: Keys, name: str, changes: dict[str, float | int | None]
               ) -> None:
    """``changes``: "tps" and/or "window" -> a value, or None (back to the config's)."""
    sets = {f"{name}:{k}": repr(v) for k, v in changes.items() if v is not None}
    drops = [f"{name}:{k}" for k, v in changes.items() if v is None]
    # Not a transaction (cluster pipelines need none): each field stands alone, and the
    # daemons read the hash whole each second.
    async with redis.pipeline(transaction=False) as pipe:
        if sets:
            pipe.hset(keys.carrier_control, mapping=cast(Any, sets))
        if drops:
            pipe.hdel(keys.carrier_control, *drops)
        await pipe.execute()


async def restart(redis: Redis, keys: Keys, name: str) -> int:
    """The carrier's new restart generation."""
    return int(await redis.hincrby(keys.carrier_control, f"{name}:restart", 1))


async def publish(redis: Redis, keys: Keys, consumer: str, doc: dict[str, Any]) -> None:
    await redis.hset(keys.carrier_binds, consumer, json.dumps({**doc, "at": time.time()}))


async def unpublish(redis: Redis, keys: Keys, consumer: str) -> None:
    await redis.hdel(keys.carrier_binds, consumer)


async def published(redis: Redis, keys: Keys, *, prune: bool = False
                    ) -> dict[str, dict[str, Any]]:
    """consumer -> its last published doc, those written within STALE_S (with
    ``prune``, older ones are deleted)."""
    raw = cast(dict[str, str], await redis.hgetall(keys.carrier_binds))
    now = time.time()
    out: dict[str, dict[str, Any]] = {}
    stale = []
    for consumer, text in raw.items():
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict) or now - float(doc.get("at", 0)) > STALE_S:
            stale.append(consumer)
            continue
        out[consumer] = doc
    if prune and stale:
        await redis.hdel(keys.carrier_binds, *stale)
    return out
