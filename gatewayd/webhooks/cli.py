"""`gatewayd webhooks run | list | add | remove | pause | resume | test | dead | replay`
(wired by gatewayd.cli).

run: the sender as a process of its own (instead of ``webhooks.enabled`` in the daemon),
with /metrics on ``--metrics-listen`` (the daemon's own sender process, ``webhooks.sender
= "process"``, is this with ``--child``: gatewayd.webhooks.process). add/remove:
endpoints kept in Redis, read by every sender within a second (config endpoints are
changed in the config). test: one signed test event to an endpoint, now, printing its
answer. replay: an endpoint's dead letters back into its retry queue.

Exit codes: 0 done; 1 the test request failed or nothing matched; 2 usage/config error;
3 (run) Redis unreachable past ``redis.startup_wait_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from gatewayd.config import Config
from gatewayd.errors import GatewayError
from gatewayd.ops.gctune import tune_gc
from gatewayd.store.connection import Redis, client_url, connect_config
from gatewayd.store.keys import keys_for
from gatewayd.webhooks import admin

EXIT_PROBLEM, EXIT_CONFIG, EXIT_STARTUP = 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="webhooks_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("run", help="run the webhook sender as a process of its own")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                   help="serve /metrics here (e.g. 127.0.0.1:8782)")
    # webhooks.sender = "process": the daemon starts its sender with this (not for users).
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
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
        _as_the_daemon_runs()
        from gatewayd.webhooks import process

        listen = args.metrics_listen or (process.metrics_listen(cfg) if args.child else "")
        try:
            return asyncio.run(process.serve(cfg, listen, child=args.child))
        except GatewayError as e:  # Redis unreachable past redis.startup_wait_s
            # The line `gatewayd run` logs for it (gatewayd.cli._run), the same exit code.
            logging.getLogger("gatewayd").error("startup failed: %s",
                                                str(e).splitlines()[0] or type(e).__name__)
            return EXIT_STARTUP
    return asyncio.run(_admin(args, cfg))


def _as_the_daemon_runs() -> None:
    """The event loop and collector settings of ``gatewayd run`` (gatewayd.cli,
    gatewayd.ops.gctune), so that the sender costs the same CPU an event in its own process as in
    the daemon: uvloop, and startup objects frozen out of the collections (every event
    allocates a few short-lived containers)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    tune_gc()


async def _admin(args: argparse.Namespace, cfg: Config) -> int:
    keys = keys_for(cfg)
    redis = connect_config(cfg, client_url(cfg))
    try:
        return await _command(args, cfg, redis, keys)
    finally:
        await redis.aclose()


async def _command(args: argparse.Namespace, cfg: Config, redis: Redis, keys: Any) -> int:
    cmd = args.webhooks_command
    try:
        if cmd == "add":
            spec: dict[str, Any] = {
                "name": args.name, "url": args.url, "tenant": args.tenant,
                "events": [k.strip() for k in args.events.split(",") if k.strip()],
                "secret": args.secret, "secret_env": args.secret_env, "format": args.format,
                "batch": args.batch, "concurrency": args.concurrency,
                "rate_per_s": args.rate, "timeout_s": args.timeout}
            await admin.add(cfg, redis, keys, spec)
            print(f"{args.name}: added (senders pick it up within a second)")
            return 0
        if cmd == "list":
            for row in await admin.listing(cfg, redis, keys):
                print(json.dumps(row))
            return 0
        name = args.name
        if cmd == "remove":
            await admin.remove(cfg, redis, keys, name)
            print(f"{name}: removed")
            return 0
        if cmd in ("pause", "resume"):
            await admin.pause(cfg, redis, keys, name, cmd == "pause")
            print(f"{name}: {cmd}d")
            return 0
        if cmd == "test":
            out = await admin.test_fire(await admin.must(cfg, redis, keys, name), cfg)
            if "error" in out:
                print(f"{name}: failed: {out['error']}", file=sys.stderr)
            else:
                print(f"{name}: HTTP {out['status']} in {out['elapsed_s']:.3f} s {out['body']}")
            return 0 if out["ok"] else EXIT_PROBLEM
        if cmd == "dead":
            for row in await admin.dead(cfg, redis, keys, name, args.count):
                print(json.dumps(row, ensure_ascii=False))
            return 0
        if cmd == "replay":
            moved = await admin.replay(cfg, redis, keys, name, args.count)
            if not moved:
                print(f"{name}: no dead letters")
                return EXIT_PROBLEM
            print(f"{name}: {moved} event(s) back in its queue")
            return 0
    except admin.NotFound as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_CONFIG
