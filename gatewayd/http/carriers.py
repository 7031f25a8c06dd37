"""Carrier control routes: /admin/carriers... (admin role only), the same functions as
`gatewayd carrier ...` (gatewayd/control/admin.py): list, show, suspend, resume, restart
binds, tps and window (PATCH). Every daemon sharing the Redis applies a change within
about a second."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.accounts.store import AccountError
from gatewayd.config import Config
from gatewayd.control import admin
from gatewayd.http.accounts import _body, _error, _json
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys


class CarrierApi:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg

    async def list(self, request: web.Request) -> web.Response:
        return _json(200, {"carriers": await admin.listing(self.cfg, self.redis, self.keys)})

    async def show(self, request: web.Request) -> web.Response:
        return _json(200, await admin.show(self.cfg, self.redis, self.keys, _name(request)))

    async def suspend(self, request: web.Request) -> web.Response:
        return _json(200, await admin.suspend(self.cfg, self.redis, self.keys, _name(request),
                                              True))

    async def resume(self, request: web.Request) -> web.Response:
        return _json(200, await admin.suspend(self.cfg, self.redis, self.keys, _name(request),
                                              False))

    async def restart(self, request: web.Request) -> web.Response:
        return _json(200, await admin.restart(self.cfg, self.redis, self.keys, _name(request)))

    async def tune(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json(200, await admin.tune(self.cfg, self.redis, self.keys, _name(request),
                                           body))


def _name(request: web.Request) -> str:
    return request.match_info["name"]


def register(app: web.Application, api: CarrierApi | None) -> None:
    """The routes (always registered, so /openapi.json matches; without the API, 404)."""
    r = app.router

    def h(name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if api is None:
                return _error(404, "not_enabled", "carrier control is not served here")
            try:
                resp: web.StreamResponse = await getattr(api, name)(request)
            except admin.NotFound as e:
                return _error(404, "not_found", str(e))
            except admin.Invalid as e:
                return _error(422, "invalid", str(e))
            except AccountError as e:  # the body is not a JSON object
                return _error(422, e.code, str(e))
            return resp
        return handler

    r.add_get("/admin/carriers", h("list"), allow_head=False)
    r.add_get("/admin/carriers/{name}", h("show"), allow_head=False)
    r.add_patch("/admin/carriers/{name}", h("tune"))
    r.add_post("/admin/carriers/{name}/suspend", h("suspend"))
    r.add_post("/admin/carriers/{name}/resume", h("resume"))
    r.add_post("/admin/carriers/{name}/restart", h("restart"))
