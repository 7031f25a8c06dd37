"""Templates, campaigns and conversions over the API (routes registered by HttpServer).

``/v1/templates`` (list, put, get, delete), ``/admin/templates/{code}/approve|reject``,
``/v1/campaigns`` (create, list, get with its funnel, upload recipients, start, pause,
resume, cancel, the HTML report) and ``/v1/conversions``. Every answer is JSON except the
report; errors use the API's ``{"error": {"code", "message"}}`` shape: 404 unknown,
409 conflict (an id taken, a move its status does not allow), 422 invalid.

Uploads are read as a stream (``text/csv``, or JSON lines as ``application/x-ndjson``)
and validated row by row, so a million-recipient upload never sits in memory; the
answer counts accepted and refused rows and lists the first 100 refusals with line,
field and reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from gatewayd.campaigns import funnel, model, registry, report
from gatewayd.campaigns.model import Campaign, Variant
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import CODE_RE, Template, compile_template
from gatewayd.config import Config
from gatewayd.http.limits import chunks, read_body
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

MAX_CONVERSIONS = 1000


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(model.full(body)),
                        content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message}})


class CampaignApi:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config,
                 policy: Callable[[], PolicyEngine | None]) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.policy = policy
        self.classes = list(cfg.queue.classes)
        lk = cfg.links
        self.link_sample = (lk.base_url.rstrip("/") + "/" + "x" * (lk.random_chars + 4)
                            if lk.enabled else "")

    # Templates ------------------------------------------------------------------------
    async def list_templates(self, request: web.Request) -> web.Response:
        return _json(200, {"templates": await registry.list_all(self.redis, self.keys)})

    async def put_template(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]
        body = await _body(request, self.cfg.http.body_timeout_s)
        if isinstance(body, web.Response):
            return body
        try:
            t = msgspec.convert({**body, "code": code, "status": "pending"}, Template)
            saved = await registry.save(self.redis, self.keys, t, classes=self.classes)
        except (msgspec.ValidationError, ValueError) as e:
            return _error(422, "invalid", str(e))
        return _json(200, saved)

    async def get_template(self, request: web.Request) -> web.Response:
        t = await registry.get(self.redis, self.keys, request.match_info["code"])
        if t is None:
            return _error(404, "not_found", "no such template")
        variables = [{"name": v.name, "type": v.spec} for v in compile_template(t).variables]
        return _json(200, {**msgspec.structs.asdict(t), "variables": variables})

    async def delete_template(self, request: web.Request) -> web.Response:
        if not await registry.delete(self.redis, self.keys, request.match_info["code"]):
            return _error(404, "not_found", "no such template")
        return _json(200, {"deleted": True})

    async def approve_template(self, request: web.Request) -> web.Response:
        return await self._status(request, "approved")

    async def reject_template(self, request: web.Request) -> web.Response:
        return await self._status(request, "rejected")

    async def _status(self, request: web.Request, status: str) -> web.Response:
        reason = ""
        if status == "rejected" and request.can_read_body:
            body = await _body(request, self.cfg.http.body_timeout_s)
            if isinstance(body, web.Response):
                return body
            reason = str(body.get("reason", ""))[:200]
        try:
            t = await registry.set_status(self.redis, self.keys, request.match_info["code"],
                                          status, reason=reason, engine=self.policy(),
                                          link_sample=self.link_sample)
        except KeyError:
            return _error(404, "not_found", "no such template")
        return _json(200, t)

    # Campaigns ------------------------------------------------------------------------
    async def _templates(self, codes: list[str]) -> TemplateCache:
        cache = TemplateCache(self.redis, self.keys, ttl_s=0.0)
        await cache.load(codes)
        return cache

    async def create(self, request: web.Request) -> web.Response:
        body = await _body(request, self.cfg.http.body_timeout_s)
        if isinstance(body, web.Response):
            return body
        data = dict(body)
        if "template" in data and "variants" not in data:
            data["variants"] = [{"name": "A", "template": data.pop("template")}]
        data.setdefault("id", f"c{time.time_ns() // 1_000_000:x}")
        try:
            c = msgspec.convert(data, Campaign)
        except msgspec.ValidationError as e:
            return _error(422, "invalid", str(e))
        cache = await self._templates([v.template for v in c.variants])
        try:
            created = await model.create(self.redis, self.keys, c,
                                         {v.template: cache.get(v.template) for v in c.variants})
        except ValueError as e:
            return _error(422, "invalid", str(e))
        except FileExistsError:
            return _error(409, "exists", f"campaign {c.id} exists")
        return _json(201, created)

    async def list_campaigns(self, request: web.Request) -> web.Response:
        return _json(200, {"campaigns": await model.list_all(self.redis, self.keys)})

    async def _campaign(self, request: web.Request) -> Campaign | web.Response:
        cid = request.match_info["id"]
        c = await model.get(self.redis, self.keys, cid) if model.ID_RE.fullmatch(cid) else None
        if c is None:
            return _error(404, "not_found", "no such campaign")
        return c

    async def get(self, request: web.Request) -> web.Response:
        c = await self._campaign(request)
        if isinstance(c, web.Response):
            return c
        return _json(200, await describe(self.redis, self.keys, c))

    async def report(self, request: web.Request) -> web.Response:
        c = await self._campaign(request)
        if isinstance(c, web.Response):
            return c
        counts = await funnel.read(self.redis, self.keys, c.id)
        return web.Response(text=report.render(c, counts), content_type="text/html",
                            charset="utf-8", headers={"Cache-Control": "no-store"})

    async def upload(self, request: web.Request) -> web.Response:
        c = await self._campaign(request)
        if isinstance(c, web.Response):
            return c
        if c.status != "draft":
            return _error(409, "conflict", f"campaign {c.id} is {c.status}; recipients are "
                                           "uploaded to a draft")
        if c.source != "upload":
            return _error(409, "conflict", f"campaign {c.id} reads {c.source}")
        ctype = request.content_type
        fmt = "csv" if ctype == "text/csv" else "jsonl" if ctype in (
            "application/x-ndjson", "application/jsonl", "application/json-lines") else ""
        if not fmt:
            return _error(415, "unsupported_media_type",
                          "send text/csv or application/x-ndjson (JSON lines)")
        cache = await self._templates([v.template for v in c.variants])
        templates = {v.template: cache.get(v.template) for v in c.variants}
        missing = [k for k, t in templates.items() if t is None]
        if missing:
            return _error(409, "conflict", f"template {missing[0]} is gone")
        res = await model.upload(self.redis, self.keys, c,
                                 {k: t for k, t in templates.items() if t is not None},
                                 chunks(request, self.cfg.http.body_timeout_s),
                                 fmt="csv" if fmt == "csv" else "jsonl",
                                 link_sample=self.link_sample,
                                 max_segments=self.cfg.queue.max_segments)
        return _json(200, res)

    async def start(self, request: web.Request) -> web.Response:
        start_at = 0.0
        if request.can_read_body:
            body = await _body(request, self.cfg.http.body_timeout_s)
            if isinstance(body, web.Response):
                return body
            value = body.get("start_at", 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return _error(422, "invalid", "start_at: Unix seconds")
            start_at = float(value)
        return await self._move(request, "start", start_at=start_at)

    async def pause(self, request: web.Request) -> web.Response:
        return await self._move(request, "pause", reason="api")

    async def resume(self, request: web.Request) -> web.Response:
        return await self._move(request, "resume")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._move(request, "cancel", reason="api")

    async def _move(self, request: web.Request, action: str, **kw: Any) -> web.Response:
        cid = request.match_info["id"]
        if not model.ID_RE.fullmatch(cid):
            return _error(404, "not_found", "no such campaign")
        try:
            c = await model.change(self.redis, self.keys, cid, action, **kw)
        except KeyError:
            return _error(404, "not_found", "no such campaign")
        except ValueError as e:
            return _error(409, "conflict", str(e))
        return _json(200, c)

    # Conversions ----------------------------------------------------------------------
    async def conversions(self, request: web.Request) -> web.Response:
        body = await _body(request, self.cfg.http.body_timeout_s)
        if isinstance(body, web.Response):
            return body
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, str) and CODE_RE.fullmatch(i) for i in ids):
            return _error(422, "invalid", "ids: a list of message ids")
        if len(ids) > MAX_CONVERSIONS:
            return _error(413, "too_many_items", f"at most {MAX_CONVERSIONS} ids a request")
        results = await funnel.convert(self.redis, self.keys, ids, time.time())
        return _json(200, {"results": [{"id": i, "result": r}
                                       for i, r in zip(ids, results, strict=True)]})


async def describe(redis: Redis, keys: Keys, c: Campaign) -> dict[str, Any]:
    """A campaign with its funnel: totals and rates, per variant, and the A/B test."""
    counts = await funnel.read(redis, keys, c.id)
    names = [v.name for v in c.variants]
    return {
        "campaign": c,
        "funnel": funnel.summarise(counts),
        "variants": {v: funnel.summarise(counts, v) for v in names},
        "ab": funnel.ab(counts, names) if len(names) > 1 else None,
    }


async def _body(request: web.Request, timeout_s: float) -> dict[str, Any] | web.Response:
    try:
        doc = msgspec.json.decode(await read_body(request, timeout_s))
    except msgspec.DecodeError as e:
        return _error(400, "bad_json", f"body is not valid JSON: {e}")
    except RecursionError:
        return _error(400, "bad_json", "body is nested too deep")
    if not isinstance(doc, dict):
        return _error(400, "bad_json", "send a JSON object")
    return doc


def register(app: web.Application, api: CampaignApi | None) -> None:
    """The routes (always registered, so /openapi.json matches; without an api, 404)."""
    r = app.router

    def h(name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if api is None:
                return _error(404, "not_enabled", "templates and campaigns are not served here")
            resp: web.StreamResponse = await getattr(api, name)(request)
            return resp
        return handler

    r.add_get("/v1/templates", h("list_templates"), allow_head=False)
    r.add_put("/v1/templates/{code}", h("put_template"))
    r.add_get("/v1/templates/{code}", h("get_template"), allow_head=False)
    r.add_delete("/v1/templates/{code}", h("delete_template"))
    r.add_post("/admin/templates/{code}/approve", h("approve_template"))
    r.add_post("/admin/templates/{code}/reject", h("reject_template"))
    r.add_post("/v1/campaigns", h("create"))
    r.add_get("/v1/campaigns", h("list_campaigns"), allow_head=False)
    r.add_get("/v1/campaigns/{id}", h("get"), allow_head=False)
    r.add_get("/v1/campaigns/{id}/report", h("report"), allow_head=False)
    r.add_post("/v1/campaigns/{id}/recipients", h("upload"))
    for action in ("start", "pause", "resume", "cancel"):
        r.add_post(f"/v1/campaigns/{{id}}/{action}", h(action))
    r.add_post("/v1/conversions", h("conversions"))


__all__ = ["CampaignApi", "Variant", "describe", "register"]
