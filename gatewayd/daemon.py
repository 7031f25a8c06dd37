"""Lifecycle: start order, the housekeeping tick, signals, graceful drain.

Start: Redis (or the embedded server) -> consumer groups -> policies -> simulator (demo
only) -> carrier binds -> HTTP -> READY=1. Signal handlers only set flags; the loops do
the work. TERM/INT drain: stop HTTP intake and reading, let in-flight batches finish
(bounded by shutdown_timeout_s), unbind, close Redis. A second TERM/INT forces exit.
HUP reloads the policy files atomically (a broken file keeps the old policy).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from typing import Any

from gatewayd import __version__
from gatewayd.carrier import CarrierPool
from gatewayd.config import Config, holds_secrets, warn_if_world_readable
from gatewayd.errors import ConfigError
from gatewayd.http.server import HttpServer
from gatewayd.http.service import DaemonBackend
from gatewayd.ops import metrics
from gatewayd.ops.sdnotify import Notifier
from gatewayd.pipeline.dispatch import Dispatcher
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.queue import QueueStore
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.ratelimit import CarrierRateGate
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.connection import Store
from gatewayd.store.keys import keys_for

log = logging.getLogger("gatewayd.daemon")


class Daemon:
    def __init__(self, cfg: Config, *, burst: bool = False, burst_timeout_s: float = 0.0) -> None:
        self.cfg = cfg
        self.burst = burst
        self.burst_timeout_s = burst_timeout_s
        self.keys = keys_for(cfg)
        self.consumer = cfg.daemon.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(cfg)
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.notifier = Notifier()
        self._engine: PolicyEngine | None = None
        self.sim: SmscSimulator | None = None
        self.pool: CarrierPool | None = None
        self.queue: QueueStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.inbound: InboundHandler | None = None
        self.http: HttpServer | None = None
        self.redis_ok = False
        self._signals = 0
        self.started_at = time.time()

    # Policy (swapped atomically on reload) -------------------------------------------
    def policy(self) -> PolicyEngine | None:
        return self._engine

    def load_policy(self) -> PolicyEngine:
        path = self.cfg.resolve(self.cfg.policy.file) if self.cfg.policy.file else None
        return PolicyEngine.load(path, classes=list(self.cfg.queue.classes))

    def reload(self) -> tuple[bool, str]:
        try:
            engine = self.load_policy()
        except ConfigError as e:
            metrics.POLICY_RELOADS.labels("error").inc()
            metrics.POLICY_RELOAD_FAILED.set(1)
            log.error("policy reload failed; the previous policy stays in force: %s", e)
            return False, str(e)
        self._engine = engine
        metrics.POLICY_RELOADS.labels("ok").inc()
        metrics.POLICY_RELOAD_FAILED.set(0)
        log.info("policies reloaded")
        return True, "reloaded"

    # Run ----------------------------------------------------------------------------
    async def run(self) -> int:
        metrics.BUILD_INFO.info({"version": __version__})
        if self.cfg.source:
            warning = warn_if_world_readable(self.cfg.source)
            if warning and holds_secrets(self.cfg):
                log.warning(warning)
        self._engine = self.load_policy()
        self._install_signals()
        try:
            await self._start()
            self.started.set()
            await self._main_loop()
        finally:
            await self._shutdown()
        return 0

    async def _start(self) -> None:
        cfg = self.cfg
        redis = await self.store.open()
        await redis.ping()
        self.redis_ok = True
        metrics.REDIS_UP.set(1)
        self.queue = QueueStore(redis, self.keys, cfg, self.consumer)
        await self.queue.ensure_groups()
        await self._heartbeat()
        if cfg.simulator.enabled:
            s = cfg.simulator
            self.sim = SmscSimulator(SimSettings(
                host=s.host, port=s.port, system_id=s.system_id, password=s.password,
                receipt_delay_s=s.receipt_delay_s,
            ))
            await self.sim.start()
        self.inbound = InboundHandler(redis, self.keys, cfg, self.policy)
        self.pool = CarrierPool(cfg, self.inbound, rate_gate=CarrierRateGate(redis, self.keys, cfg))
        await self.pool.start()
        self.dispatcher = Dispatcher(redis, self.keys, cfg, self.queue, self.pool, self.policy)
        if cfg.http.enabled:
            self.http = HttpServer(
                cfg.http.listen, DaemonBackend(self), api_key_hashes=list(cfg.http.api_keys),
                max_body_bytes=cfg.http.max_body_bytes, classes=list(cfg.queue.classes),
            )
            await self.http.start()
        if not await self.pool.wait_bound(10.0):
            log.warning("not every carrier is bound yet; messages wait in their queues")
        _tune_gc()
        self.notifier.ready()
        log.info("gatewayd started", extra={"consumer": self.consumer, "version": __version__})

    async def _main_loop(self) -> None:
        assert self.dispatcher is not None
        pump = asyncio.create_task(self.dispatcher.run(self.stop_event), name="dispatch")
        tick = asyncio.create_task(self._housekeeping(), name="housekeeping")
        try:
            await self.stop_event.wait()
        finally:
            self.notifier.stopping()
            # Let batches in flight finish and record their outcomes (bounded).
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.cfg.daemon.shutdown_timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                pump.cancel()
            tick.cancel()
            for t in (pump, tick):
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass

    async def _shutdown(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.pool is not None:
            await self.pool.stop(self.cfg.daemon.shutdown_timeout_s)
        if self.sim is not None:
            await self.sim.stop()
        await self.store.close()
        log.info("gatewayd stopped")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: exiting now")
            embedded = self.store.embedded
            if embedded is not None and embedded.proc is not None:
                embedded.proc.terminate()  # it flushes its append-only file and exits
            os._exit(1)
        log.info("stop signal: draining")
        if self.http is not None:
            self.http.drain()  # intake and /readyz answer 503 from now on
        self.stop_event.set()

    def _on_hup(self) -> None:
        self.notifier.reloading()
        self.reload()
        self.notifier.ready()

    # Housekeeping -------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        assert self.queue and self.dispatcher and self.inbound
        interval = self.cfg.daemon.housekeeping_interval_s
        last_reclaim = 0.0
        burst_deadline = time.monotonic() + self.burst_timeout_s if self.burst_timeout_s else 0.0
        while not self.stop_event.is_set():
            try:
                now = time.time()
                await self.queue.move_due(now)
                if now - last_reclaim >= max(1.0, self.cfg.queue.reclaim_idle_s / 4):
                    last_reclaim = now
                    reclaimed = await self.queue.reclaim(
                        self.cfg.queue.read_batch, self.dispatcher.in_flight
                    )
                    if reclaimed:
                        log.info("reclaimed %d pending entries", len(reclaimed))
                        await self.dispatcher.process(reclaimed)
                await self.inbound.retry_early()
                await self.inbound.expire_awaiting()
                depths = await self.queue.depths()
                for klass, d in depths.items():
                    metrics.QUEUE_DEPTH.labels(klass).set(d["ready"])
                    metrics.QUEUE_PENDING.labels(klass).set(d["pending"])
                metrics.DELAYED.set(sum(d["delayed"] for d in depths.values()))
                await self._heartbeat()
                if not self.redis_ok:
                    log.info("Redis reachable again")
                self.redis_ok = True
                metrics.REDIS_UP.set(1)
                self.notifier.watchdog()
                self.notifier.status(self._status_line(depths))
                if self.burst and await self._drained(depths):
                    log.info("burst mode: everything drained; stopping")
                    self.stop_event.set()
                    return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.redis_ok:
                    log.error("housekeeping: %s: %s", type(e).__name__, e)
                self.redis_ok = False
                metrics.REDIS_UP.set(0)
                metrics.REDIS_ERRORS.labels("housekeeping").inc()
                # Still alive: keep the systemd watchdog fed while Redis is away.
                self.notifier.watchdog()
            if burst_deadline and time.monotonic() > burst_deadline:
                log.warning("burst mode: timeout; stopping with work left")
                self.stop_event.set()
                return
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
            except TimeoutError:
                pass

    async def _heartbeat(self) -> None:
        """While this key lives, other daemons leave our pending entries alone."""
        ttl_ms = int(max(2.0, 5 * self.cfg.daemon.housekeeping_interval_s) * 1000)
        await self.store.client.set(
            self.keys.heartbeat(self.consumer), int(time.time()), px=ttl_ms
        )

    async def _drained(self, depths: dict[str, dict[str, int]]) -> bool:
        if any(sum(d.values()) for d in depths.values()):
            return False
        redis = self.store.client
        awaiting = await redis.zcard(self.keys.awaiting_receipt)
        early = await redis.zcard(self.keys.early_receipts)
        return int(awaiting) == 0 and int(early) == 0

    def _status_line(self, depths: dict[str, dict[str, int]]) -> str:
        queued = sum(d["ready"] + d["delayed"] for d in depths.values())
        bound = sum(1 for b in (self.pool.snapshot() if self.pool else []) if b.state == "bound")
        done = self.dispatcher.processed if self.dispatcher else 0
        return f"processed {done}; queued {queued}; binds up {bound}"

    # For the HTTP backend ------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        why: dict[str, Any] = {"redis": "ok" if self.redis_ok else "unreachable"}
        carriers: dict[str, str] = {}
        if self.pool is not None:
            by: dict[str, bool] = {}
            for b in self.pool.snapshot():
                by[b.carrier] = by.get(b.carrier, False) or b.state == "bound"
            carriers = {c: ("bound" if up else "no bind up") for c, up in by.items()}
        why["carriers"] = carriers
        ok = self.redis_ok and bool(carriers) and any(v == "bound" for v in carriers.values())
        return ok, why


def _tune_gc() -> None:
    """Startup objects (config, policy tables, metrics, modules) live for ever: freeze
    them out of every collection. The hot path allocates short-lived containers by the
    thousand a second, so collect gen0 less often. Collections were ~6 % of the CPU of a
    bench/e2e run (py-spy --native); almost nothing we allocate later forms cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
