"""`gatewayd webhooks run | list | add | remove | pause | resume | test | dead | replay`
(wired by gatewayd.cli).

run: the sender as a process of its own (instead of ``webhooks.enabled`` in the daemon),
with /metrics on ``--metrics-listen``. add/remove: endpoints kept in Redis, read by every
sender within a second (config endpoints are changed in the config). test: one signed
test event to an endpoint, now, printing its answer. replay: an endpoint's dead letters
back into its retry queue.

Exit codes: 0 done; 1 the test request failed or nothing matched; 2 usage/config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any, cast

import aiohttp
import msgspec
from yarl import URL

from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.ops import metrics
from gatewayd.store.connection import Redis, client_url, connect_config
from gatewayd.store.keys import keys_for
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import subscriptions as subs
from gatewayd.webhooks.sender import SEQ
from gatewayd.webhooks.signing import EVENT_ID_HEADER, HEADER, sign

EXIT_PROBLEM, EXIT_CONFIG = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="webhooks_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("run", help="run the webhook sender as a process of its own")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                   help="serve /metrics here (e.g. 127.0.0.1:8782)")
    p = sub.add_parser("list", help="endpoints (config and Redis) with backlog and state")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p = sub.add_parser("add", help="add or replace an endpoint kept in Redis")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("name")
    p.add_argument("url")
    p.add_argument("--tenant", default="", help="\"\" default, \"*\" every event, or a tenant")
    p.add_argument("--events", default="submitted,final",
                   help="comma-separated kinds (submitted, final, delivered, mo, optout, *...)")
    p.add_argument("--secret", default="")
    p.add_argument("--secret-env", default="")
    p.add_argument("--format", choices=["json", "kannel"], default="json")
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.0, help="requests a second (0: no limit)")
    p.add_argument("--timeout", type=float, default=10.0)
    for name, text in (("remove", "remove an endpoint kept in Redis"),
                       ("pause", "hold an endpoint's deliveries (events wait in Redis)"),
                       ("resume", "deliver a paused endpoint's events again"),
                       ("test", "send one signed test event to an endpoint now"),
                       ("dead", "print an endpoint's dead letters as JSON lines"),
                       ("replay", "move an endpoint's dead letters back into its queue")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", required=True, metavar="FILE")
        p.add_argument("name")
        if name in ("dead", "replay"):
            p.add_argument("--count", type=int, default=0, help="at most this many (0: all)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.webhooks_command == "run":
        from gatewayd.ops.logs import setup_logging

        setup_logging(cfg.daemon.log_level)
        return asyncio.run(_serve(cfg, args.metrics_listen))
    return asyncio.run(_admin(args, cfg))


async def _serve(cfg: Config, listen: str) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from gatewayd.store.connection import Store
    from gatewayd.webhooks.runner import WebhookRunner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = Store(cfg)
    redis = await store.open()
    site_runner = None
    if listen:
        async def get_metrics(_request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(metrics.REGISTRY),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", get_metrics)
        site_runner = web.AppRunner(app)
        await site_runner.setup()
        host, _, port = listen.rpartition(":")
        await web.TCPSite(site_runner, host or "127.0.0.1", int(port)).start()
    try:
        await WebhookRunner(redis, keys_for(cfg), cfg).run(stop)
    finally:
        if site_runner is not None:
            await site_runner.cleanup()
        await store.close()
    return 0


async def _admin(args: argparse.Namespace, cfg: Config) -> int:
    keys = keys_for(cfg)
    redis = connect_config(cfg, client_url(cfg))
    try:
        return await _command(args, cfg, redis, keys)
    finally:
        await redis.aclose()


async def _endpoints(cfg: Config, redis: Redis, keys: Any) -> dict[str, subs.Endpoint]:
    raw = cast(dict[str, str], await redis.hgetall(keys.webhook_endpoints))
    out = {e.name: e for e in subs.from_redis(raw, cfg)}
    out.update({e.name: e for e in subs.from_config(cfg)})  # the config wins
    return out


async def _command(args: argparse.Namespace, cfg: Config, redis: Redis, keys: Any) -> int:
    cmd = args.webhooks_command
    if cmd == "add":
        if args.name in {e.name for e in cfg.webhooks.endpoints}:
            raise ConfigError(f"{args.name}: an endpoint of the config; change it there")
        spec: dict[str, Any] = {
            "name": args.name, "url": args.url, "tenant": args.tenant,
            "events": [k.strip() for k in args.events.split(",") if k.strip()],
            "secret": args.secret, "secret_env": args.secret_env, "format": args.format,
            "batch": args.batch, "concurrency": args.concurrency, "rate_per_s": args.rate,
            "timeout_s": args.timeout}
        parsed = subs.parse_spec(spec, cfg)
        if not cfg.webhooks.allow_private:
            try:
                await subs.check_target(parsed.url, False)
            except subs.TargetRefused as refused:
                raise ConfigError(f"{args.name}: {refused}") from None
        await redis.hset(keys.webhook_endpoints, args.name,
                         msgspec.json.encode(parsed).decode())
        print(f"{args.name}: added (senders pick it up within a second)")
        return 0
    endpoints = await _endpoints(cfg, redis, keys)
    if cmd == "list":
        paused = set(await redis.smembers(keys.webhook_paused))
        for e in endpoints.values():
            queued = await redis.zcard(keys.webhook_queue(e.name))
            dead = await redis.xlen(keys.webhook_dead(e.name))
            print(json.dumps({
                "name": e.name, "url": e.url, "tenant": e.tenant, "source": e.source,
                "events": sorted(e.kinds), "format": e.format, "batch": e.batch,
                "concurrency": e.concurrency, "rate_per_s": e.rate_per_s,
                "signed": bool(e.secret), "paused": e.name in paused,
                "queued": queued, "dead": dead}))
        return 0
    name = args.name
    if cmd == "remove":
        if name in {e.name for e in cfg.webhooks.endpoints}:
            raise ConfigError(f"{name}: an endpoint of the config; remove it there")
        if not await redis.hdel(keys.webhook_endpoints, name):
            print(f"gatewayd: no endpoint {name!r} in Redis", file=sys.stderr)
            return EXIT_PROBLEM
        print(f"{name}: removed")
        return 0
    if name not in endpoints:
        print(f"gatewayd: no endpoint {name!r}", file=sys.stderr)
        return EXIT_PROBLEM
    if cmd == "pause":
        await redis.sadd(keys.webhook_paused, name)
        print(f"{name}: paused")
        return 0
    if cmd == "resume":
        await redis.srem(keys.webhook_paused, name)
        print(f"{name}: resumed")
        return 0
    if cmd == "test":
        return await _test_fire(endpoints[name], cfg)
    if cmd == "dead":
        rows = cast(list[tuple[str, dict[str, str]]],
                    await redis.xrange(keys.webhook_dead(name), count=args.count or None))
        for sid, fields in rows:
            print(json.dumps({"dead_id": sid, "error": fields.get("error", ""),
                              "at": float(fields.get("at", 0)),
                              "event": json.loads(fields.get("event", "{}"))},
                             ensure_ascii=False))
        return 0
    if cmd == "replay":
        return await _replay(redis, keys, name, args.count)
    return EXIT_CONFIG


async def _replay(redis: Redis, keys: Any, name: str, count: int) -> int:
    """Dead letters back into the retry queue (at their stream position), then deleted:
    in one MULTI, so a crash moves each either wholly or not at all."""
    rows = cast(list[tuple[str, dict[str, str]]],
                await redis.xrange(keys.webhook_dead(name), count=count or None))
    if not rows:
        print(f"{name}: no dead letters")
        return EXIT_PROBLEM
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
    print(f"{name}: {len(moved)} event(s) back in its queue")
    return 0


async def _test_fire(ep: subs.Endpoint, cfg: Config) -> int:
    now = time.time()
    event: dict[str, Any] = {"event_id": f"test-{int(now * 1000)}", "kind": "test",
                             "message_id": "", "state": "test", "at": now}
    data = bodies.batch_body([bodies.encode(event)])
    try:
        await subs.check_target(ep.url, cfg.webhooks.allow_private)
    except subs.TargetRefused as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    if ep.format == "kannel":
        url, signed = bodies.kannel_request(ep.url, event)
        method, payload = "GET", None
    else:
        method, url, signed, payload = "POST", ep.url, data, data
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: str(event["event_id"])}
    if ep.secret:
        headers[HEADER] = sign(ep.secret, signed, int(now))
    try:
        async with aiohttp.ClientSession() as session, session.request(
                method, URL(url, encoded=True), data=payload, headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as resp:
            text = (await resp.text())[:200]
            print(f"{ep.name}: HTTP {resp.status} in {time.time() - now:.3f} s {text}")
            return 0 if 200 <= resp.status < 300 else EXIT_PROBLEM
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"{ep.name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_PROBLEM
