"""`gatewayd carrier list | show | suspend | resume | restart | tune` (wired by
gatewayd.cli): an operator's live control of carriers, kept in Redis and applied by
every daemon sharing it within about a second (gatewayd.control).

list prints one JSON line a carrier (effective tps and window, suspension, every live
daemon's binds with state and counters); the others print the carrier's view after the
change. ``tune NAME --tps 50 --window 20``; ``config`` for either puts the config's
value back.

Exit codes: 0 done; 1 no such carrier; 2 usage/config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gatewayd.config import Config
from gatewayd.control import admin
from gatewayd.store.connection import client_url, connect_config
from gatewayd.store.keys import keys_for

EXIT_PROBLEM, EXIT_USAGE = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="carrier_command", required=True, metavar="SUBCOMMAND")

    def cmd(name: str, text: str, carrier: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", required=True, metavar="FILE")
        if carrier:
            p.add_argument("name", metavar="CARRIER")
        return p

    cmd("list", "every carrier with its settings and every daemon's binds (JSON lines)",
        carrier=False)
    cmd("show", "one carrier (JSON)")
    cmd("suspend", "no new submits to it (routing takes the next carrier of the chain); "
                   "its binds stay up for receipts and MO")
    cmd("resume", "submit to it again")
    cmd("restart", "every daemon unbinds its binds and binds again (outstanding answers "
                   "awaited first)")
    p = cmd("tune", "change its tps and/or window live")
    p.add_argument("--tps", metavar="N|config", help="messages a second (the account's cap)")
    p.add_argument("--window", metavar="N|config", help="unanswered submits a bind")


def run(args: argparse.Namespace, cfg: Config) -> int:
    return asyncio.run(_run(args, cfg))


def _value(text: str | None, kind: type) -> Any:
    if text is None or text == "config":
        return None
    try:
        return kind(text)
    except ValueError:
        raise admin.Invalid(f"{text!r}: a number, or config") from None


async def _run(args: argparse.Namespace, cfg: Config) -> int:
    redis = connect_config(cfg, client_url(cfg))
    keys = keys_for(cfg)
    try:
        c = args.carrier_command
        if c == "list":
            for row in await admin.listing(cfg, redis, keys):
                _print(row)
            return 0
        name = args.name
        if c == "show":
            out = await admin.show(cfg, redis, keys, name)
        elif c in ("suspend", "resume"):
            out = await admin.suspend(cfg, redis, keys, name, c == "suspend")
        elif c == "restart":
            out = await admin.restart(cfg, redis, keys, name)
        else:
            changes: dict[str, Any] = {}
            if args.tps is not None:
                changes["tps"] = _value(args.tps, float)
            if args.window is not None:
                changes["window"] = _value(args.window, int)
            out = await admin.tune(cfg, redis, keys, name, changes)
        _print(out)
        return 0
    except admin.NotFound as e:
        print(f"gatewayd carrier: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except admin.Invalid as e:
        print(f"gatewayd carrier: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await redis.aclose()


def _print(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False, sort_keys=True))
