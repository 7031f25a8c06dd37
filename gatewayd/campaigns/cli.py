"""`gatewayd template ...` and `gatewayd campaign ...` (wired by gatewayd.cli).

Both talk to Redis directly (the URL of the config, REDIS_URL, or a running demo
daemon's socket), like `gatewayd enqueue`: a daemon need not run to manage templates
or to create and upload a campaign; a running daemon (any of them) fans it out.

Exit codes: 0 done; 1 the thing asked for is not there (or not allowed now); 2 usage,
configuration or validation error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Literal

import msgspec

from gatewayd.campaigns import funnel, model, registry
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.report import render
from gatewayd.campaigns.templates import Template, compile_template
from gatewayd.config import Config, load_config
from gatewayd.errors import ConfigError
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.connection import Redis, client_url, connect_config
from gatewayd.store.keys import Keys, keys_for

EXIT_PROBLEM, EXIT_CONFIG = 1, 2


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="gatewayd TOML config")


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="template_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("add", help="create or change a template (a changed text is pending)")
    _config(p)
    p.add_argument("code")
    p.add_argument("--signature", required=True, help="without 【】, e.g. 京东")
    p.add_argument("--category", required=True)
    p.add_argument("--body", required=True, help="e.g. '您的验证码是{code:digits4-8}'")
    p.add_argument("--name", default="")
    p = sub.add_parser("load", help="add every [[template]] of a TOML file")
    _config(p)
    p.add_argument("file")
    for name, what in (("approve", "approve (after the content and keyword checks)"),
                       ("reject", "reject"), ("show", "print as JSON"), ("delete", "delete")):
        p = sub.add_parser(name, help=what)
        _config(p)
        p.add_argument("code")
        if name == "reject":
            p.add_argument("--reason", default="rejected")
    p = sub.add_parser("list", help="every template, one a line")
    _config(p)


def add_campaign_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="campaign_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("create", help="a draft campaign (then upload, then start)")
    _config(p)
    p.add_argument("id")
    p.add_argument("--template", action="append", default=[], metavar="[NAME=]CODE[:WEIGHT]",
                   help="a variant; repeat for A/B (A=PROMO_A:1 --template B=PROMO_B:1)")
    p.add_argument("--name", default="")
    p.add_argument("--tenant", default="")
    p.add_argument("--sender", default="", help="source address for every message")
    p.add_argument("--rate", type=float, default=0.0, help="recipients a second at most")
    p.add_argument("--source", default="upload", help="upload, or stream:<redis key>")
    p = sub.add_parser("upload", help="append recipients (CSV with a header row, or JSON lines)")
    _config(p)
    p.add_argument("id")
    p.add_argument("file", help="'-' = stdin")
    p.add_argument("--format", choices=["csv", "jsonl"], default="",
                   help="default: from the file name (.csv, else JSON lines)")
    p = sub.add_parser("start", help="start now, or at --at")
    _config(p)
    p.add_argument("id")
    p.add_argument("--at", type=float, default=0.0, metavar="UNIX_S")
    for name in ("pause", "resume", "cancel"):
        p = sub.add_parser(name, help=f"{name} a campaign")
        _config(p)
        p.add_argument("id")
    p = sub.add_parser("show", help="the campaign and its funnel")
    _config(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("report", help="write the HTML report to a file")
    _config(p)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("list", help="the latest campaigns")
    _config(p)


def run_template(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, need_secrets=False)
    return asyncio.run(_with_redis(cfg, _template(cfg, args)))


def run_campaign(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, need_secrets=False)
    return asyncio.run(_with_redis(cfg, _campaign(cfg, args)))


async def _with_redis(cfg: Config, fn: Any) -> int:
    redis = connect_config(cfg, client_url(cfg))
    try:
        result: int = await fn(redis)
        return result
    finally:
        await redis.aclose()


def _engine(cfg: Config) -> PolicyEngine | None:
    path = cfg.resolve(cfg.policy.file) if cfg.policy.file else None
    return PolicyEngine.load(path, classes=list(cfg.queue.classes))


def _sample(cfg: Config) -> str:
    lk = cfg.links
    return lk.base_url.rstrip("/") + "/" + "x" * (lk.random_chars + 4) if lk.enabled else ""


def _print(obj: Any) -> None:
    print(json.dumps(msgspec.to_builtins(model.full(obj)), ensure_ascii=False))


def _template(cfg: Config, args: argparse.Namespace) -> Any:
    async def go(redis: Redis) -> int:
        keys, cmd = keys_for(cfg), args.template_command
        classes = list(cfg.queue.classes)
        try:
            if cmd == "add":
                t = Template(code=args.code, signature=args.signature, category=args.category,
                             body=args.body, name=args.name)
                _print(await registry.save(redis, keys, t, classes=classes))
            elif cmd == "load":
                for t in await registry.load_file(redis, keys, args.file, classes=classes,
                                                  engine=_engine(cfg), link_sample=_sample(cfg)):
                    print(f"{t.code}\t{t.status}\t{t.reason}")
            elif cmd in ("approve", "reject"):
                t = await registry.set_status(
                    redis, keys, args.code, "approved" if cmd == "approve" else "rejected",
                    reason=getattr(args, "reason", ""), engine=_engine(cfg),
                    link_sample=_sample(cfg))
                _print(t)
                return 0 if cmd == "reject" or t.status == "approved" else EXIT_PROBLEM
            elif cmd == "show":
                found = await registry.get(redis, keys, args.code)
                if found is None:
                    print(f"gatewayd: no template {args.code!r}", file=sys.stderr)
                    return EXIT_PROBLEM
                out = model.full(found)
                out["variables"] = [v.spec and {"name": v.name, "type": v.spec}
                                    for v in compile_template(found).variables]
                print(json.dumps(out, ensure_ascii=False))
            elif cmd == "delete":
                return 0 if await registry.delete(redis, keys, args.code) else EXIT_PROBLEM
            else:
                for t in await registry.list_all(redis, keys):
                    print(f"{t.code}\t{t.status}\t{t.category}\t【{t.signature}】{t.body}")
        except KeyError:
            print(f"gatewayd: no template {args.code!r}", file=sys.stderr)
            return EXIT_PROBLEM
        except ValueError as e:
            print(f"gatewayd: {e}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    return go


def _variants(specs: list[str]) -> list[Variant]:
    out = []
    for i, spec in enumerate(specs):
        name, eq, rest = spec.partition("=")
        if not eq:
            name, rest = chr(ord("A") + i), spec
        code, _, weight = rest.partition(":")
        try:
            out.append(Variant(name=name, template=code, weight=int(weight or 1)))
        except ValueError:
            raise ConfigError(f"--template {spec!r}: [NAME=]CODE[:WEIGHT]") from None
    return out


def _campaign(cfg: Config, args: argparse.Namespace) -> Any:
    async def go(redis: Redis) -> int:
        keys, cmd = keys_for(cfg), args.campaign_command
        try:
            if cmd == "create":
                c = Campaign(id=args.id, variants=_variants(args.template), name=args.name,
                             tenant=args.tenant, sender=args.sender, rate=args.rate,
                             source=args.source)
                cache = TemplateCache(redis, keys, ttl_s=0)
                await cache.load(v.template for v in c.variants)
                _print(await model.create(redis, keys, c, {v.template: cache.get(v.template)
                                                           for v in c.variants}))
            elif cmd == "upload":
                return await _upload(redis, keys, cfg, args)
            elif cmd in ("start", "pause", "resume", "cancel"):
                _print(await model.change(redis, keys, args.id, cmd,
                                          start_at=getattr(args, "at", 0.0),
                                          reason="cli" if cmd in ("pause", "cancel") else ""))
            elif cmd in ("show", "report"):
                c2 = await model.get(redis, keys, args.id)
                if c2 is None:
                    raise KeyError(args.id)
                counts = await funnel.read(redis, keys, c2.id)
                if cmd == "report":
                    await asyncio.to_thread(Path(args.output).write_text, render(c2, counts),
                                            encoding="utf-8")
                    print(args.output)
                elif args.json:
                    from gatewayd.campaigns.funnel import ab, summarise
                    names = [v.name for v in c2.variants]
                    _print({"campaign": c2, "funnel": summarise(counts),
                            "variants": {v: summarise(counts, v) for v in names},
                            "ab": ab(counts, names) if len(names) > 1 else None})
                else:
                    print(show(c2, counts))
            else:
                for c3 in await model.list_all(redis, keys):
                    print(f"{c3.id}\t{c3.status}\t{c3.produced}/{c3.rows}\t{c3.name}")
        except KeyError:
            print(f"gatewayd: no campaign {args.id!r}", file=sys.stderr)
            return EXIT_PROBLEM
        except FileExistsError:
            print(f"gatewayd: campaign {args.id!r} exists", file=sys.stderr)
            return EXIT_PROBLEM
        except ValueError as e:
            print(f"gatewayd: {e}", file=sys.stderr)
            return EXIT_PROBLEM if cmd in ("start", "pause", "resume", "cancel") else EXIT_CONFIG
        return 0
    return go


async def _upload(redis: Redis, keys: Keys, cfg: Config, args: argparse.Namespace) -> int:
    c = await model.get(redis, keys, args.id)
    if c is None:
        raise KeyError(args.id)
    if c.status != "draft":
        raise ValueError(f"campaign {c.id} is {c.status}; recipients go to a draft")
    cache = TemplateCache(redis, keys, ttl_s=0)
    await cache.load(v.template for v in c.variants)
    templates = {}
    for v in c.variants:
        t = cache.get(v.template)
        if t is None:
            raise ValueError(f"template {v.template} is gone")
        templates[v.template] = t
    fmt: Literal["csv", "jsonl"] = "csv" if (args.format or (
        "csv" if args.file.endswith(".csv") else "jsonl")) == "csv" else "jsonl"
    try:
        stream = (sys.stdin.buffer if args.file == "-"
                  else await asyncio.to_thread(open, args.file, "rb"))
    except OSError as e:
        raise ConfigError(f"{args.file}: cannot read recipients: {e.strerror}") from e
    with stream:
        res = await model.upload(redis, keys, c, templates, stream, fmt=fmt,
                                 link_sample=_sample(cfg), max_segments=cfg.queue.max_segments)
    for err in res.errors:
        print(f"{args.file}:{err.line}: {err.field}: {err.reason}", file=sys.stderr)
    print(json.dumps({"accepted": res.accepted, "rejected": res.rejected}))
    return 0


def show(c: Campaign, counts: dict[str, int]) -> str:
    """The funnel as text (`gatewayd campaign show`, the demo)."""
    s = funnel.summarise(counts)
    st, rates = s["stages"], s["rates"]
    lines = [f"campaign {c.id} ({c.status}{': ' + c.reason if c.reason else ''}): "
             f"{c.rows:,} recipients uploaded, {c.invalid:,} refused, {c.produced:,} queued"]
    top = max(1, st["queued"])
    for key, label in (("queued", "queued"), ("submitted", "sent"), ("delivered", "delivered"),
                       ("clicked", "clicked"), ("converted", "converted")):
        bar = "#" * round(40 * st[key] / top)
        lines.append(f"  {label:<10} {st[key]:>9,}  {bar}")
    why = ", ".join(f"{k} {v:,}" for k, v in sorted(s["rejected_by"].items()))
    lines.append(f"  undeliverable {st['undeliverable']:,}, expired {st['expired']:,}, "
                 f"rejected {st['rejected']:,}{f' ({why})' if why else ''}, opted out "
                 f"{st['opted_out']:,}, previews {st['previews']:,}")
    for key in ("delivery", "click", "conversion", "optout"):
        r = rates[key]
        v = "–" if r["value"] is None else f"{100 * r['value']:.1f}%"
        lines.append(f"  {key + ' rate':<16} {v:>7}  ({r['num']:,} / {r['den']:,})")
    names = [v.name for v in c.variants]
    if len(names) > 1:
        ab = funnel.ab(counts, names)
        tests = {t["variant"]: t for t in ab["tests"]}
        for r2 in ab["variants"]:
            rate = "–" if r2["click_rate"] is None else f"{100 * r2['click_rate']:.1f}%"
            lo, hi = r2["ci95"]
            t = tests.get(r2["variant"])
            sig = "baseline" if t is None else "no data" if t["p_value"] is None else (
                f"p = {t['p_value']:.4f}, "
                f"{'significant' if t['significant'] else 'not significant'}")
            lines.append(f"  variant {r2['variant']}: click rate {rate} "
                         f"[{100 * lo:.1f}%, {100 * hi:.1f}%] of {r2['delivered']:,} "
                         f"delivered; {sig}")
    return "\n".join(lines)


__all__ = ["add_campaign_arguments", "add_template_arguments", "run_campaign",
           "run_template", "show"]
