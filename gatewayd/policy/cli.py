"""`gatewayd policy explain` and `gatewayd optout add|remove|check` (wired by gatewayd.cli).

explain loads the main config and its policy file, then evaluates one message at a
given time: every check's verdict and the final one, without consuming any counter
(the Redis checks run as a dry run). It reads Redis at the configured URL (REDIS_URL
wins), or the socket of a running daemon's embedded Redis. Without a reachable Redis
it still prints the pure checks (content, keywords, quiet hours), marks the others
"skipped", says so, and exits 2 so that a script cannot mistake it for a full answer.

Exit codes: 0 done; 2 usage/config error, or Redis needed and not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewayd.config import Config, load_config
from gatewayd.errors import ConfigError, MessageError
from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.numbers import from_person
from gatewayd.policy.optout import opt_in, opt_out, optout_status, preferences
from gatewayd.store.connection import client_url, connect_config
from gatewayd.store.keys import keys_for

EXIT_CONFIG = 2


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="gatewayd TOML config (its [policy] file is used)")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("explain", help="show every check's verdict for one message")
    _config_arg(p)
    p.add_argument("--to", required=True, help="E.164 number, e.g. +8613800138000")
    p.add_argument("--text", required=True)
    p.add_argument("--category", default="transactional")
    p.add_argument("--from", dest="sender", default="", help="sender (source address)")
    p.add_argument("--tenant", default="")
    p.add_argument("--id", default="explain", help="message id (quiet-hours spread, caps)")
    p.add_argument("--at", default="", metavar="TIME",
                   help="evaluate at this time: Unix seconds or ISO 8601 (naive = this "
                        "machine's local time); default now")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_optout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["add", "remove", "check"])
    parser.add_argument("number", help="E.164 number, e.g. +8613800138000 (a national "
                                       "number needs --country)")
    parser.add_argument("--country", default="", metavar="CC",
                        help="country calling code for a number written without + (e.g. "
                             "86: 13800138000 is +8613800138000)")
    parser.add_argument("--scope", default="*",
                        help="\"*\" (everything, default) or a signature/sender")
    parser.add_argument("--category", default="",
                        help="only this category (one of the policy's [optout] categories)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _config_arg(parser)


def parse_time(value: str) -> float:
    """Unix seconds, or ISO 8601 (naive = local time of this machine)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as e:
        raise ValueError(f"--at {value!r}: use Unix seconds or ISO 8601, e.g. "
                         "2024-06-10T22:30:00+08:00") from e


def _redis_url(cfg: Config) -> str:
    return client_url(cfg)  # the CLI's own rule (URL or running daemon)


def _engine(cfg: Config) -> PolicyEngine:
    path = cfg.resolve(cfg.policy.file) if cfg.policy.file else None
    return PolicyEngine.load(path, classes=list(cfg.queue.classes))


# Intake's own validation (gatewayd.pipeline.intake.parse_message, handed in by
# gatewayd.cli: the pipeline room sits above this one): explain must refuse exactly what
# the daemon would refuse, or its verdicts describe messages that never reach a check.
Validate = Callable[[dict[str, Any], Config], OutboundMessage]


def run_policy(args: argparse.Namespace, validate: Validate) -> int:
    if args.policy_command != "explain":  # pragma: no cover - argparse enforces choices
        return EXIT_CONFIG
    cfg = load_config(args.config, need_secrets=False)
    engine = _engine(cfg)
    try:
        now = parse_time(args.at) if args.at else time.time()
    except ValueError as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    raw = {"id": args.id, "to": args.to, "text": args.text, "category": args.category}
    if args.sender:
        raw["from"] = args.sender
    if args.tenant:
        raw["tenant"] = args.tenant
    try:
        msg = validate(raw, cfg)
    except MessageError as e:
        if args.json:
            print(json.dumps({"verdict": "invalid", "field": e.field, "reason": e.reason},
                             ensure_ascii=False))
        print(f"gatewayd: the daemon would refuse this message: {e.field}: {e.reason}",
              file=sys.stderr)
        return EXIT_CONFIG
    result, problem = asyncio.run(_explain(cfg, engine, msg, now))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_explain(engine, msg, now, result)
    if problem:
        print(f"gatewayd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


async def _explain(cfg: Config, engine: PolicyEngine, msg: OutboundMessage,
                   now: float) -> tuple[dict[str, Any], str]:
    keys = keys_for(cfg)
    try:
        url = _redis_url(cfg)
    except ConfigError as e:
        problem = f"Redis checks skipped: {e}"
        return await engine.explain(None, keys, msg, now), problem
    # The daemon's own connection rules: cluster, TLS files, ACL user in the URL.
    client = connect_config(cfg, url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return await engine.explain(client, keys, msg, now), ""
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        problem = f"Redis checks skipped: cannot reach Redis at {url}: {e}"
        return await engine.explain(None, keys, msg, now), problem
    finally:
        await client.aclose()


def _when(engine: PolicyEngine, number: str, ts: float) -> str:
    zone = engine.recipient_zones(number)[0]
    local = datetime.fromtimestamp(ts, zone).isoformat(timespec="seconds")
    return f"{local} ({zone.key}, {ts:.0f})"


def _print_explain(engine: PolicyEngine, msg: OutboundMessage, now: float,
                   result: dict[str, Any]) -> None:
    print(f"message  to {msg.to}  category {msg.category}  at {_when(engine, msg.to, now)}")
    for row in result["checks"]:
        line = f"  {row['check']:<12} {row['verdict']:<8} {row.get('reason', '')}"
        if "until" in row:
            line += f"  until {_when(engine, msg.to, row['until'])}"
        if row.get("flags"):
            line += "  flags: " + ", ".join(row["flags"])
        print(line.rstrip())
        for hit in row.get("hits", []):
            what = f"    {hit['action']} {hit['list']}:{hit['term']} (matched {hit['matched']})"
            if "released_by" in hit:
                what += f"  released by exception {hit['released_by']}"
            print(what)
    final = f"final    {result['verdict']}"
    if result["verdict"] != "send":
        final += f"  by {result['check']}: {result['reason']}"
    if result["verdict"] == "defer":
        final += f"  until {_when(engine, msg.to, result['until'])}"
    print(final)
    if result["text"] != msg.text:
        print(f"text     {result['text']}")
    if "note" in result:
        print(f"note     {result['note']}")


def run_optout(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, need_secrets=False)
    try:
        # Never guessed: 13900000000 without + is a national number (--country), not +1.
        args.number = from_person(args.number, args.country)
        return asyncio.run(_optout(cfg, args))
    except ValueError as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG


async def _optout(cfg: Config, args: argparse.Namespace) -> int:
    policy = _engine(cfg).policy
    if args.category and args.category not in policy.optout_categories:
        raise ValueError(f"--category {args.category!r}: not one recipients may opt out of "
                         f"alone; the policy's [optout] categories are "
                         f"{sorted(policy.optout_categories)}")
    keys = keys_for(cfg)
    client = connect_config(cfg, _redis_url(cfg), socket_connect_timeout=2, socket_timeout=5)
    try:
        now = time.time()
        kw: dict[str, Any] = {"scope": args.scope, "category": args.category, "source": "cli",
                              "at": now, "retention_s": policy.consent_retention_s}
        if args.action == "add":
            await opt_out(client, keys, args.number, **kw)
        elif args.action == "remove":
            await opt_in(client, keys, args.number, **kw)
        status = await optout_status(client, keys, args.number)
    except (RedisConnectionError, RedisTimeoutError) as e:
        print(f"gatewayd: cannot reach Redis: {e}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        await cast(Any, client).aclose()
    if args.json:
        print(json.dumps({"number": args.number, "opted_out": status}, ensure_ascii=False))
        return 0
    if not status:
        print(f"{args.number}: not opted out")
    for row in preferences(status):
        when = datetime.fromtimestamp(row["since"], UTC).isoformat(timespec="seconds")
        what = "everything" if row["scope"] == "*" else repr(row["scope"])
        if row["category"]:
            what = f"{row['category']} from {what}" if row["scope"] != "*" \
                else f"{row['category']} messages"
        print(f"{args.number}: opted out of {what} since {when}")
    return 0
