"""Endpoint administration shared by `gatewayd webhooks ...` and /admin/webhooks...:
add/remove (Redis-kept endpoints), list with state and backlog, pause/resume, a test
event, dead letters and their replay. Each returns data; the callers print or serve it."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import aiohttp
import msgspec
from yarl import URL

from gatewayd.config import Config, WebhookEndpointConfig
from gatewayd.errors import ConfigError
from gatewayd.store.connection import Redis
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import subscriptions as subs
from gatewayd.webhooks import targets
from gatewayd.webhooks.sender import SEQ
from gatewayd.webhooks.signing import EVENT_ID_HEADER, HEADER, sign


class NotFound(Exception):
    """No such endpoint (or no such Redis-kept endpoint)."""


async def endpoints(cfg: Config, redis: Redis, keys: Any) -> dict[str, subs.Endpoint]:
    raw = cast(dict[str, str], await redis.hgetall(keys.webhook_endpoints))
    out = {e.name: e for e in subs.from_redis(raw, cfg)}
    out.update({e.name: e for e in subs.from_config(cfg)})  # the config wins
    return out


async def must(cfg: Config, redis: Redis, keys: Any, name: str) -> subs.Endpoint:
    found = (await endpoints(cfg, redis, keys)).get(name)
    if found is None:
        raise NotFound(f"no endpoint {name!r}")
    return found


async def add(cfg: Config, redis: Redis, keys: Any,
              spec: dict[str, Any]) -> WebhookEndpointConfig:
    """Validate ``spec`` as the config validates its endpoints (ConfigError), refuse a
    private target unless webhooks.allow_private, then keep it in Redis (replacing)."""
    name = spec.get("name")
    if name in {e.name for e in cfg.webhooks.endpoints}:
        raise ConfigError(f"{name}: an endpoint of the config; change it there")
    parsed = subs.parse_spec(spec, cfg)
    if not cfg.webhooks.allow_private:
        try:
            await subs.check_target(parsed.url, False)
        except subs.TargetRefused as refused:
            raise ConfigError(f"{parsed.name}: {refused}") from None
    await redis.hset(keys.webhook_endpoints, parsed.name,
                     msgspec.json.encode(parsed).decode())
    return parsed


async def remove(cfg: Config, redis: Redis, keys: Any, name: str) -> None:
    if name in {e.name for e in cfg.webhooks.endpoints}:
        raise ConfigError(f"{name}: an endpoint of the config; remove it there")
    if not await redis.hdel(keys.webhook_endpoints, name):
        raise NotFound(f"no endpoint {name!r} in Redis")


async def listing(cfg: Config, redis: Redis, keys: Any) -> list[dict[str, Any]]:
    """Every endpoint (config and Redis) with its state and backlog (the secret hidden)."""
    paused = set(await redis.smembers(keys.webhook_paused))
    out = []
    for e in (await endpoints(cfg, redis, keys)).values():
        out.append({
            "name": e.name, "url": e.url, "tenant": e.tenant, "source": e.source,
            "events": sorted(e.kinds), "format": e.format, "batch": e.batch,
            "concurrency": e.concurrency, "rate_per_s": e.rate_per_s,
            "signed": bool(e.secret), "paused": e.name in paused,
            "queued": await redis.zcard(keys.webhook_queue(e.name)),
            "dead": await redis.xlen(keys.webhook_dead(e.name))})
    return out


async def pause(cfg: Config, redis: Redis, keys: Any, name: str, on: bool) -> None:
    await must(cfg, redis, keys, name)
    if on:
        await redis.sadd(keys.webhook_paused, name)
    else:
        await redis.srem(keys.webhook_paused, name)


async def dead(cfg: Config, redis: Redis, keys: Any, name: str,
               count: int = 0) -> list[dict[str, Any]]:
    await must(cfg, redis, keys, name)
    rows = cast(list[tuple[str, dict[str, str]]],
                await redis.xrange(keys.webhook_dead(name), count=count or None))
    return [{"dead_id": sid, "error": fields.get("error", ""),
             "at": float(fields.get("at", 0)),
             "event": json.loads(fields.get("event", "{}"))} for sid, fields in rows]


async def replay(cfg: Config, redis: Redis, keys: Any, name: str, count: int = 0) -> int:
    """Dead letters back into the retry queue (at their stream position), then deleted:
    in one MULTI, so a crash moves each either wholly or not at all. Returns how many
    events went back (0: no dead letters)."""
    await must(cfg, redis, keys, name)
    rows = cast(list[tuple[str, dict[str, str]]],
                await redis.xrange(keys.webhook_dead(name), count=count or None))
    if not rows:
        return 0
    moved: dict[str, float] = {}
    for _sid, fields in rows:
        data = fields.get("event", "")
        try:
            event_id = str(json.loads(data).get("event_id", ""))
            ms, _, seq = event_id[1:].partition("-")
            moved[data] = float(int(ms) * SEQ + min(int(seq or 0), SEQ - 1))
        except (ValueError, AttributeError):
            continue
    async with redis.pipeline(transaction=True) as pipe:
        if moved:
            pipe.zadd(keys.webhook_queue(name), moved)
        pipe.xdel(keys.webhook_dead(name), *[sid for sid, _f in rows])
        await pipe.execute()
    return len(moved)


async def test_fire(ep: subs.Endpoint, cfg: Config) -> dict[str, Any]:
    """One signed test event to ``ep`` now: {"ok", "status", "elapsed_s", "body"|"error"}."""
    now = time.time()
    event: dict[str, Any] = {"event_id": f"test-{int(now * 1000)}", "kind": "test",
                             "message_id": "", "state": "test", "at": now}
    data = bodies.batch_body([bodies.encode(event)])
    try:
        await subs.check_target(ep.url, cfg.webhooks.allow_private)
    except subs.TargetRefused as e:
        return {"ok": False, "status": 0, "elapsed_s": 0.0, "error": str(e)}
    if ep.format == "kannel":
        url, signed = bodies.kannel_request(ep.url, event)
        method, payload = "GET", None
    else:
        method, url, signed, payload = "POST", ep.url, data, data
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: str(event["event_id"])}
    if ep.secret:
        headers[HEADER] = sign(ep.secret, signed, int(now))
    try:
        async with aiohttp.ClientSession(connector=targets.connector(
                cfg.webhooks.allow_private)) as session, session.request(
                method, URL(url, encoded=True), data=payload, headers=headers,
                allow_redirects=False, ssl=targets.tls_for(ep.ca_file),
                timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as resp:
            text = (await resp.text(errors="replace"))[:200]
            return {"ok": 200 <= resp.status < 300, "status": resp.status,
                    "elapsed_s": round(time.time() - now, 3), "body": text}
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        bad = targets.refused(e)
        return {"ok": False, "status": 0, "elapsed_s": round(time.time() - now, 3),
                "error": f"refused: {bad}" if bad else f"{type(e).__name__}: {e}"}
