"""The HTTP API: message intake, status, opt-out admin, reload, health and /metrics.

Embedded with ``aiohttp.web.AppRunner`` + ``TCPSite`` (not ``run_app``) so the daemon owns
the loop, the signals and the shutdown order.

Decisions (also in the README's operations section):

* Auth: ``Authorization: Bearer <key>``. Two roles: admin keys (the config holds their
  SHA-256 hex digests, http.api_keys; the presented key is hashed and compared with
  ``hmac.compare_digest`` against *every* configured digest, no early exit, so timing
  says nothing about which matched), and accounts' keys (``gwk_...``, gatewayd.accounts,
  looked up in a one-second in-process cache): the sending role, limited to
  gatewayd.http.accounts.ACCOUNT_ROUTES, sending as its account's tenant only.
  /v1/* and /admin/* need a key; /metrics, /healthz, /readyz[/carriers] and /openapi.json
  do not (Prometheus, systemd and load-balancer probes carry no secrets and read nothing
  personal).
* No keys configured: the API is open only when the listener is loopback (a warning is
  logged at start). On any other address without keys the server still starts, so
  metrics and probes keep working, but every authenticated route answers 401 (fail
  closed) and an error is logged at start.
* A batch with invalid items: the valid items ARE queued (Backend.enqueue validates and
  queues in one pass, exactly like the stream path) and the answer is 422 with one
  result per item: ``id``/``duplicate`` for queued items, ``errors`` for the others. A
  client fixes and resends only the items with errors; ``idempotency_key`` makes even a
  blind resend of the whole batch safe.
* Every error body is JSON: ``{"error": {"code": ..., "message": ...}}``, including
  aiohttp's own 404/405/413 and unexpected 500s.
* ``drain()`` (called by the daemon on SIGTERM before it stops reading the queues) makes
  intake answer 503 and /readyz report "draining", so a load balancer moves traffic away
  while the server still answers status, probes and /metrics until ``stop()``.
* Requests are not access-logged at INFO (high volume, and paths carry phone numbers);
  ``gatewayd_http_requests_total`` counts them and DEBUG logs each one. Malformed and
  unauthorized requests are logged at WARNING, rate-limited, without a traceback
  (gatewayd.http.limits.RateLimitedLog), aiohttp's own parser errors included.
* Limits (gatewayd.http.limits): open connections, request heads, bodies, idle
  keep-alive. Redis unreachable or the intake's connections all busy past their wait
  (the ``unavailable`` exceptions): 503 with ``Retry-After``, never 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gatewayd.accounts.cache import Principal
from gatewayd.accounts.quota import QuotaExceeded
from gatewayd.accounts.store import KEY_PREFIX
from gatewayd.consent.records import encode
from gatewayd.control import reload as reloading
from gatewayd.http import accounts as account_routes
from gatewayd.http import campaigns as campaign_routes
from gatewayd.http import carriers as carrier_routes
from gatewayd.http import webhooks as webhook_routes
from gatewayd.http.answers import DRAINING, Answer, err, remote_of
from gatewayd.http.backend import (
    DUPLICATE_ID,
    QUEUE_FULL,
    Backend,
    EnqueueResult,
    OptoutAction,
)
from gatewayd.http.fastlane import TURN_REQUESTS, FastLanes
from gatewayd.http.limits import BodyTimeout, ConnectionCap, RateLimitedLog, read_body
from gatewayd.http.openapi import openapi_spec
from gatewayd.ops import metrics
from gatewayd.store.connection import denied

log = logging.getLogger("gatewayd.http")

MAX_ITEMS: Final = 1000
_NUMBER_RE: Final = re.compile(r"\+?[1-9][0-9]{5,14}")
_SCOPE_RE: Final = re.compile(r"[^\x00-\x1f|]{1,64}")
_CATEGORY_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_PUBLIC: Final = frozenset({"/metrics", "/healthz", "/readyz", "/readyz/carriers",
                            "/openapi.json"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host means every interface."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"http.listen {listen!r}: use host:port, e.g. 127.0.0.1:8780")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hash_key(key: str) -> str:
    """The digest stored in http.api_keys (what `gatewayd hash-key KEY` prints)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json",
        headers=headers,
    )


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
          **extra: Any) -> web.Response:
    return _json(*err(status, code, message, headers, **extra))


class _ParserLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's request handler logs each request it cannot parse with a traceback
    (``logger.exception``): here one rate-limited WARNING line instead."""

    def __init__(self, logger: logging.Logger, limited: RateLimitedLog) -> None:
        super().__init__(logger, {})
        self.limited = limited

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        what = f"{type(exc).__name__}: {exc}" if exc is not None else str(msg)
        what = " ".join(what.split())[:300]  # one line, bounded: the bytes are the client's
        self.limited.warning("malformed", f"http: malformed request: {what}")


_AIOHTTP_CODES: Final = {
    404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request",
}


class HttpServer:
    def __init__(
        self,
        listen: str,
        backend: Backend,
        *,
        api_key_hashes: list[str],
        max_body_bytes: int,
        registry: CollectorRegistry = metrics.REGISTRY,
        classes: list[str] | None = None,
        campaigns: campaign_routes.CampaignApi | None = None,
        accounts: account_routes.AccountApi | None = None,
        webhooks: webhook_routes.WebhookApi | None = None,
        carriers: carrier_routes.CarrierApi | None = None,
        max_connections: int = 1024,
        idle_timeout_s: float = 15.0,
        body_timeout_s: float = 30.0,
        unavailable: tuple[type[BaseException], ...] = (),
        reuse_port: bool = False,
        fast_intake: bool = True,
        turn_requests: int = TURN_REQUESTS,
    ) -> None:
        self.host, self._port = parse_listen(listen)
        self.reuse_port = reuse_port  # http.workers: processes sharing the port
        # http.fast_intake: POST /v1/messages served by gatewayd.http.fastlane (read
        # for each new connection; the config key itself changes with a restart).
        self.fast_intake = fast_intake
        self.turn_requests = turn_requests  # http.turn_requests (0: no bound)
        self._lanes: FastLanes | None = None  # once started
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        # Exceptions meaning "the store cannot answer now" (Redis away, or the intake's
        # connections all busy past their wait): 503 + Retry-After, not 500.
        self.unavailable = unavailable
        self.limited = RateLimitedLog(log)
        self.campaigns = campaigns
        self.accounts = accounts
        self.webhooks = webhooks
        self.carriers = carriers
        self.backend = backend
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.classes = list(classes) if classes else None  # for /openapi.json only
        self._hashes = [h.lower().encode("ascii") for h in api_key_hashes]
        self.keys_generation = 0  # bumped when the keys change (the fast lane's cache)
        self._loopback = is_loopback(self.host)
        self.draining = False
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._cap: ConnectionCap | None = None
        # (route, method, status) -> the metrics' children: labels() costs ~1 us a call
        self._observed: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # The registry's exposition -> what /metrics serves: the daemon adds its webhook
        # sender process's series (gatewayd.webhooks.process.SenderProcess.exposition).
        self.exposition: Callable[[bytes], Awaitable[bytes]] | None = None
        self.app = self._build_app()

    # Lifecycle ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (the real one when listen asked for port 0)."""
        if self._server is not None:
            for sock in getattr(self._server, "sockets", ()):
                return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        if not self._hashes:
            if self._loopback:
                log.warning("http: no api_keys configured; the API is open to local users",
                            extra={"listen": f"{self.host}:{self._port}"})
            else:
                log.error("http: no api_keys configured on a non-loopback listener: "
                          "every /v1 and /admin request is refused (add http.api_keys)",
                          extra={"listen": f"{self.host}:{self._port}"})
        # access_log=None: our middleware counts requests; see the module docstring.
        # keepalive_timeout: aiohttp closes a connection that has not sent a complete
        # request head this long after it opened or after its previous answer.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0,
                               keepalive_timeout=self.idle_timeout_s,
                               logger=_ParserLog(logging.getLogger("gatewayd.http.parser"),
                                                 self.limited))
        await runner.setup()
        assert runner.server is not None
        # Our own listener (not a TCPSite) so the connection cap wraps aiohttp's factory,
        # behind the fast lane.
        self._lanes = FastLanes(self, runner.server, self.turn_requests)
        self._cap = ConnectionCap(self._lanes, self.max_connections, "api")
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._cap,
                self.host or None, self._port, backlog=1024, reuse_address=True,
                reuse_port=self.reuse_port or None)
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("http: listening", extra={"listen": f"{self.host}:{self.port}"})

    def configure(self, *, api_key_hashes: list[str], max_body_bytes: int,
                  max_connections: int, idle_timeout_s: float, body_timeout_s: float) -> None:
        """New [http] limits and keys for the running listener (a config reload). The
        open connections keep their idle time-out; new ones get the new one. The
        listen address is the listener's: it changes with a restart only."""
        self._hashes = [h.lower().encode("ascii") for h in api_key_hashes]
        self.keys_generation += 1
        self.max_body_bytes = max_body_bytes
        # aiohttp reads both per request and per connection from these (no public
        # setter): the size cap of the next request's body, the next connection's
        # keep-alive time-out.
        self.app._client_max_size = max_body_bytes
        self.max_connections = max_connections
        if self._cap is not None:
            self._cap.limit = max_connections
        self.idle_timeout_s = idle_timeout_s
        if self._runner is not None and self._runner.server is not None:
            self._runner.server._kwargs["keepalive_timeout"] = idle_timeout_s
        self.body_timeout_s = body_timeout_s

    def drain(self) -> None:
        """Stop intake (503) and fail /readyz; everything else keeps answering."""
        self.draining = True

    async def stop(self) -> None:
        self.draining = True
        if self._server is not None:
            server, self._server = self._server, None
            server.close()  # no new connections; the open ones finish below
        # The fast lane's connections and aiohttp's, each given up to 5 s for the
        # requests in hand, side by side (not 5 s and then 5 s more).
        closing: list[Awaitable[Any]] = []
        if self._lanes is not None:
            closing.append(self._lanes.close(5.0))
        if self._runner is not None:
            runner, self._runner = self._runner, None
            closing.append(runner.cleanup())
        await asyncio.gather(*closing)

    # Application --------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body_bytes,
            middlewares=[self._front],
        )
        r = app.router
        r.add_post("/v1/messages", self.post_messages)
        r.add_get("/v1/messages/{id}", self.get_message, allow_head=False)
        r.add_post("/v1/optouts/{number}", self.optout_add)
        r.add_delete("/v1/optouts/{number}", self.optout_remove)
        r.add_get("/v1/optouts/{number}", self.optout_check, allow_head=False)
        r.add_get("/v1/consent", self.consent_export, allow_head=False)
        r.add_post("/admin/reload", self.admin_reload)
        r.add_get("/metrics", self.get_metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/readyz/carriers", self.readyz_carriers)
        r.add_get("/openapi.json", self.openapi)
        campaign_routes.register(app, self.campaigns)
        account_routes.register(app, self.accounts)
        webhook_routes.register(app, self.webhooks)
        carrier_routes.register(app, self.carriers)
        return app

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request's way in: authentication, errors as JSON, the metrics. One
        middleware, not three: each is a coroutine and a wrapper a request (with
        aiohttp's own one that any middleware brings), ~1.5 us each (bench/http_floor,
        README "Intake: HTTP and the client")."""
        started = time.perf_counter()
        status = 500
        try:
            try:
                if (request.path in _PUBLIC or request.match_info.http_exception is not None
                        or self._authorized(request.headers.get("Authorization", ""))):
                    response = await handler(request)  # public, unmatched, or the admin role
                else:
                    response = await self._as_account(request, handler)
            except Exception as e:
                response = self._error_answer(request, e)
            status = response.status
            return response
        finally:
            self._observe(request, status, started)

    def _observe(self, request: web.Request, status: int, started: float) -> None:
        self.count(_route_of(request), request.method, status, started, request.path,
                   request.transport)

    def count(self, route: str, method: str, status: int, started: float, path: str,
              transport: asyncio.BaseTransport | None) -> None:
        """A request's metrics (and its DEBUG line): aiohttp's requests and the fast
        lane's alike."""
        observed = self._observed.get((route, method, status))
        if observed is None:
            observed = (metrics.HTTP_REQUESTS.labels(route, method, str(status)),
                        metrics.HTTP_LATENCY.labels(route))
            if len(self._observed) < 1024:  # bounded: methods and statuses are the client's
                self._observed[(route, method, status)] = observed
        observed[0].inc()
        observed[1].observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http request", extra={
                "method": method, "path": path, "status": status,
                "remote": remote_of(transport),
            })

    def _error_answer(self, request: web.Request, exc: Exception) -> web.StreamResponse:
        """The JSON answer for what a handler raised (aiohttp's 404/405/413 included);
        called in the ``except`` that caught it (log.exception reads it from there)."""
        if isinstance(exc, web.HTTPException):
            if exc.content_type == "application/json":
                raise exc
            allow = exc.headers.get("Allow")
            return error(exc.status, _AIOHTTP_CODES.get(exc.status, "http_error"), exc.reason,
                         headers={"Allow": allow} if allow is not None else None)
        if isinstance(exc, BodyTimeout):
            resp = _json(*self.body_timeout(request.path, request.remote or ""))
            resp.force_close()
            return resp
        return _json(*self.failure(exc, request.path))

    def body_timeout(self, path: str, remote: str) -> Answer:
        """408: the body did not arrive in time (the caller closes the connection)."""
        self.limited.warning("body_timeout", "http: request body too slow",
                             path=path, remote=remote)
        return err(408, "timeout", f"the request body did not arrive within "
                   f"{self.body_timeout_s:g} s")

    def failure(self, exc: Exception, path: str) -> Answer:
        """The answer for what a handler raised, other than aiohttp's own HTTP errors
        (called in the ``except`` that caught it: log.exception reads it from there)."""
        if isinstance(exc, self.unavailable):
            self.limited.warning("unavailable", f"http: answered 503: {type(exc).__name__}: "
                                 f"{exc}", path=path)
            return err(503, "unavailable", "the gateway's store is busy or unreachable; "
                       "retry shortly", headers={"Retry-After": "1"})
        if denied(exc):
            # The Redis ACL refused a command (a deployment's ACL lacking one the README
            # lists): not the caller's fault and not ours to retry at once.
            metrics.REDIS_DENIED.labels("http").inc()
            self.limited.warning("store_denied", f"http: Redis ACL refused: {exc}",
                                 path=path)
            return err(503, "store_denied", "the gateway's Redis user may not run a "
                       "command this request needs (see the README's minimal ACL); "
                       "retry later", headers={"Retry-After": "5"})
        log.exception("http: unhandled error", extra={"path": path})
        return err(500, "internal", "internal error; see the gateway's log")

    async def _as_account(self, request: web.Request, handler: Handler
                          ) -> web.StreamResponse:
        """Not the admin role: an account's key on one of its routes, or 401/403."""
        principal, refusal = await self.as_account(
            request.method, _route_of(request), request.headers.get("Authorization", ""),
            request.path, request.transport)
        if refusal is not None or principal is None:
            return _json(*(refusal or err(401, "unauthorized", "no account")))
        request[account_routes.PRINCIPAL] = principal
        return await handler(request)

    async def as_account(self, method: str, route: str, header: str, path: str,
                         transport: asyncio.BaseTransport | None
                         ) -> tuple[Principal | None, Answer | None]:
        """The account a request sends as, or the refusal (401/403) to answer."""
        principal = await self._account(header)
        if principal is None:
            self.limited.warning("unauthorized", "http: unauthorized request",
                                 path=path, remote=remote_of(transport))
            return None, err(401, "unauthorized",
                             "missing or wrong 'Authorization: Bearer <key>'")
        if (method, route) not in account_routes.ACCOUNT_ROUTES:
            return None, err(403, "forbidden", "an account's key may not use this route "
                             "(it needs an admin key)")
        if principal.account.suspended:
            return None, err(403, "suspended", f"account {principal.tenant!r} is suspended")
        return principal, None

    def _authorized(self, header: str) -> bool:
        """The admin role: a key in http.api_keys (or no keys on a loopback listener,
        unless the request presents an account's key)."""
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if not self._hashes:
            return self._loopback and not (self.accounts is not None
                                           and key.startswith(KEY_PREFIX))
        if scheme.lower() != "bearer" or not key:
            return False
        try:
            presented = hash_key(key).encode("ascii")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them escaped)
            return False
        ok = False
        for h in self._hashes:  # all of them, always: no early exit
            ok |= hmac.compare_digest(presented, h)
        return ok

    async def _account(self, header: str) -> Principal | None:
        """The sending role: an account's key, from the in-process cache."""
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if self.accounts is None or scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX):
            return None
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return await self.accounts.lookup(key)

    # Intake -------------------------------------------------------------------------
    async def post_messages(self, request: web.Request) -> web.Response:
        if self.draining:
            return _json(*DRAINING)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _too_large(self.max_body_bytes)
        try:
            body = await read_body(request, self.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self.max_body_bytes)
        return _json(*await self.intake(body, request.get(account_routes.PRINCIPAL),
                                        request.path))

    async def intake(self, body: bytes, principal: Principal | None, path: str) -> Answer:
        """``POST /v1/messages`` once its body is read and its sender known: the answer
        of aiohttp's handler and of the fast lane (gatewayd.http.fastlane)."""
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError as e:
            if not body.strip():  # (looked at once decoding failed: no copy a request)
                return err(400, "bad_json", "empty body; send a JSON object or array")
            self.limited.warning("bad_json", f"http: body is not valid JSON: {e}",
                                 path=path)
            return err(400, "bad_json", f"body is not valid JSON: {e}")
        except RecursionError:
            self.limited.warning("bad_json", "http: JSON body nested too deep",
                                 path=path)
            return err(400, "bad_json", "body is nested too deep")
        if isinstance(doc, dict):
            items: list[Any] = [doc]
        elif isinstance(doc, list):
            items = doc
        else:
            return err(400, "bad_json", "send one message object or an array of them")
        if not items:
            return err(400, "empty", "the array holds no messages")
        if len(items) > MAX_ITEMS:
            return err(413, "too_many_items",
                       f"{len(items)} messages in one request; the limit is {MAX_ITEMS}")
        try:
            if principal is None:
                results = await self.backend.enqueue(items, source="http")
            else:
                results = await self.backend.enqueue(items, source="http", account=principal)
        except QuotaExceeded as e:
            r = e.refusal
            return err(429, "rate_limited" if r.limit in ("rate", "burst") else "quota_exceeded",
                       str(e), headers={"Retry-After": account_routes.retry_after(
                           r.resets_at)}, limit=r.body())
        return _enqueue_answer(results, len(items))

    async def get_message(self, request: web.Request) -> web.Response:
        msg_id = request.match_info["id"]
        if not _ID_RE.fullmatch(msg_id):
            return error(404, "not_found", "no such message")
        record = await self.backend.status(msg_id)
        principal: Principal | None = request.get(account_routes.PRINCIPAL)
        if record is not None and principal is not None \
                and record.get("tenant") != principal.tenant:
            record = None  # another tenant's message: as if unknown
        if record is None:
            return error(404, "not_found", "no status for this id (unknown or expired)")
        return _json(200, record)

    # Opt-outs -----------------------------------------------------------------------
    async def optout_add(self, request: web.Request) -> web.Response:
        return await self._optout(request, "add")

    async def optout_remove(self, request: web.Request) -> web.Response:
        return await self._optout(request, "remove")

    async def optout_check(self, request: web.Request) -> web.Response:
        return await self._optout(request, "check")

    async def _optout(self, request: web.Request, action: OptoutAction) -> web.Response:
        number = request.match_info["number"].strip()
        if not _NUMBER_RE.fullmatch(number):
            return error(422, "invalid", "not an E.164 number (+ and 6-15 digits)",
                         errors=[{"field": "number", "reason": "not an E.164 number"}])
        scope = request.query.get("scope", "*")
        if not _SCOPE_RE.fullmatch(scope):
            return error(422, "invalid", "scope: 1-64 printable characters other than '|'",
                         errors=[{"field": "scope",
                                  "reason": "1-64 printable characters other than '|'"}])
        category = request.query.get("category", "")
        if category and not _CATEGORY_RE.fullmatch(category):
            return error(422, "invalid", "category: a queue class name",
                         errors=[{"field": "category", "reason": "a queue class name"}])
        try:
            record = await self.backend.optout(action, number, scope, category)
        except ValueError as e:  # the backend's own checks (gatewayd.policy.optout)
            name = str(e).split(":", 1)[0]
            field = name if name in ("scope", "category") else "number"
            return error(422, "invalid", str(e), errors=[{"field": field, "reason": str(e)}])
        return _json(200, record)

    async def consent_export(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        number = q.get("number", "").strip()
        if number and not _NUMBER_RE.fullmatch(number):
            return error(422, "invalid", "number: not an E.164 number (+ and 6-15 digits)",
                         errors=[{"field": "number", "reason": "not an E.164 number"}])
        fmt: Literal["jsonl", "csv"] = "csv" if q.get("format", "jsonl") == "csv" else "jsonl"
        if q.get("format", "jsonl") not in ("jsonl", "csv"):
            return error(422, "invalid", "format: jsonl or csv",
                         errors=[{"field": "format", "reason": "jsonl or csv"}])
        bounds: list[float] = []
        for name in ("since", "until"):
            try:
                bounds.append(_when(q.get(name, "")))
            except ValueError:
                return error(422, "invalid", f"{name}: Unix seconds or ISO 8601 with an offset",
                             errors=[{"field": name,
                                      "reason": "Unix seconds or ISO 8601 with an offset"}])
        resp = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson; charset=utf-8" if fmt == "jsonl"
            else "text/csv; charset=utf-8"})
        await resp.prepare(request)
        # Streamed a chunk at a time: an export of two years of records never sits whole
        # in memory.
        chunk: list[dict[str, str]] = []
        first = True
        async for row in self.backend.consent(number, bounds[0], bounds[1]):
            chunk.append(row)
            if len(chunk) >= 1000:
                await resp.write(encode(chunk, fmt, header=first).encode())
                chunk, first = [], False
        await resp.write(encode(chunk, fmt, header=first).encode())
        await resp.write_eof()
        return resp

    # Admin and operations -----------------------------------------------------------
    async def admin_reload(self, request: web.Request) -> web.Response:
        """Reload the config and policy files (like SIGHUP). A file that fails its
        checks changes nothing: 422 with the reason (the file, the key, the fix). One
        that passes them but cannot be applied to the running daemon: 409 (nothing
        changed, or, ``reload_incomplete``, what runs said)."""
        ok, message, *more = await self.backend.reload()
        details = dict(more[0]) if more else {}
        if ok:
            return _json(200, {"ok": True, "message": message, **details})
        code = details.pop("error", reloading.FAILED)
        return _json(422 if code == reloading.FAILED else 409,
                     {"ok": False, "message": message, **details,
                      "error": {"code": code, "message": message}})

    async def get_metrics(self, request: web.Request) -> web.Response:
        return await self.own_metrics(request)

    async def own_metrics(self, request: web.Request) -> web.Response:
        """This process's /metrics (on the API port, or its own port: start_probes)."""
        body = generate_latest(self.registry)
        if self.exposition is not None:
            body = await self.exposition(body)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {**self.backend.liveness(), "status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Can this process accept intake (Redis reachable, not draining)? Whether
        carriers are bound is its own field and endpoint (/readyz/carriers): queuing
        while binds are down is normal, so a load balancer keeps sending here."""
        return await self._ready(request, carriers=False)

    async def readyz_carriers(self, request: web.Request) -> web.Response:
        """Is at least one carrier bind up (for monitoring, not load balancing)?"""
        return await self._ready(request, carriers=True)

    async def _ready(self, request: web.Request, *, carriers: bool) -> web.Response:
        if self.draining and not carriers:
            return _json(503, {"ready": False, "draining": True})
        try:
            ready, why = await self.backend.readiness()
        except Exception as e:  # a probe answers, it does not crash
            log.warning("readiness check failed: %s: %s", type(e).__name__, e)
            return _json(503, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        intake = why.get("redis") == "ok" if "redis" in why else ready
        binds = why.get("carriers")
        bound = (any(v == "bound" for v in binds.values()) if isinstance(binds, dict)
                 else ready)
        ok = bound if carriers else intake
        return _json(200 if ok else 503, {**why, "carriers_bound": bound, "ready": ok})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(200, openapi_spec(MAX_ITEMS, self.max_body_bytes, self.classes))


def _when(value: str) -> float:
    """A query's time: "" (open), Unix seconds, or ISO 8601 with a UTC offset."""
    v = value.strip()
    if not v:
        return 0.0
    try:
        t = float(v)
    except ValueError:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if dt.tzinfo is None or not 0 <= dt.timestamp() <= 1e11:
            raise ValueError("no UTC offset, or before 1970") from None
        return dt.timestamp()
    if not (math.isfinite(t) and 0 <= t <= 1e11):
        raise ValueError("not a time")
    return t


def _route_of(request: web.Request) -> str:
    """The route template (bounded label values), never the raw path."""
    if request.match_info.http_exception is not None:
        return "unmatched"
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"




def _too_large(limit: int) -> web.Response:
    return error(413, "too_large", f"request body larger than {limit} bytes")


def _enqueue_answer(results: list[EnqueueResult], count: int) -> Answer:
    if count == 1 and len(results) == 1:  # one message, queued: most requests
        one = results[0]
        if one.index == 0 and not one.errors:
            return 202, {"results": [{"index": 0, "id": one.id,
                                      "duplicate": one.duplicate}]}, None
    by_index = {r.index: r for r in results}
    out: list[dict[str, Any]] = []
    bad = 0
    for i in range(count):
        r = by_index.get(i)
        if r is None:  # a backend that skipped an item must not make it look accepted
            bad += 1
            out.append({"index": i, "errors": [{"field": "$", "reason": "not processed"}]})
        elif r.errors:
            bad += 1
            out.append({"index": i,
                        "errors": [{"field": e.field, "reason": e.reason} for e in r.errors]})
        else:
            out.append({"index": i, "id": r.id, "duplicate": r.duplicate})
    if not bad:
        return 202, {"results": out}, None
    queued = count - bad
    unqueued = sum(1 for r in results
                   if any(e.reason.startswith("not_queued") for e in r.errors))
    if unqueued:
        # Redis (a cluster failing over) past the intake's retries: the caller retries
        # the items without an id in "results" (with idempotency keys: safe to resend).
        return (503, {
            "error": {"code": "not_queued",
                      "message": f"{unqueued} of {count} messages could not be queued "
                                 f"(Redis unavailable); the {queued} with an id were"},
            "accepted": queued, "rejected": bad, "results": out,
        }, {"Retry-After": "5"})
    full = [r.depth for r in results if r.depth]
    if len(full) == bad:
        # Only items refused for their queue's depth (queue.max_queued): back-pressure.
        return (429, {
            "error": {"code": QUEUE_FULL,
                      "message": f"{bad} of {count} messages refused: their queue holds "
                                 f"{max(full)} messages (queue.max_queued); the {queued} "
                                 "others were queued; retry the refused ones later"},
            "depth": max(full), "accepted": queued, "rejected": bad, "results": out,
        }, {"Retry-After": "1"})
    if all(e["field"] == "id" and e["reason"].startswith(DUPLICATE_ID)
           for r in out for e in r.get("errors", ())):
        # Only ids already used by other messages: a conflict, not a malformed request.
        return (409, {
            "error": {"code": DUPLICATE_ID,
                      "message": f"{bad} of {count} messages reuse an id already used by "
                                 f"another message; the {queued} others were queued"},
            "accepted": queued, "rejected": bad, "results": out,
        }, None)
    return (422, {
        "error": {"code": "invalid_items",
                  "message": f"{bad} of {count} messages are invalid; "
                             f"the {queued} valid ones were queued"},
        "accepted": queued, "rejected": bad, "results": out,
    }, None)
