"""Accounts in Redis: create, keys, limits, suspend; the lookup of a key; usage reads.

Changes are read-modify-write of one account's JSON (admin operations are rare and made
by one operator at a time); the key index (digest -> tenant and key id) is written
beside it so a request's key resolves with one HGET.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, cast

import msgspec

from gatewayd.accounts.model import TENANT_RE, Account, ApiKey, Limits, check_limits
from gatewayd.accounts.quota import day_of, month_of
from gatewayd.config import Config
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

_dec = msgspec.json.Decoder(Account)
KEY_PREFIX = "gwk_"


class AccountError(ValueError):
    """A request the store refuses: ``code`` is not_found, exists or invalid."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the key itself): ``gwk_<id>_<secret>``; the id is not secret."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def public(account: Account, used: dict[str, str] | None = None) -> dict[str, Any]:
    """An account as the API shows it: key ids and times, never digests."""
    out: dict[str, Any] = msgspec.to_builtins(account)
    out["keys"] = [{"id": k.id, "created_at": k.created_at,
                    "expires_at": k.expires_at or None, "label": k.label,
                    "last_used_at": float((used or {}).get(k.id, 0)) or None}
                   for k in account.keys]
    out["limits"] = msgspec.to_builtins(account.limits)
    out["suspended"] = account.suspended
    return out


class AccountStore:
    def __init__(self, redis: Redis, keys: Keys, classes: list[str]) -> None:
        self.redis = redis
        self.keys = keys
        self.classes = classes

    async def get(self, tenant: str) -> Account | None:
        raw = await self.redis.hget(self.keys.accounts, tenant)
        return _dec.decode(raw) if raw else None

    async def must(self, tenant: str) -> Account:
        account = await self.get(tenant)
        if account is None:
            raise AccountError("not_found", f"no account {tenant!r}")
        return account

    async def all(self) -> list[Account]:
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.accounts))
        return [_dec.decode(v) for _, v in sorted(raw.items())]

    async def last_used(self, tenant: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.keys.account_used(tenant)))

    async def _put(self, account: Account) -> None:
        await self.redis.hset(self.keys.accounts, account.tenant,
                              msgspec.json.encode(account).decode())

    async def create(self, tenant: str, limits: Limits | None = None,
                     now: float | None = None) -> Account:
        if not TENANT_RE.fullmatch(tenant):
            raise AccountError("invalid", "tenant: 1-64 characters of A-Z a-z 0-9 _ . -")
        limits = limits or Limits()
        self._check(limits)
        account = Account(tenant=tenant, created_at=now or time.time(), limits=limits)
        created = await self.redis.hsetnx(self.keys.accounts, tenant,
                                          msgspec.json.encode(account).decode())
        if not created:
            raise AccountError("exists", f"account {tenant!r} exists")
        return account

    async def add_key(self, tenant: str, *, expires_at: float = 0.0, label: str = "",
                      now: float | None = None) -> tuple[ApiKey, str]:
        """A new key (shown once, here): several may be live at once, for rotation."""
        account = await self.must(tenant)
        key_id, key = new_key()
        entry = ApiKey(id=key_id, digest=digest_of(key), created_at=now or time.time(),
                       expires_at=expires_at, label=label[:64])
        account.keys.append(entry)
        await self.redis.hset(self.keys.account_keys, entry.digest, f"{tenant} {key_id}")
        await self._put(account)
        return entry, key

    async def revoke_key(self, tenant: str, key_id: str) -> None:
        account = await self.must(tenant)
        entry = account.key(key_id)
        if entry is None:
            raise AccountError("not_found", f"account {tenant!r} has no key {key_id!r}")
        account.keys.remove(entry)
        await self._put(account)  # the account first: a key it no longer lists is refused
        await self.redis.hdel(self.keys.account_keys, entry.digest)
        await self.redis.hdel(self.keys.account_used(tenant), key_id)

    async def set_limits(self, tenant: str, changes: dict[str, Any]) -> Account:
        """Merge ``changes`` (Limits fields) into the account's limits."""
        account = await self.must(tenant)
        merged = {**msgspec.to_builtins(account.limits), **changes}
        try:
            limits = msgspec.convert(merged, Limits)
        except msgspec.ValidationError as e:
            raise AccountError("invalid", f"limits: {e}") from None
        self._check(limits)
        account.limits = limits
        await self._put(account)
        return account

    async def suspend(self, tenant: str, suspended: bool = True) -> Account:
        account = await self.must(tenant)
        account.suspended = suspended
        await self._put(account)
        return account

    async def resolve(self, digest: str) -> tuple[Account, ApiKey] | None:
        """The account and key of a key's digest, or None (unknown or revoked)."""
        ref = await self.redis.hget(self.keys.account_keys, digest)
        if not ref:
            return None
        tenant, _, key_id = str(ref).partition(" ")
        account = await self.get(tenant)
        entry = account.key(key_id) if account is not None else None
        if account is None or entry is None or entry.digest != digest:
            return None
        return account, entry

    async def touch(self, tenant: str, used: dict[str, float]) -> None:
        if used:
            await self.redis.hset(self.keys.account_used(tenant),
                                  mapping={k: f"{v:.3f}" for k, v in used.items()})

    async def usage(self, tenant: str, days: int = 7,
                    now: float | None = None) -> dict[str, Any]:
        """Counts by UTC day (newest first) and this month: {"sent": {category: n}, ...}."""
        now = now or time.time()
        days = max(1, min(days, 40))
        stamps = [day_of(now - i * 86400) for i in range(days)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in stamps:
                pipe.hgetall(self.keys.account_day(tenant, d))
            pipe.hgetall(self.keys.account_month(tenant, month_of(now)))
            res = cast(list[dict[str, str]], await pipe.execute())
        return {"tenant": tenant,
                "days": [{"day": f"{d[:4]}-{d[4:6]}-{d[6:]}", **_nest(r)}
                         for d, r in zip(stamps, res[:-1], strict=True)],
                "month": {"month": f"{month_of(now)[:4]}-{month_of(now)[4:]}",
                          **_nest(res[-1])}}

    async def webhooks(self, tenant: str, cfg: Config) -> list[dict[str, Any]]:
        """The tenant's webhook endpoints (gatewayd.webhooks routes events by tenant):
        linked, not copied; managed with `gatewayd webhooks add --tenant`."""
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.webhook_endpoints))
        specs: dict[str, dict[str, Any]] = {}
        for name, text in raw.items():
            try:
                spec = msgspec.json.decode(text)
            except msgspec.DecodeError:
                continue
            if isinstance(spec, dict):
                specs[name] = {**spec, "source": "redis"}
        for ep in cfg.webhooks.endpoints:  # the config wins, as in the sender
            specs[ep.name] = {**msgspec.to_builtins(ep), "source": "config"}
        return [{"name": name, "url": s.get("url", ""), "events": s.get("events", []),
                 "source": s["source"]}
                for name, s in sorted(specs.items()) if s.get("tenant") in (tenant, "*")]

    def _check(self, limits: Limits) -> None:
        try:
            check_limits(limits, self.classes)
        except ValueError as e:
            raise AccountError("invalid", f"limits.{e}") from None


def _nest(flat: dict[str, str]) -> dict[str, dict[str, int]]:
    """{"sent:otp": "3"} -> {"sent": {"otp": 3}}; zero counts (refunds) are left out."""
    out: dict[str, dict[str, int]] = {}
    for field, value in flat.items():
        what, _, cat = str(field).partition(":")
        if int(value):
            out.setdefault(what, {})[cat] = int(value)
    return out
