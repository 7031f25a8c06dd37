"""`gatewayd account create | list | show | usage | add-key | revoke-key | set-limits |
suspend | resume` (wired by gatewayd.cli): accounts kept in Redis, honoured by every
daemon within a second (its account cache's lifetime).

Output is JSON. A new key is printed once (only its digest is kept).
Exit codes: 0 done; 1 no such account or key, or it exists; 2 usage/config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import msgspec

from gatewayd.accounts.model import Limits
from gatewayd.accounts.store import AccountError, AccountStore, public
from gatewayd.config import Config
from gatewayd.store.connection import client_url, connect_config
from gatewayd.store.keys import keys_for

EXIT_PROBLEM, EXIT_USAGE = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="account_command", required=True, metavar="SUBCOMMAND")

    def cmd(name: str, text: str, tenant: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", required=True, metavar="FILE")
        if tenant:
            p.add_argument("tenant")
        return p

    p = cmd("create", "create an account (and its first key, printed once)")
    p.add_argument("--limits", default="{}", metavar="JSON", help="limits (see set-limits)")
    p.add_argument("--no-key", action="store_true", help="no first key")
    cmd("list", "every account (JSON lines)", tenant=False)
    cmd("show", "an account: keys (ids, times), limits, webhooks")
    p = cmd("usage", "an account's usage by day and this month")
    p.add_argument("--days", type=int, default=7)
    p = cmd("add-key", "a new key for the account (printed once); old keys stay valid")
    p.add_argument("--expires-in-days", type=float, default=0.0)
    p.add_argument("--label", default="")
    p = cmd("revoke-key", "revoke one key by its id")
    p.add_argument("key_id")
    p = cmd("set-limits", "merge limits (JSON) into the account's, e.g. "
                          "'{\"rate_per_s\": 50, \"daily\": {\"marketing\": 10000}}'")
    p.add_argument("limits", metavar="JSON")
    cmd("suspend", "refuse the account's requests (403) until resumed")
    cmd("resume", "accept the account's requests again")


def run(args: argparse.Namespace, cfg: Config) -> int:
    return asyncio.run(_run(args, cfg))


async def _run(args: argparse.Namespace, cfg: Config) -> int:
    redis = connect_config(cfg, client_url(cfg))
    store = AccountStore(redis, keys_for(cfg), list(cfg.queue.classes))
    try:
        return await _command(args, store, cfg)
    except AccountError as e:
        print(f"gatewayd account: {e}", file=sys.stderr)
        return EXIT_USAGE if e.code == "invalid" else EXIT_PROBLEM
    finally:
        await redis.aclose()


def _json_arg(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AccountError("invalid", f"limits: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AccountError("invalid", "limits: a JSON object")
    return doc


def _print(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False, sort_keys=True))


async def _command(args: argparse.Namespace, store: AccountStore, cfg: Config) -> int:
    c = args.account_command
    if c == "list":
        for account in await store.all():
            _print(public(account))
        return 0
    tenant = args.tenant
    if c == "create":
        try:
            limits = msgspec.convert(_json_arg(args.limits), Limits)
        except msgspec.ValidationError as e:
            raise AccountError("invalid", f"limits: {e}") from None
        await store.create(tenant, limits)
        out: dict[str, Any] = {}
        if not args.no_key:
            entry, key = await store.add_key(tenant, label="first")
            out["key"] = {"id": entry.id, "key": key}
        out["account"] = public(await store.must(tenant))
        _print(out)
    elif c == "show":
        account = await store.must(tenant)
        view = public(account, await store.last_used(tenant))
        view["webhooks"] = await store.webhooks(tenant, cfg)
        _print(view)
    elif c == "usage":
        await store.must(tenant)
        _print(await store.usage(tenant, args.days))
    elif c == "add-key":
        expires = time.time() + args.expires_in_days * 86400 if args.expires_in_days else 0.0
        entry, key = await store.add_key(tenant, expires_at=expires, label=args.label)
        _print({"id": entry.id, "key": key, "expires_at": entry.expires_at or None})
    elif c == "revoke-key":
        await store.revoke_key(tenant, args.key_id)
        _print({"revoked": args.key_id})
    elif c == "set-limits":
        _print(public(await store.set_limits(tenant, _json_arg(args.limits))))
    elif c in ("suspend", "resume"):
        _print(public(await store.suspend(tenant, c == "suspend")))
    return 0
