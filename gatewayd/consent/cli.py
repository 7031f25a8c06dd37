"""`gatewayd consent export | import` (wired by gatewayd.cli, which hands in the policy's
retention and the categories recipients may opt out of one by one).

export: the consent records (every opt-out and opt-in with its source) as JSON lines or
CSV, of one number or all, in a time range, to stdout or a file.
import: an existing opt-out list (one number a line, or CSV with the number first),
each number opted out with a consent record (source ``import``).

Exit codes: 0 done; 1 the import skipped invalid lines (the valid ones were imported);
2 usage/config error or Redis unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewayd.config import Config
from gatewayd.consent import bulk, records
from gatewayd.store.connection import client_url, connect_config
from gatewayd.store.keys import keys_for

EXIT_PROBLEM, EXIT_CONFIG = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="consent_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("export", help="consent records as JSON lines or CSV")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--number", default="", help="only this number's records")
    p.add_argument("--since", default="", metavar="TIME",
                   help="from this time on: Unix seconds or ISO 8601 (naive = local time)")
    p.add_argument("--until", default="", metavar="TIME", help="up to this time")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="default: stdout")
    p = sub.add_parser("import", help="opt out every number of a list")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("file", help="one number a line, or CSV with the number first (- = stdin)")
    p.add_argument("--scope", default="*", help="\"*\" (default) or a signature/sender")
    p.add_argument("--category", default="",
                   help="opt out of this category only (one of the policy's [optout] "
                        "categories); default: a plain opt-out")
    p.add_argument("--country-code", default="", metavar="CC",
                   help="numbers without + or 00 are national numbers of this country")
    p.add_argument("--note", default="", help="kept in each consent record "
                                              "(default: the file's name)")


def _time(value: str, name: str) -> float:
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as e:
        raise ValueError(f"--{name} {value!r}: use Unix seconds or ISO 8601, e.g. "
                         "2024-06-01T00:00:00+08:00") from e


def run(args: argparse.Namespace, cfg: Config, *, retention_s: float,
        categories: frozenset[str]) -> int:
    try:
        if args.consent_command == "export":
            since, until = _time(args.since, "since"), _time(args.until, "until")
            if args.output == "-":
                return asyncio.run(_export(cfg, args, since, until, sys.stdout))
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                return asyncio.run(_export(cfg, args, since, until, out))
        if args.category and args.category not in categories:
            raise ValueError(f"--category {args.category!r}: not one recipients may opt out "
                             f"of alone; the policy's [optout] categories are "
                             f"{sorted(categories)}")
        if args.country_code and not args.country_code.isdigit():
            raise ValueError("--country-code: digits, e.g. 86")
        if args.file == "-":
            return asyncio.run(_import(cfg, args, retention_s, sys.stdin))
        with open(args.file, encoding="utf-8-sig") as stream:
            return asyncio.run(_import(cfg, args, retention_s, stream))
    except ValueError as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (RedisConnectionError, RedisTimeoutError) as e:
        print(f"gatewayd: cannot reach Redis: {e}", file=sys.stderr)
        return EXIT_CONFIG


async def _export(cfg: Config, args: argparse.Namespace, since: float, until: float,
                  out: TextIO) -> int:
    digits = ""
    if args.number:
        digits = bulk.parse_line(args.number) or ""
        if not digits:
            raise ValueError(f"--number {args.number!r}: not an E.164 number, "
                             "e.g. +8613800138000")
    fmt: Literal["jsonl", "csv"] = args.format
    keys = keys_for(cfg)
    client = connect_config(cfg, client_url(cfg), socket_connect_timeout=2, socket_timeout=30)
    n = 0
    try:
        chunk: list[dict[str, str]] = []
        async for row in records.read(client, keys, number=digits, since=since, until=until):
            chunk.append(row)
            if len(chunk) >= 5000:
                out.write(records.encode(chunk, fmt, header=n == 0))
                n += len(chunk)
                chunk = []
        out.write(records.encode(chunk, fmt, header=n == 0))
        n += len(chunk)
    finally:
        await cast(Any, client).aclose()
    if args.output != "-":
        print(f"exported {n} consent records to {args.output}", file=sys.stderr)
    return 0


async def _import(cfg: Config, args: argparse.Namespace, retention_s: float,
                  stream: TextIO) -> int:
    keys = keys_for(cfg)
    client = connect_config(cfg, client_url(cfg), socket_connect_timeout=2, socket_timeout=30)
    try:
        result = await bulk.import_optouts(
            client, keys, stream, scope=args.scope, category=args.category,
            note=args.note or Path(args.file).name, country_code=args.country_code,
            retention_s=retention_s)
    finally:
        await cast(Any, client).aclose()
    print(f"imported {result.read} numbers ({result.new} newly opted out, "
          f"{result.read - result.new} already were) in {result.seconds:.1f} s")
    if result.invalid:
        print(f"gatewayd: {result.invalid} lines are not numbers and were skipped:",
              file=sys.stderr)
        for lineno, text in result.invalid_lines:
            print(f"  line {lineno}: {text!r}", file=sys.stderr)
        return EXIT_PROBLEM
    return 0
