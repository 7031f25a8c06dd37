"""Webhook endpoint routes: /admin/webhooks... (admin role only), the same functions as
`gatewayd webhooks ...` (gatewayd/webhooks/admin.py): list, add, remove, pause, resume,
test, dead letters, replay."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.accounts.store import AccountError
from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.http.accounts import _body, _error, _json
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys
from gatewayd.webhooks import admin


class WebhookApi:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg

    async def list(self, request: web.Request) -> web.Response:
        return _json(200, {"endpoints": await admin.listing(self.cfg, self.redis, self.keys)})

    async def add(self, request: web.Request) -> web.Response:
        spec = await _body(request)
        if not isinstance(spec.get("name"), str):
            raise AccountError("invalid", "name: required, a string")
        parsed = await admin.add(self.cfg, self.redis, self.keys, spec)
        row = next(r for r in await admin.listing(self.cfg, self.redis, self.keys)
                   if r["name"] == parsed.name)
        return _json(201, row)

    async def remove(self, request: web.Request) -> web.Response:
        await admin.remove(self.cfg, self.redis, self.keys, _name(request))
        return _json(200, {"removed": _name(request)})

    async def pause(self, request: web.Request) -> web.Response:
        await admin.pause(self.cfg, self.redis, self.keys, _name(request), True)
        return _json(200, {"name": _name(request), "paused": True})

    async def resume(self, request: web.Request) -> web.Response:
        await admin.pause(self.cfg, self.redis, self.keys, _name(request), False)
        return _json(200, {"name": _name(request), "paused": False})

    async def test(self, request: web.Request) -> web.Response:
        ep = await admin.must(self.cfg, self.redis, self.keys, _name(request))
        return _json(200, await admin.test_fire(ep, self.cfg))

    async def dead(self, request: web.Request) -> web.Response:
        rows = await admin.dead(self.cfg, self.redis, self.keys, _name(request),
                                _count(request))
        return _json(200, {"dead": rows})

    async def replay(self, request: web.Request) -> web.Response:
        moved = await admin.replay(self.cfg, self.redis, self.keys, _name(request),
                                   _count(request))
        return _json(200, {"replayed": moved})


def _name(request: web.Request) -> str:
    return request.match_info["name"]


def _count(request: web.Request) -> int:
    raw = request.query.get("count", "0")
    if not raw.isdigit() or int(raw) > 1_000_000:
        raise AccountError("invalid", "count: 0 (all) to 1000000")
    return int(raw)


def register(app: web.Application, api: WebhookApi | None) -> None:
    """The routes (always registered, so /openapi.json matches; without the API, 404)."""
    r = app.router

    def h(name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if api is None:
                return _error(404, "not_enabled", "webhook admin is not served here")
            try:
                resp: web.StreamResponse = await getattr(api, name)(request)
            except admin.NotFound as e:
                return _error(404, "not_found", str(e))
            except AccountError as e:
                return _error(422, e.code, str(e))
            except ConfigError as e:
                return _error(422, "invalid", str(e))
            return resp
        return handler

    r.add_get("/admin/webhooks", h("list"), allow_head=False)
    r.add_post("/admin/webhooks", h("add"))
    r.add_delete("/admin/webhooks/{name}", h("remove"))
    r.add_post("/admin/webhooks/{name}/pause", h("pause"))
    r.add_post("/admin/webhooks/{name}/resume", h("resume"))
    r.add_post("/admin/webhooks/{name}/test", h("test"))
    r.add_get("/admin/webhooks/{name}/dead", h("dead"), allow_head=False)
    r.add_post("/admin/webhooks/{name}/replay", h("replay"))
