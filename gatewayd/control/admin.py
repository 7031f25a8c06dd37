"""Carrier control shared by `gatewayd carrier ...` and /admin/carriers...: list the
carriers with their overrides and every daemon's binds, suspend, resume, restart binds,
tps and window. Each writes Redis (control/state.py) and returns data; every daemon
applies a change within about a second (control/watch.py)."""

from __future__ import annotations

from typing import Any

from gatewayd.config import CarrierConfig, Config
from gatewayd.control import state
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys


class NotFound(Exception):
    """No carrier of that name in the configuration."""


class Invalid(ValueError):
    """A value the override cannot take (the message names the field)."""


def _carrier(cfg: Config, name: str) -> CarrierConfig:
    for c in cfg.carrier:
        if c.name == name:
            return c
    raise NotFound(f"no carrier {name!r}; carriers: {', '.join(c.name for c in cfg.carrier)}")


def _view(c: CarrierConfig, o: state.Override, daemons: dict[str, dict[str, Any]]
          ) -> dict[str, Any]:
    binds = []
    applied = {}
    for consumer, doc in sorted(daemons.items()):
        for b in doc.get("binds", ()):
            if b.get("carrier") == c.name:
                binds.append({"daemon": consumer, **b})
        mine = doc.get("carriers", {}).get(c.name)
        if mine is not None:
            applied[consumer] = mine
    return {
        "name": c.name, "protocol": c.protocol, "host": c.host, "port": c.port,
        "suspended": o.suspended,
        "tps": o.tps if o.tps is not None else c.tps,
        "window": o.window if o.window is not None else c.window,
        "config": {"tps": c.tps, "window": c.window, "binds": c.binds},
        "override": o.public(),
        "daemons": applied,
        "binds": binds,
        "submitted": sum(int(b.get("submitted", 0)) for b in binds),
        "in_flight": sum(int(b.get("in_flight", 0)) for b in binds),
        "bound": sum(1 for b in binds if b.get("state") in ("bound", "throttled")),
    }


async def listing(cfg: Config, redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every configured carrier: state, effective and configured tps/window, and each
    live daemon's binds (state and counters) and applied settings."""
    overrides = await state.read(redis, keys)
    daemons = await state.published(redis, keys)
    return [_view(c, overrides.get(c.name, state.Override()), daemons) for c in cfg.carrier]


async def show(cfg: Config, redis: Redis, keys: Keys, name: str) -> dict[str, Any]:
    c = _carrier(cfg, name)
    overrides = await state.read(redis, keys)
    return _view(c, overrides.get(name, state.Override()), await state.published(redis, keys))


async def suspend(cfg: Config, redis: Redis, keys: Keys, name: str, on: bool) -> dict[str, Any]:
    _carrier(cfg, name)
    await state.suspend(redis, keys, name, on)
    return await show(cfg, redis, keys, name)


async def tune(cfg: Config, redis: Redis, keys: Keys, name: str,
               changes: dict[str, Any]) -> dict[str, Any]:
    """``changes``: "tps" and/or "window" -> a new value, or None (the config's again)."""
    c = _carrier(cfg, name)
    unknown = set(changes) - {"tps", "window"}
    if unknown:
        raise Invalid(f"{', '.join(sorted(unknown))}: not a setting (tps, window)")
    if not changes:
        raise Invalid("tps, window: give at least one (null: the config's value)")
    checked: dict[str, float | int | None] = {}
    try:
        if "tps" in changes:
            v = changes["tps"]
            checked["tps"] = None if v is None else state.check_tps(v)
        if "window" in changes:
            w = changes["window"]
            checked["window"] = None if w is None else state.check_window(w, c.protocol)
    except ValueError as e:
        raise Invalid(str(e)) from None
    await state.tune(redis, keys, name, checked)
    return await show(cfg, redis, keys, name)


async def restart(cfg: Config, redis: Redis, keys: Keys, name: str) -> dict[str, Any]:
    """Ask every daemon to restart the carrier's binds (once each, within a second)."""
    _carrier(cfg, name)
    await state.restart(redis, keys, name)
    return await show(cfg, redis, keys, name)
