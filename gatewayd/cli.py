"""Command line: `gatewayd run | check-config | enqueue | status | events | demo | ...`.

Exit codes: 0 success; 1 the command ran and found a problem (a message not delivered,
a status not found); 2 usage or configuration error; 3 the daemon failed to start.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from gatewayd import __version__
from gatewayd.config import Config, load_config
from gatewayd.errors import ConfigError, GatewayError, IntakeError, MessageError

EXIT_PROBLEM, EXIT_CONFIG, EXIT_STARTUP = 1, 2, 3
# `events --follow`: one XREAD waits this long for new events, on a connection whose
# read timeout is longer (redis-py's default of 5 s ended the follow after 5 s).
_FOLLOW_BLOCK_MS = 5000


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", required=required, metavar="FILE",
                   help="gatewayd TOML config (e.g. config/demo.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    _add_config(p)
    p.add_argument("--burst", action="store_true",
                   help="exit once every queue is drained and every receipt is in")
    p.add_argument("--burst-timeout", type=float, default=0.0, metavar="S",
                   help="with --burst: stop after S seconds even if work is left")
    # http.workers: the daemon starts its intake-only processes with this (not for users).
    p.add_argument("--intake-worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fanout-worker", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("check-config", help="validate a config file and its policy file")
    _add_config(p)

    p = sub.add_parser("enqueue", help="queue one message (flags) or many (JSON lines)")
    _add_config(p)
    p.add_argument("--to", help="E.164 number, e.g. +8613800138000 (a national number "
                                "needs --country)")
    p.add_argument("--text")
    p.add_argument("--category", default="transactional")
    p.add_argument("--from", dest="sender", default="")
    p.add_argument("--id", default="")
    p.add_argument("--ref", default="")
    p.add_argument("--tenant", default="")
    p.add_argument("--idempotency-key", default="")
    p.add_argument("--not-before", default="", help="Unix seconds or ISO 8601 with offset")
    p.add_argument("--expires-at", default="", help="Unix seconds or ISO 8601 with offset")
    p.add_argument("--file", help="JSON lines, one message object a line ('-' = stdin); "
                                  "every bad line is named, and then nothing is queued")
    p.add_argument("--country", default="", metavar="CC",
                   help="country calling code for numbers written without + (e.g. 86: "
                        "13800138000 is +8613800138000); without it they are refused")

    p = sub.add_parser("status", help="print a message's status record as JSON")
    _add_config(p)
    p.add_argument("id")

    p = sub.add_parser("events", help="print the events stream as JSON lines")
    _add_config(p)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--count", type=int, default=100, help="last N events (default 100)")
    p.add_argument("--block-ms", type=int, default=_FOLLOW_BLOCK_MS, help=argparse.SUPPRESS)

    p = sub.add_parser("demo", help="embedded Redis + simulator + daemon + sample messages")
    _add_config(p, required=False)
    p.add_argument("--keep-running", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--campaign", action="store_true",
                   help="then an A/B campaign with short links: upload, send, clicks, funnel")

    p = sub.add_parser("hash-key", help="print the SHA-256 digest of an API key for http.api_keys")
    p.add_argument("key")

    from gatewayd.sim import cli as sim_cli

    p = sub.add_parser("smsc-sim", help="run the built-in SMSC simulator")
    sim_cli.add_arguments(p)

    from gatewayd.policy import cli as policy_cli

    p = sub.add_parser("policy", help="policy tools (explain)")
    policy_cli.add_policy_arguments(p)
    p = sub.add_parser("optout", help="opt-out list: add | remove | check")
    policy_cli.add_optout_arguments(p)

    from gatewayd.campaigns import cli as campaigns_cli

    p = sub.add_parser("template", help="message templates: add | load | approve | reject | "
                                        "show | list | delete")
    campaigns_cli.add_template_arguments(p)
    p = sub.add_parser("campaign", help="campaigns: create | upload | start | pause | resume | "
                                        "cancel | show | report | list")
    campaigns_cli.add_campaign_arguments(p)

    from gatewayd.consent import cli as consent_cli

    p = sub.add_parser("consent", help="consent records: export | import (opt-out lists)")
    consent_cli.add_arguments(p)

    from gatewayd.webhooks import cli as webhooks_cli

    p = sub.add_parser("webhooks", help="webhooks: run | list | add | remove | pause | "
                                        "resume | test | dead | replay")
    webhooks_cli.add_arguments(p)

    from gatewayd.accounts import cli as accounts_cli

    p = sub.add_parser("account", help="accounts: create | list | show | usage | add-key | "
                                       "revoke-key | set-limits | suspend | resume")
    accounts_cli.add_arguments(p)

    from gatewayd.control import cli as control_cli

    p = sub.add_parser("carrier", help="carriers, live: list | show | suspend | resume | "
                                       "restart | tune")
    control_cli.add_arguments(p)

    from gatewayd.ops import top

    p = sub.add_parser("top", help="live view of a running daemon (from /metrics)")
    top.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "events" and (args.count < 1 or args.block_ms < 1):
        raise ConfigError("events --count: must be at least 1 (the last N events)")
    if cmd == "smsc-sim":
        from gatewayd.sim import cli as sim_cli

        return sim_cli.run(args)
    if cmd == "policy":
        from gatewayd.pipeline.intake import parse_message
        from gatewayd.policy import cli as policy_cli

        def validate(raw: dict[str, Any], cfg: Config) -> Any:
            return parse_message(raw, classes=list(cfg.queue.classes),
                                 max_segments=cfg.queue.max_segments,
                                 horizon_s=cfg.queue.horizon_s)

        return policy_cli.run_policy(args, validate)
    if cmd == "optout":
        from gatewayd.policy import cli as policy_cli

        return policy_cli.run_optout(args)
    if cmd in ("template", "campaign"):
        from gatewayd.campaigns import cli as campaigns_cli

        return (campaigns_cli.run_template(args) if cmd == "template"
                else campaigns_cli.run_campaign(args))
    if cmd == "consent":
        from gatewayd.consent import cli as consent_cli
        from gatewayd.policy.engine import PolicyEngine

        cfg = load_config(args.config, need_secrets=False)
        policy_file = cfg.resolve(cfg.policy.file) if cfg.policy.file else None
        policy = PolicyEngine.load(policy_file, classes=list(cfg.queue.classes)).policy
        return consent_cli.run(args, cfg, retention_s=policy.consent_retention_s,
                               categories=policy.optout_categories)
    if cmd == "webhooks":
        from gatewayd.webhooks import cli as webhooks_cli

        return webhooks_cli.run(args, load_config(args.config, need_secrets=False))
    if cmd == "account":
        from gatewayd.accounts import cli as accounts_cli

        return accounts_cli.run(args, load_config(args.config, need_secrets=False))
    if cmd == "carrier":
        from gatewayd.control import cli as control_cli

        return control_cli.run(args, load_config(args.config, need_secrets=False))
    if cmd == "top":
        from gatewayd.ops import top

        return top.run(args)
    if cmd == "hash-key":
        print(hashlib.sha256(args.key.encode()).hexdigest())
        return 0
    if cmd == "demo":
        from gatewayd.demo import run_demo

        path = args.config or str(Path(__file__).resolve().parent.parent / "config" / "demo.toml")
        cfg = load_config(path)
        try:
            return run_demo(cfg, keep_running=args.keep_running, timeout_s=args.timeout,
                            campaign=args.campaign)
        except ConfigError:
            raise
        except (GatewayError, OSError, RedisError) as e:
            print(f"gatewayd demo: startup failed: {startup_error(e)}", file=sys.stderr)
            return EXIT_STARTUP
    # Only `run` talks SMPP: the others work without the carriers' secrets.
    cfg = load_config(args.config, need_secrets=cmd == "run")
    if cmd == "check-config":
        return _check_config(cfg)
    if cmd == "run":
        return _run(cfg, args)
    return _run_async(cmd, cfg, args)


def _check_config(cfg: Config) -> int:
    from gatewayd.policy.engine import PolicyEngine

    if cfg.policy.file:
        PolicyEngine.load(cfg.resolve(cfg.policy.file), classes=list(cfg.queue.classes))
    from gatewayd.config import holds_secrets, missing_secrets, warn_if_world_readable

    warning = warn_if_world_readable(cfg.source)
    if warning and holds_secrets(cfg):
        print(f"gatewayd: warning: {warning}", file=sys.stderr)
    for key, var in missing_secrets(cfg):
        print(f"gatewayd: note: {cfg.source}: {key}: {var} is not "
              "set in this environment; `gatewayd run` needs it (under systemd it comes "
              "from EnvironmentFile=/etc/gatewayd/gatewayd.env)", file=sys.stderr)
    print(f"{cfg.source}: ok ({len(cfg.carrier)} carrier(s), classes {cfg.queue.classes})")
    return 0


def _run(cfg: Config, args: argparse.Namespace) -> int:
    from gatewayd.daemon import Daemon
    from gatewayd.ops.logs import setup_logging

    setup_logging(cfg.daemon.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    if args.intake_worker:
        from gatewayd.http.worker import IntakeWorker

        runner: Any = IntakeWorker(cfg, args.intake_worker)
    elif args.fanout_worker:
        from gatewayd.campaigns.worker import FanoutWorker

        runner = FanoutWorker(cfg)
    else:
        runner = Daemon(cfg, burst=args.burst, burst_timeout_s=args.burst_timeout)
    try:
        return int(asyncio.run(runner.run()))
    except ConfigError:
        raise
    except (GatewayError, OSError, RedisError) as e:
        logging.getLogger("gatewayd").error("startup failed: %s", startup_error(e))
        return EXIT_STARTUP


def startup_error(e: BaseException) -> str:
    """One line for a failed start; a port in use says what to do about it."""
    if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
        return (f"{e}: another gatewayd (or demo) is listening there; stop it, or change "
                "the port in the config")
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _run_async(cmd: str, cfg: Config, args: argparse.Namespace) -> int:
    try:
        items = _read_items(args, cfg) if cmd == "enqueue" else []
    except MessageError as e:
        print(f"gatewayd: invalid message: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_async_commands(cmd, cfg, args, items))
    except RedisError as e:  # e.g. unreachable when connecting: nothing was done
        done = "nothing queued" if cmd == "enqueue" else "nothing read"
        print(f"gatewayd: Redis: {type(e).__name__}: {e} ({done})", file=sys.stderr)
        return EXIT_PROBLEM


async def _async_commands(
    cmd: str, cfg: Config, args: argparse.Namespace, items: list[dict[str, Any]]
) -> int:
    from gatewayd.client import Client
    from gatewayd.store.connection import client_url

    async with Client.from_config(cfg, client_url(cfg)) as client:
        if cmd == "enqueue":
            return await _enqueue(client, items)
        if cmd == "status":
            record = await client.status(args.id)
            if record is None:
                print(f"gatewayd: no status for {args.id!r} (unknown or expired)",
                      file=sys.stderr)
                return EXIT_PROBLEM
            print(json.dumps(record, ensure_ascii=False))
            return 0
        if cmd == "events":
            return await _events(client, args, cfg)
    return EXIT_CONFIG


def _read_items(args: argparse.Namespace, cfg: Config) -> list[dict[str, Any]]:
    """Messages from --file (JSON lines) or from the flags; ConfigError when unusable.

    Every line is checked before anything is queued (intake's own validation, and a
    number without + needs --country): all bad lines are printed, each with its number,
    and then the command ends with ConfigError, having queued nothing."""
    if not args.file:
        if not args.to or not args.text:
            raise ConfigError("enqueue needs --to and --text, or --file")
        item: dict[str, Any] = {"to": args.to, "text": args.text, "category": args.category}
        for key, value in (("from", args.sender), ("id", args.id), ("ref", args.ref),
                           ("tenant", args.tenant), ("idempotency_key", args.idempotency_key),
                           ("not_before", args.not_before), ("expires_at", args.expires_at)):
            if value:
                item[key] = value
        problem = _check_item(item, cfg, args.country)
        if problem:
            raise MessageError(*problem)
        return [item]
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{args.file}: cannot read messages: {e.strerror}") from e
    items: list[dict[str, Any]] = []
    bad = 0
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as e:  # JSONDecodeError; RecursionError is no ValueError
                print(f"gatewayd: {args.file}:{n}: not JSON: {e}", file=sys.stderr)
                bad += 1
                continue
            except RecursionError:
                print(f"gatewayd: {args.file}:{n}: not JSON: nested too deep", file=sys.stderr)
                bad += 1
                continue
            problem = _check_item(raw, cfg, args.country)
            if problem:
                print(f"gatewayd: {args.file}:{n}: {problem[0]}: {problem[1]}", file=sys.stderr)
                bad += 1
                continue
            items.append(raw)
    if bad:
        raise ConfigError(f"{args.file}: {bad} bad line(s) of {bad + len(items)}; "
                          "nothing was queued")
    return items


def _check_item(raw: Any, cfg: Config, country: str) -> tuple[str, str] | None:
    """(field, reason) when the message would be refused; its ``to`` made E.164."""
    from gatewayd.pipeline.intake import parse_message
    from gatewayd.policy.numbers import from_person

    if not isinstance(raw, dict):
        return "$", "expected an object with at least 'to' and 'text'"
    to = raw.get("to")
    if isinstance(to, (str, int)) and not isinstance(to, bool):
        try:
            raw["to"] = from_person(str(to), country)
        except ValueError as e:
            return "to", str(e)
    if "params" in raw:
        return None  # rendered against the template registry when sent
    try:
        parse_message(dict(raw), classes=list(cfg.queue.classes),
                      max_segments=cfg.queue.max_segments)
    except MessageError as e:
        return e.field, e.reason
    except (RecursionError, OverflowError) as e:
        return "$", f"unusable value ({type(e).__name__})"
    return None


async def _enqueue(client: Any, items: list[dict[str, Any]]) -> int:
    """One output line per message, in input order: {"id", "duplicate"} when queued,
    {"id", "queued": false, "error"} when Redis failed past the intake's retries (then
    exit 1, with a count on stderr; the lines printed queued are queued)."""
    failed: dict[int, str] = {}
    try:
        results: list[tuple[str, bool] | None] = list(await client.send(items, source="cli"))
    except MessageError as e:
        print(f"gatewayd: invalid message: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except IntakeError as e:
        results, failed = e.results, e.reasons
    for n, r in enumerate(results):
        if r is None:
            print(json.dumps({"id": str(items[n].get("id", "")), "queued": False,
                              "error": failed.get(n, "not queued")}, ensure_ascii=False))
        else:
            print(json.dumps({"id": r[0], "duplicate": r[1]}))
    if failed:
        print(f"gatewayd: {len(failed)} of {len(results)} messages not queued (Redis "
              f"failed past the retries): {next(iter(failed.values()))}", file=sys.stderr)
        return EXIT_PROBLEM
    return 0


async def _events(client: Any, args: argparse.Namespace, cfg: Config) -> int:
    redis = client.redis
    key = client.keys.events
    rows = await redis.xrevrange(key, count=args.count)
    last = "0-0"
    for sid, fields in reversed(rows):
        print(json.dumps(dict(fields, stream_id=sid), ensure_ascii=False), flush=True)
        last = sid
    if not args.follow:
        return 0
    # No rows: the stream was empty, so everything from "0-0" on is new (not "$" on
    # every read: what arrived between two reads would be skipped).
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from gatewayd.store.connection import client_url, connect_config

    block = args.block_ms
    # Its own connection: a read timeout longer than the block, so that a quiet stream
    # is waited on for ever; a lost Redis is retried, said once on stderr.
    follow = connect_config(cfg, client_url(cfg), socket_timeout=block / 1000 + 10,
                            socket_connect_timeout=5)
    down = False
    try:
        while True:
            try:
                reply: Any = await follow.xread({key: last}, block=block, count=1000)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                if not down:
                    print(f"gatewayd: events --follow: Redis unreachable ({e}); retrying",
                          file=sys.stderr, flush=True)
                down = True
                await asyncio.sleep(1.0)
                continue
            down = False
            for _stream, items in reply or []:
                for sid, fields in items:
                    print(json.dumps(dict(fields, stream_id=sid), ensure_ascii=False),
                          flush=True)
                    last = sid
    finally:
        await follow.aclose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
