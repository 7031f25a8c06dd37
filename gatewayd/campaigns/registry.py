"""The template registry in Redis, shared by every daemon, the CLI and the admin API.

A template is one HASH (``Keys.template(code)``) indexed in ``Keys.templates``. Only an
``approved`` template sends. Approval judges the fixed text once with the policy's
content and keyword checks (every variable empty, links as a sample short URL): a
verdict other than send rejects the template with that check's reason. Saving a
template whose signature, category or body changed puts it back to ``pending`` (the
carriers approve a text, not a code); saving the same text keeps its status.

``TemplateCache`` is what intake reads on the hot path: compiled templates, refreshed
from Redis at most every ``ttl_s`` per code (an approval reaches every daemon within it).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import msgspec

from gatewayd.campaigns.templates import Compiled, Template, compile_template
from gatewayd.errors import ConfigError
from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

_FLOATS = ("created_at", "updated_at", "approved_at")


def _to_hash(t: Template) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in msgspec.structs.asdict(t).items():
        out[k] = repr(v) if isinstance(v, float) else str(v)
    return out


def _from_hash(raw: dict[str, str]) -> Template:
    data: dict[str, Any] = dict(raw)
    for k in _FLOATS:
        if k in data:
            data[k] = float(data[k] or 0)
    return msgspec.convert(data, Template)


async def get(redis: Redis, keys: Keys, code: str) -> Template | None:
    raw = cast(dict[str, str], await redis.hgetall(keys.template(code)))
    return _from_hash(raw) if raw else None


async def list_all(redis: Redis, keys: Keys) -> list[Template]:
    codes = cast(list[str], await redis.zrange(keys.templates, 0, -1))
    out: list[Template] = []
    for code in codes:
        t = await get(redis, keys, code)
        if t is not None:
            out.append(t)
    return out


async def save(redis: Redis, keys: Keys, t: Template, *, classes: list[str],
               now: float | None = None) -> Template:
    """Create or update; ValueError naming the field when the template is invalid."""
    compile_template(t, classes)
    now = time.time() if now is None else now
    old = await get(redis, keys, t.code)
    same_text = old is not None and (old.signature, old.category, old.body) == (
        t.signature, t.category, t.body)
    t = msgspec.structs.replace(
        t,
        created_at=old.created_at if old is not None else now,
        updated_at=now,
        status=old.status if same_text and old is not None else "pending",
        reason=old.reason if same_text and old is not None else "",
        approved_at=old.approved_at if same_text and old is not None else 0.0,
        name=t.name or (old.name if old is not None else ""),
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.template(t.code))
        pipe.hset(keys.template(t.code), mapping=_to_hash(t))  # type: ignore[arg-type]
        pipe.zadd(keys.templates, {t.code: t.created_at}, nx=True)
        await pipe.execute()
    return t


def judge(compiled: Compiled, engine: PolicyEngine | None, *, link_sample: str,
          now: float) -> tuple[bool, str]:
    """(ok, reason): the fixed text through the content and keyword checks."""
    if engine is None:
        return True, ""
    t = compiled.template
    msg = OutboundMessage(to="+8613800138000", text=compiled.fixed_text(link_sample),
                          category=t.category, id="template-check")
    for check, verdict in engine.evaluate_local(msg, now):
        if check in ("content", "keywords") and verdict.action == "reject":
            return False, verdict.reason
    return True, ""


async def set_status(redis: Redis, keys: Keys, code: str, status: str, *, reason: str = "",
                     engine: PolicyEngine | None = None, link_sample: str = "",
                     now: float | None = None) -> Template:
    """Approve (after the checks; a failing check rejects instead) or reject a template.
    KeyError when there is no such template."""
    now = time.time() if now is None else now
    t = await get(redis, keys, code)
    if t is None:
        raise KeyError(code)
    fields: dict[str, str] = {"updated_at": repr(now)}
    if status == "approved":
        ok, why = judge(compile_template(t), engine, link_sample=link_sample, now=now)
        if ok:
            fields.update(status="approved", reason="", approved_at=repr(now))
        else:
            fields.update(status="rejected", reason=f"check:{why}", approved_at="0.0")
    elif status == "rejected":
        fields.update(status="rejected", reason=reason or "rejected", approved_at="0.0")
    elif status == "pending":
        fields.update(status="pending", reason="", approved_at="0.0")
    else:
        raise ValueError(f"status: one of approved, rejected, pending (not {status!r})")
    await redis.hset(keys.template(code), mapping=fields)  # type: ignore[arg-type]
    out = await get(redis, keys, code)
    assert out is not None
    return out


async def delete(redis: Redis, keys: Keys, code: str) -> bool:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.template(code))
        pipe.zrem(keys.templates, code)
        n, _ = await pipe.execute()
    return bool(n)


def read_file(path: str | Path) -> list[Template]:
    """Templates from a TOML file (``[[template]]`` tables: code, signature, category,
    body, name, and optionally ``status = "approved"``: already approved by the carrier,
    still judged by the checks when loaded). ConfigError names file and entry."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read templates: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    entries = doc.get("template", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{p}: template: use [[template]] tables")
    out: list[Template] = []
    for i, entry in enumerate(entries):
        try:
            t = msgspec.convert(entry, Template)
            compile_template(t)
        except (msgspec.ValidationError, ValueError) as e:
            raise ConfigError(f"{p}: template[{i}]: {e}") from e
        out.append(t)
    return out


async def load_file(redis: Redis, keys: Keys, path: str | Path, *, classes: list[str],
                    engine: PolicyEngine | None, link_sample: str = "",
                    now: float | None = None) -> list[Template]:
    """Save every template of a file; those marked approved are approved (judged)."""
    out: list[Template] = []
    for t in read_file(path):
        wanted = t.status
        try:
            saved = await save(redis, keys, t, classes=classes, now=now)
        except ValueError as e:
            raise ConfigError(f"{path}: template {t.code!r}: {e}") from e
        if wanted == "approved" and saved.status != "approved":
            saved = await set_status(redis, keys, t.code, "approved", engine=engine,
                                     link_sample=link_sample, now=now)
        elif wanted == "rejected" and saved.status != "rejected":
            saved = await set_status(redis, keys, t.code, "rejected", reason=t.reason,
                                     now=now)
        out.append(saved)
    return out


class TemplateCache:
    """Compiled templates by code, re-read from Redis at most every ``ttl_s``."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: float = 2.0) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._by_code: dict[str, tuple[float, Compiled | None]] = {}

    async def load(self, codes: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        stale = sorted({c for c in codes if c and (
            c not in self._by_code or now - self._by_code[c][0] >= self.ttl_s)})
        if not stale:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in stale:
                pipe.hgetall(self.keys.template(c))
            replies = await pipe.execute()
        for c, raw in zip(stale, replies, strict=True):
            compiled: Compiled | None = None
            if raw:
                try:
                    compiled = compile_template(_from_hash(raw))
                except (ValueError, msgspec.ValidationError):
                    compiled = None
            self._by_code[c] = (now, compiled)

    def get(self, code: str) -> Compiled | None:
        hit = self._by_code.get(code)
        return hit[1] if hit is not None else None
