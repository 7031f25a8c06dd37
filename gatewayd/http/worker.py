"""One intake-only process of ``http.workers``: the HTTP API on the shared port, nothing else.

Started by the daemon (gatewayd.http.workers.WorkerPool) as ``gatewayd run -c <file>
--intake-worker <i>``. It binds no carrier, reads no queue, keeps no state directory and
runs no housekeeping: it serves the same routes as the daemon's own listener (intake,
status, opt-outs, consent export, campaigns, accounts, webhooks admin: all of them work
on Redis alone) on the same port (SO_REUSEPORT: the kernel spreads new connections over
the processes), and its own /metrics, /healthz and /readyz on a port of its own
(metrics_port(cfg, i)). /metrics on the shared port is always the daemon's: a worker
that takes such a scrape forwards it to the daemon's own metrics port (metrics_port(cfg,
0)), so Prometheus pointed at the API reads one process's counters, not a random one's.
TERM/INT: drain (intake answers 503) and stop; HUP: reload the policy files and the live
[http] keys (API keys, limits); the daemon going away (even killed): stop too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatewayd import __version__
from gatewayd.config import Config
from gatewayd.control import reload as reloading
from gatewayd.errors import ConfigError
from gatewayd.http.accounts import AccountApi
from gatewayd.http.campaigns import CampaignApi
from gatewayd.http.server import HttpServer, error, parse_listen
from gatewayd.http.service import DaemonBackend
from gatewayd.http.webhooks import WebhookApi
from gatewayd.ops import metrics
from gatewayd.ops.gctune import tune_gc
from gatewayd.pipeline.queue import QueueStore
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.connection import UNAVAILABLE, Store, redis_answers
from gatewayd.store.keys import keys_for

log = logging.getLogger("gatewayd.http.worker")

# Set by the daemon for its workers: its Redis URL (an embedded server's is known only
# to it) and its consumer name (the workers' names derive from it, for the logs).
ENV_REDIS_URL = "GATEWAYD_WORKER_REDIS_URL"
ENV_CONSUMER = "GATEWAYD_WORKER_CONSUMER"


def metrics_port(cfg: Config, index: int) -> int:
    """The own port for /metrics and probes of process ``index``: 0 the daemon, 1..N-1
    its workers (http.worker_metrics_port, or the listener's port + 1000, + index)."""
    base = cfg.http.worker_metrics_port or parse_listen(cfg.http.listen)[1] + 1000
    return base + index


def own_listen(cfg: Config, index: int) -> str:
    """``host:port`` of process ``index``'s own port (see metrics_port)."""
    host = parse_listen(cfg.http.listen)[0]
    return f"[{host}]:{metrics_port(cfg, index)}" if ":" in host else \
        f"{host}:{metrics_port(cfg, index)}"


def daemon_listens(cfg: Config) -> bool:
    """Whether the daemon takes connections on http.listen itself (http.daemon_listens;
    without workers it always does)."""
    return cfg.http.daemon_listens or cfg.http.workers < 2


async def start_probes(cfg: Config, index: int, http: HttpServer) -> web.AppRunner:
    """/metrics, /healthz, /readyz of this process on its own port."""

    app = web.Application()
    # Its own series (a worker's /metrics on the API port forwards to the daemon's).
    app.router.add_get("/metrics", http.own_metrics)
    app.router.add_get("/healthz", http.healthz)
    app.router.add_get("/readyz", http.readyz)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    host = parse_listen(cfg.http.listen)[0] or None
    try:
        await web.TCPSite(runner, host, metrics_port(cfg, index), reuse_address=True).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


class _WorkerHttp(HttpServer):
    """The API as the daemon serves it, but /metrics is the daemon's (forwarded)."""

    daemon_metrics = ""

    async def get_metrics(self, request: web.Request) -> web.Response:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s, \
                    s.get(self.daemon_metrics) as r:
                body = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            return error(503, "unavailable", f"the daemon's metrics: {type(e).__name__}")
        resp = web.Response(status=status, body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


class IntakeWorker:
    """What DaemonBackend needs of its host (gatewayd.http.service.Host), without a core."""

    def __init__(self, cfg: Config, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.keys = keys_for(cfg)
        self.consumer = f"{os.environ.get(ENV_CONSUMER) or 'gatewayd'}-http{index}"
        self.started_at = time.time()
        self.store = Store(cfg)
        if os.environ.get(ENV_REDIS_URL):
            self.store.url = os.environ[ENV_REDIS_URL]
        self.redis_ok = False
        self.stop_event = asyncio.Event()
        self.http: HttpServer | None = None
        self._engine: PolicyEngine | None = None
        self._reloads: set[asyncio.Task[Any]] = set()  # HUPs under way (held: weak refs)
        self._probe_runner: web.AppRunner | None = None

    # Host ---------------------------------------------------------------------------
    def policy(self) -> PolicyEngine | None:
        return self._engine

    async def reload(self) -> tuple[bool, str, dict[str, Any]]:
        """HUP (the daemon forwards its own) and POST /admin/reload on this process: the
        policy and the live [http] keys (API keys, limits), checked as the daemon checks
        them: a revoked key stops working here too. Carriers and routing are the
        daemon's; a broken file keeps this process's running configuration."""
        running = self.cfg

        def policy_again() -> PolicyEngine:  # a config made in code: only the policy
            path = running.resolve(running.policy.file) if running.policy.file else None
            return PolicyEngine.load(path, classes=list(running.queue.classes))

        try:
            new, engine = await reloading.read_new(
                running, policy_again, f"http worker {self.index}")
        except ConfigError as e:
            return False, str(e), {"error": reloading.FAILED}
        plan = reloading.diff(running, new)
        cfg = reloading.adopt(running, new)
        self._engine = engine
        reloading.policy_taken()
        if self.http is not None and plan.http:
            reloading.apply_http(self.http, cfg)
        self.cfg = cfg
        if self.http is not None and self.http.campaigns is not None:
            self.http.campaigns.cfg = cfg
        metrics.CONFIG_RELOADS.labels("ok").inc()
        return True, plan.message(), plan.summary()

    def _on_hup(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        # No carriers here: "carriers" names where they are (the daemon's process), so
        # /readyz/carriers on a worker follows Redis (see README "More intake processes").
        return self.redis_ok, {"redis": "ok" if self.redis_ok else "unreachable",
                               "worker": self.index}

    # Run ----------------------------------------------------------------------------
    async def run(self) -> int:
        metrics.BUILD_INFO.info({"version": __version__})
        path = self.cfg.resolve(self.cfg.policy.file) if self.cfg.policy.file else None
        self._engine = PolicyEngine.load(path, classes=list(self.cfg.queue.classes))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        parent = os.getppid()
        try:
            await self._start()
            watch = asyncio.create_task(self._watch(parent), name="watch")
            await self.stop_event.wait()
            watch.cancel()
        finally:
            if self.http is not None:
                await self.http.stop()
            if self._probe_runner is not None:
                await self._probe_runner.cleanup()
            await self.store.close()
        log.info("http worker stopped", extra={"worker": self.index})
        return 0

    async def _start(self) -> None:
        cfg = self.cfg
        await self.store.open()
        edge = self.store.intake
        # Waits out a Redis that cannot answer yet, as the daemon's start does.
        if not await redis_answers(edge, cfg, self.store.url, stop=self.stop_event,
                                   what=f"http worker {self.index}"):
            return
        self.redis_ok = True
        metrics.REDIS_UP.set(1)
        queue = QueueStore(edge, self.keys, cfg, self.consumer)
        self.http = _WorkerHttp(
            cfg.http.listen, DaemonBackend(self, edge, queue),
            api_key_hashes=list(cfg.http.api_keys),
            max_body_bytes=cfg.http.max_body_bytes, classes=list(cfg.queue.classes),
            campaigns=CampaignApi(edge, self.keys, cfg, self.policy),
            accounts=AccountApi(edge, self.keys, cfg),
            webhooks=WebhookApi(edge, self.keys, cfg),
            max_connections=cfg.http.max_connections,
            idle_timeout_s=cfg.http.idle_timeout_s, body_timeout_s=cfg.http.body_timeout_s,
            unavailable=UNAVAILABLE, reuse_port=True,
            fast_intake=cfg.http.fast_intake, turn_requests=cfg.http.turn_requests,
        )
        host = parse_listen(cfg.http.listen)[0] or "127.0.0.1"
        self.http.daemon_metrics = f"http://{host}:{metrics_port(cfg, 0)}/metrics"
        self._probe_runner = await start_probes(cfg, self.index, self.http)
        await self.http.start()
        tune_gc()  # as the daemon's (gatewayd.ops.gctune): this process is all hot path
        log.info("http worker started", extra={"worker": self.index, "pid": os.getpid()})

    async def _watch(self, parent: int) -> None:
        """Stop when the daemon is gone (the kernel's parent-death signal covers a
        killed daemon; this covers the rest) and keep the Redis gauge true."""
        assert self.http is not None
        while not self.stop_event.is_set():
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("http worker: the daemon is gone; stopping")
                self._on_stop()
                return
            try:
                await self.store.intake.ping()
                ok = True
            except Exception:
                ok = False
            if ok != self.redis_ok:
                self.redis_ok = ok
                metrics.REDIS_UP.set(1 if ok else 0)

    def _on_stop(self) -> None:
        if self.http is not None:
            self.http.drain()
        self.stop_event.set()
