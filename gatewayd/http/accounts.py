"""Account routes: /admin/accounts... (admin role) and /v1/account... (an account's own
key): create, list, show, usage, add/revoke key, set limits, suspend/resume."""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
from aiohttp import web

from gatewayd.accounts.cache import AccountCache, Principal
from gatewayd.accounts.model import Account, Limits
from gatewayd.accounts.store import AccountError, AccountStore, public
from gatewayd.config import Config
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

# The request's account (set by the auth middleware for an account's key; absent for admin).
PRINCIPAL = web.RequestKey("principal", Principal)

_STATUS = {"not_found": 404, "exists": 409, "invalid": 422}

# Routes an account's key may use (its sending role); every other needs the admin role.
ACCOUNT_ROUTES = frozenset({
    ("POST", "/v1/messages"), ("GET", "/v1/messages/{id}"),
    ("GET", "/v1/account"), ("GET", "/v1/account/usage"),
    ("GET", "/v1/optouts/{number}"), ("POST", "/v1/optouts/{number}"),
})


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(body),
                        content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message}})


class AccountApi:
    """The accounts' store and the cache the auth middleware asks (per process)."""

    def __init__(self, redis: Redis, keys: Keys, cfg: Config, ttl_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.store = AccountStore(redis, keys, list(cfg.queue.classes))
        self.cache = AccountCache(self.store, ttl_s)

    async def lookup(self, key: str) -> Principal | None:
        return await self.cache.lookup(key)

    async def _view(self, account: Account) -> dict[str, Any]:
        out = public(account, await self.store.last_used(account.tenant))
        out["webhooks"] = await self.store.webhooks(account.tenant, self.cfg)
        return out

    # Admin ----------------------------------------------------------------------------
    async def list(self, request: web.Request) -> web.Response:
        return _json(200, {"accounts": [public(a) for a in await self.store.all()]})

    async def create(self, request: web.Request) -> web.Response:
        body = await _body(request)
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise AccountError("invalid", "tenant: required, a string")
        limits = _limits(body.get("limits") or {})
        account = await self.store.create(tenant, limits)
        out: dict[str, Any] = {"account": public(account)}
        if body.get("key", True):
            entry, key = await self.store.add_key(tenant, label="first")
            out["key"] = {"id": entry.id, "key": key}
            out["account"] = public(await self.store.must(tenant))
        return _json(201, out)

    async def show(self, request: web.Request) -> web.Response:
        return _json(200, await self._view(await self.store.must(_tenant(request))))

    async def usage(self, request: web.Request) -> web.Response:
        tenant = _tenant(request)
        await self.store.must(tenant)
        return _json(200, await self.store.usage(tenant, _days(request)))

    async def add_key(self, request: web.Request) -> web.Response:
        body = await _body(request)
        expires = body.get("expires_at", 0) or 0
        if not isinstance(expires, (int, float)) or not math.isfinite(expires) or expires < 0:
            raise AccountError("invalid", "expires_at: Unix seconds")
        label = body.get("label", "")
        entry, key = await self.store.add_key(_tenant(request), expires_at=float(expires),
                                              label=str(label))
        return _json(201, {"id": entry.id, "key": key, "expires_at": entry.expires_at or None})

    async def revoke_key(self, request: web.Request) -> web.Response:
        await self.store.revoke_key(_tenant(request), request.match_info["key_id"])
        return _json(200, {"revoked": request.match_info["key_id"]})

    async def set_limits(self, request: web.Request) -> web.Response:
        body = await _body(request)
        account = await self.store.set_limits(_tenant(request), body)
        return _json(200, public(account))

    async def suspend(self, request: web.Request) -> web.Response:
        return _json(200, public(await self.store.suspend(_tenant(request), True)))

    async def resume(self, request: web.Request) -> web.Response:
        return _json(200, public(await self.store.suspend(_tenant(request), False)))

    # An account's own ---------------------------------------------------------------
    async def me(self, request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return _error(404, "no_account", "this key is not an account's (an admin key)")
        return _json(200, await self._view(await self.store.must(principal.tenant)))

    async def my_usage(self, request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return _error(404, "no_account", "this key is not an account's (an admin key)")
        return _json(200, await self.store.usage(principal.tenant, _days(request)))


def _tenant(request: web.Request) -> str:
    return request.match_info["tenant"]


def _days(request: web.Request) -> int:
    raw = request.query.get("days", "7")
    if not raw.isdigit() or not 1 <= int(raw) <= 40:
        raise AccountError("invalid", "days: 1-40")
    return int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise AccountError("invalid", "body: not a JSON object") from None
    if not isinstance(doc, dict):
        raise AccountError("invalid", "body: not a JSON object")
    return doc


def _limits(data: Any) -> Limits:
    try:
        return msgspec.convert(data, Limits)
    except msgspec.ValidationError as e:
        raise AccountError("invalid", f"limits: {e}") from None


def register(app: web.Application, api: AccountApi | None) -> None:
    """The routes (always registered, so /openapi.json matches; without accounts, 404)."""
    r = app.router

    def h(name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if api is None:
                return _error(404, "not_enabled", "accounts are not served here")
            try:
                resp: web.StreamResponse = await getattr(api, name)(request)
            except AccountError as e:
                return _error(_STATUS.get(e.code, 422), e.code, str(e))
            return resp
        return handler

    r.add_get("/admin/accounts", h("list"), allow_head=False)
    r.add_post("/admin/accounts", h("create"))
    r.add_get("/admin/accounts/{tenant}", h("show"), allow_head=False)
    r.add_get("/admin/accounts/{tenant}/usage", h("usage"), allow_head=False)
    r.add_post("/admin/accounts/{tenant}/keys", h("add_key"))
    r.add_delete("/admin/accounts/{tenant}/keys/{key_id}", h("revoke_key"))
    r.add_patch("/admin/accounts/{tenant}/limits", h("set_limits"))
    r.add_post("/admin/accounts/{tenant}/suspend", h("suspend"))
    r.add_post("/admin/accounts/{tenant}/resume", h("resume"))
    r.add_get("/v1/account", h("me"), allow_head=False)
    r.add_get("/v1/account/usage", h("my_usage"), allow_head=False)


def retry_after(resets_at: float) -> str:
    return str(max(1, math.ceil(resets_at - time.time())))
