"""Lifecycle: start order, the housekeeping tick, signals, graceful drain.

Start: the state directory (locked: one daemon each; it holds the spool and names the
consumer) -> the webhook sender process (webhooks.sender = "process": started first, its
start-up overlaps ours; gatewayd.webhooks.process) -> Redis (or the embedded server) ->
consumer groups -> policies -> simulator (demo only) -> carrier binds -> HTTP -> READY=1.
Signal handlers only set flags; the loops do the work. TERM/INT drain: stop HTTP intake
and reading, let in-flight batches finish (bounded by shutdown_timeout_s), unbind, stop
the webhook sender process, close Redis. A second TERM/INT forces exit.
HUP (and ``POST /admin/reload``) reloads the config file and the policy files: carriers,
routing and the [http] limits and keys change live, keys that cannot (Redis, the listen
address, ...) are reported as needing a restart (gatewayd.control.reload); a file that
fails its checks changes nothing and says why.

The consumer name is stable per instance (``<hostname>-<digest of state_dir>`` unless
``daemon.consumer`` says otherwise), so a restarted daemon takes back the entries its
previous run left pending at once, without waiting for them to go idle. Taking over
(own leftovers at start, a dead consumer's entries after ``queue.reclaim_idle_s``) and
replaying the receipt spool run as background jobs, started by the housekeeping tick,
so a big takeover never starves the heartbeat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from gatewayd import __version__
from gatewayd.campaigns import registry as templates
from gatewayd.campaigns.fanout import CampaignRunner
from gatewayd.campaigns.supervisor import FanoutProcess
from gatewayd.carrier import CarrierPool
from gatewayd.config import Config, holds_secrets, warn_if_world_readable
from gatewayd.control import reload as reloading
from gatewayd.control.watch import CarrierWatch
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.http.accounts import AccountApi
from gatewayd.http.campaigns import CampaignApi
from gatewayd.http.carriers import CarrierApi
from gatewayd.http.links import LinkServer
from gatewayd.http.server import HttpServer
from gatewayd.http.service import DaemonBackend
from gatewayd.http.webhooks import WebhookApi
from gatewayd.http.worker import daemon_listens, own_listen
from gatewayd.http.workers import WorkerPool
from gatewayd.ops import looplag, metrics
from gatewayd.ops.exposition import combined
from gatewayd.ops.gctune import tune_gc
from gatewayd.ops.sdnotify import Notifier
from gatewayd.pipeline.dispatch import Dispatcher
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.queue import QueueStore
from gatewayd.pipeline.spool import Spool
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.ratelimit import CarrierRateGate
from gatewayd.sim.cmpp.ismg import IsmgSettings, IsmgSimulator
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.connection import (
    UNAVAILABLE,
    Store,
    is_cluster,
    is_unavailable,
    while_unavailable,
)
from gatewayd.store.keys import keys_for
from gatewayd.webhooks import process as webhook_process
from gatewayd.webhooks.runner import WebhookRunner

log = logging.getLogger("gatewayd.daemon")

# A reload waits this long for a new or changed carrier's binds to come up before its
# old binds stop taking submits (then switches anyway, and says so).
_BIND_WAIT_S = 10.0


def default_consumer(cfg: Config) -> str:
    """``<hostname>-<8 hex of the state directory's path>``: the same for every run of
    one instance (its state directory), different for instances beside each other."""
    state = str(cfg.state_path().resolve())
    return f"{socket.gethostname()}-{hashlib.sha1(state.encode()).hexdigest()[:8]}"


class Daemon:
    def __init__(self, cfg: Config, *, burst: bool = False, burst_timeout_s: float = 0.0) -> None:
        self.cfg = cfg
        self.burst = burst
        self.burst_timeout_s = burst_timeout_s
        self.keys = keys_for(cfg)
        self.consumer = cfg.daemon.consumer or default_consumer(cfg)
        self.state_dir = cfg.state_path()
        self._lock_fd: int | None = None
        self.spool: Spool | None = None
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self.store = Store(cfg)
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.notifier = Notifier()
        self._engine: PolicyEngine | None = None
        self.sim: SmscSimulator | None = None
        self.ismg: IsmgSimulator | None = None
        self.pool: CarrierPool | None = None
        self.control: CarrierWatch | None = None
        self.queue: QueueStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.inbound: InboundHandler | None = None
        self.http: HttpServer | None = None
        self.campaigns: CampaignRunner | None = None
        self.fanout: FanoutProcess | None = None  # campaigns.fanout_process: the child
        self.webhooks: WebhookRunner | None = None  # webhooks.sender = "inline": in here
        # webhooks.sender = "process" (the default): the sender as a supervised child.
        self.webhook_sender: webhook_process.SenderProcess | None = None
        self.links: LinkServer | None = None
        self.workers: WorkerPool | None = None  # http.workers > 1: intake-only processes
        self.redis_ok = False
        self._last_reclaim = 0.0
        self._failing: dict[str, str] = {}  # housekeeping step -> the error it last logged
        self._signals = 0
        self._reloads: set[asyncio.Task[None]] = set()  # SIGHUPs being applied
        self._reload_lock = asyncio.Lock()
        self.started_at = time.time()

    # Policy (swapped atomically on reload) -------------------------------------------
    def policy(self) -> PolicyEngine | None:
        return self._engine

    def load_policy(self) -> PolicyEngine:
        path = self.cfg.resolve(self.cfg.policy.file) if self.cfg.policy.file else None
        return PolicyEngine.load(path, classes=list(self.cfg.queue.classes))

    async def reload(self) -> tuple[bool, str, dict[str, Any]]:
        """Reload the config file and the policy (SIGHUP, POST /admin/reload), one at a
        time: (ok, message, what changed; on failure ``{"error": code}``). A file that
        fails check-config's checks changes nothing (``reload_failed``), nor does one
        that cannot be applied (``reload_not_applied``): the running configuration
        stays whole. A failure after the carriers switched (``reload_incomplete``)
        leaves the new configuration running, and says so."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> tuple[bool, str, dict[str, Any]]:
        running = self.cfg
        try:
            new, engine = await reloading.read_new(
                running, self.load_policy, "daemon")
        except ConfigError as e:
            return False, str(e), {"error": reloading.FAILED}
        plan = reloading.diff(running, new)
        if self.webhook_sender is not None:  # the sender process applies these itself
            live = tuple(f"webhooks.{k}" for k in webhook_process.LIVE)
            plan = dataclasses.replace(plan, restart=tuple(
                k for k in plan.restart if not k.startswith(live)))
        cfg = reloading.adopt(running, new)
        previous = self._engine
        self._engine = engine
        if self.http is not None and plan.http:
            reloading.apply_http(self.http, cfg)
        try:
            if plan.carriers or plan.routing:
                await self._apply_carriers(cfg, plan)
        except Exception as e:
            # The pool builds every new engine before it changes anything: until it has
            # taken the new config, undoing the policy and [http] undoes the reload.
            if self.pool is None or self.pool.cfg is not cfg:
                self._engine = previous
                if self.http is not None and plan.http:
                    reloading.apply_http(self.http, running)
                return reloading.not_applied("daemon", e)
            self._adopted(cfg)
            return reloading.incomplete("daemon", plan, e)
        reloading.policy_taken()
        self._adopted(cfg)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        message = plan.message()
        log.info(message, extra=plan.summary())
        if plan.restart:
            log.warning("reload: these keys changed but need a restart to apply; they "
                        "keep their running values: %s", ", ".join(plan.restart))
        return True, message, plan.summary()

    async def _apply_carriers(self, cfg: Config, plan: reloading.Plan) -> None:
        metrics.zero_known(cfg.queue.classes, [c.name for c in cfg.carrier])
        # Before the pool: a submit answered on a new carrier is recorded, and a
        # receipt arriving on its binds is correlated, from the first one (both only
        # learn names: harmless if the pool then refuses the config).
        if self.dispatcher is not None:
            self.dispatcher.learn_carriers(cfg)
        if self.inbound is not None:
            self.inbound.learn_carriers(cfg)
        if self.pool is not None:
            await self.pool.apply_carriers(
                cfg, changed=plan.changed, retuned=plan.retuned,
                bind_wait_s=_BIND_WAIT_S)

    def _adopted(self, cfg: Config) -> None:
        self.cfg = cfg
        if self.http is not None:  # the routes that read the config: its live keys
            if self.http.campaigns is not None:
                self.http.campaigns.cfg = cfg
            if self.http.carriers is not None:
                self.http.carriers.cfg = cfg

    # Run ----------------------------------------------------------------------------
    async def run(self) -> int:
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.zero_known(self.cfg.queue.classes, [c.name for c in self.cfg.carrier])
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

    def _lock_state_dir(self) -> None:
        """One daemon per state directory: it names the consumer and holds the spool."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "gatewayd.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GatewayError(
                f"{self.state_dir}: in use by another gatewayd; give each daemon its own "
                "daemon.state_dir (it holds the consumer identity and the receipt spool)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _start(self) -> None:
        cfg = self.cfg
        self._lock_state_dir()
        hooks = cfg.webhooks
        if hooks.enabled and hooks.sender == "process" and self.store.url:
            # First (with a configured Redis URL): its ~0.4 s of imports and connecting
            # overlap the daemon's own start instead of its first seconds of dispatch.
            self.webhook_sender = webhook_process.SenderProcess(cfg, self.store.url)
            self.webhook_sender.start()
        self.spool = Spool(Path(self.state_dir) / "spool")
        await asyncio.to_thread(self.spool.open)
        redis = await self.store.open()
        # Every start-up step on Redis waits out an unavailable Redis (redis.startup_wait_s),
        # then fails in one line with exit code 3 (cli._run), not redis-py's traceback.
        deadline = time.monotonic() + cfg.redis.startup_wait_s
        said: list[str] = []

        async def on_redis(what: str, step: Callable[[], Awaitable[Any]]) -> None:
            await while_unavailable(step, what=what, url=self.store.url, deadline=deadline,
                                    said=said)

        await on_redis("ping", redis.ping)
        if said:
            log.info("start-up: Redis answers")
        self.redis_ok = True
        metrics.REDIS_UP.set(1)
        self.queue = QueueStore(redis, self.keys, cfg, self.consumer)
        await on_redis("consumer groups", self.queue.ensure_groups)
        await on_redis("heartbeat", self._heartbeat)
        if cfg.webhooks.enabled:
            runner = WebhookRunner(redis, self.keys, cfg)
            await on_redis("webhooks", runner.prepare)  # the cursor before the first dispatch
            if cfg.webhooks.sender == "inline":
                self.webhooks = runner
            elif self.webhook_sender is None:  # an embedded Redis: its URL known now
                self.webhook_sender = webhook_process.SenderProcess(cfg, self.store.url)
                self.webhook_sender.start()
        if cfg.simulator.enabled:
            s = cfg.simulator
            self.sim = SmscSimulator(SimSettings(
                host=s.host, port=s.port, system_id=s.system_id, password=s.password,
                receipt_delay_s=s.receipt_delay_s,
            ))
            await self.sim.start()
            if s.cmpp_port:
                self.ismg = IsmgSimulator(IsmgSettings(
                    host=s.host, port=s.cmpp_port, sp_id=s.cmpp_sp_id, secret=s.cmpp_secret,
                    receipt_delay_s=s.receipt_delay_s,
                ))
                await self.ismg.start()
        self.inbound = InboundHandler(redis, self.keys, cfg, self.policy)
        self.inbound.spool = self.spool
        self.pool = CarrierPool(cfg, self.inbound, rate_gate=CarrierRateGate(redis, self.keys, cfg))
        # The operator's carrier overrides (suspended, tps, window) before the first submit.
        self.control = CarrierWatch(redis, self.keys, self.pool, self.consumer)
        await on_redis("carrier overrides", self.control.apply_once)
        await self.pool.start()
        self.dispatcher = Dispatcher(redis, self.keys, cfg, self.queue, self.pool, self.policy)
        await on_redis("templates", self.load_templates)
        if not is_cluster(redis):  # the fan-out's slices are single-Redis scripts
            # campaigns.fanout_process: a child fans out; this loop dispatches.
            child = cfg.campaigns.fanout_process and bool(cfg.source) and not self.burst
            self.campaigns = CampaignRunner(redis, self.keys, cfg, fan=not child)
            if child:
                self.fanout = FanoutProcess(cfg, self.store.url, self.consumer)
                self.fanout.start()
        # The edge (HTTP API, redirector) has its own Redis connections: a request flood
        # waits for those (then answers 503), never for the core's (Store's docstring).
        edge = self.store.intake
        intake_queue = QueueStore(edge, self.keys, cfg, self.consumer)
        if cfg.http.enabled:
            # http.daemon_listens = false: the intake workers alone take the API port;
            # the daemon's API (admin, carriers, /metrics) is on its own port.
            shared = daemon_listens(cfg)
            self.http = HttpServer(
                cfg.http.listen if shared else own_listen(cfg, 0),
                DaemonBackend(self, edge, intake_queue),
                api_key_hashes=list(cfg.http.api_keys),
                max_body_bytes=cfg.http.max_body_bytes, classes=list(cfg.queue.classes),
                campaigns=CampaignApi(edge, self.keys, cfg, self.policy),
                accounts=AccountApi(edge, self.keys, cfg),
                webhooks=WebhookApi(edge, self.keys, cfg),
                carriers=CarrierApi(edge, self.keys, cfg),
                max_connections=cfg.http.max_connections,
                idle_timeout_s=cfg.http.idle_timeout_s, body_timeout_s=cfg.http.body_timeout_s,
                unavailable=UNAVAILABLE, reuse_port=shared and cfg.http.workers > 1,
                fast_intake=cfg.http.fast_intake, turn_requests=cfg.http.turn_requests,
            )
            # The children's series in the daemon's /metrics (read at each scrape).
            scraped = [c.metrics for c in (self.webhook_sender, self.fanout)
                       if c is not None and c.metrics.url]
            if scraped:
                self.http.exposition = combined(scraped)
            await self.http.start()
            if cfg.http.workers > 1:
                self.workers = WorkerPool(cfg, self.store.url, self.consumer, self.http)
                await self.workers.start()
        if cfg.links.enabled:
            self.links = LinkServer(cfg.links.listen, edge, self.keys, intake_queue.ledger,
                                    preview_agents=list(cfg.links.preview_agents),
                                    fallback_url=cfg.links.fallback_url,
                                    max_connections=cfg.links.max_connections)
            await self.links.start()
        # Before waiting for the binds: HTTP intake is served from here on, binds up
        # or not (with a carrier down it would otherwise run 10 s untuned).
        tune_gc()
        if not await self.pool.wait_bound(10.0):
            log.warning("not every carrier is bound yet; messages wait in their queues")
        self.notifier.ready()
        log.info("gatewayd started", extra={"consumer": self.consumer, "version": __version__})

    async def _main_loop(self) -> None:
        assert self.dispatcher is not None
        pump = asyncio.create_task(self.dispatcher.run(self.stop_event), name="dispatch")
        tick = asyncio.create_task(self._housekeeping(), name="housekeeping")
        lag = asyncio.create_task(looplag.probe(self.stop_event), name="loop-lag")
        fan = (asyncio.create_task(self.campaigns.run(self.stop_event), name="campaigns")
               if self.campaigns is not None else None)
        hooks = (asyncio.create_task(self.webhooks.run(self.stop_event), name="webhooks")
                 if self.webhooks is not None else None)
        control = (asyncio.create_task(self.control.run(self.stop_event), name="carrier-control")
                   if self.control is not None else None)
        try:
            await self.stop_event.wait()
        finally:
            if control is not None and self.control is not None:
                control.cancel()
                try:
                    await control
                except (asyncio.CancelledError, Exception):
                    pass
                await self.control.close()
            if self.webhook_sender is not None:  # it saves its cursor and stops
                self.webhook_sender.drain()
            if hooks is not None:  # unacknowledged events are sent again by the next run
                hooks.cancel()
                try:
                    await hooks
                except (asyncio.CancelledError, Exception):
                    pass
            if fan is not None:
                fan.cancel()
                try:
                    await fan
                except (asyncio.CancelledError, Exception):
                    pass
            self.notifier.stopping()
            # Let batches in flight finish and record their outcomes (bounded); a takeover
            # stops between its batches.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.cfg.daemon.shutdown_timeout_s
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.cfg.daemon.shutdown_timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                pump.cancel()
            jobs = [j for j in self._jobs.values() if not j.done()]
            if jobs:
                await asyncio.wait(jobs, timeout=max(0.1, deadline - loop.time()))
            tick.cancel()
            lag.cancel()
            for t in (pump, tick, lag, *jobs):
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass

    async def _shutdown(self) -> None:
        for task in list(self._reloads):
            task.cancel()  # the pool's stop below shuts their draining binds down
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.workers is not None:
            await self.workers.stop(self.cfg.daemon.shutdown_timeout_s)
        if self.webhook_sender is not None:  # before Redis: it saves its cursor there
            await self.webhook_sender.stop(self.cfg.daemon.shutdown_timeout_s)
        if self.fanout is not None:
            await self.fanout.stop(self.cfg.daemon.shutdown_timeout_s)
        if self.http is not None:
            await self.http.stop()
        if self.links is not None:
            await self.links.stop()
        if self.pool is not None:
            await self.pool.stop(self.cfg.daemon.shutdown_timeout_s)
        if self.sim is not None:
            await self.sim.stop()
        if self.ismg is not None:
            await self.ismg.stop()
        await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the state directory's lock
            self._lock_fd = None
        if self.started.is_set():  # a failed start is said in one line, by the caller
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
        if self.workers is not None:
            self.workers.drain()  # so do the intake workers', then they stop
        if self.fanout is not None:
            self.fanout.drain()
        self.stop_event.set()

    def _on_hup(self) -> None:
        task = asyncio.create_task(self._hup(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _hup(self) -> None:
        # A HUP during start applies once started: the start builds from the config it
        # began with.
        await self.started.wait()
        self.notifier.reloading()
        if self.workers is not None:
            self.workers.hup()  # each intake worker reloads its own copy of the file
        if self.webhook_sender is not None:
            self.webhook_sender.hup()  # it reloads its endpoints (webhooks.process.LIVE)
        try:
            await self.reload()
            await self.load_templates()
        except Exception:  # a reload that fails half-way is logged; the daemon goes on
            log.exception("reload failed")
        finally:
            self.notifier.ready()

    async def load_templates(self) -> None:
        """Upsert ``[campaigns] templates_file`` (at start and on SIGHUP); a broken
        file is logged and changes nothing."""
        name = self.cfg.campaigns.templates_file
        if not name:
            return
        lk = self.cfg.links
        sample = (lk.base_url.rstrip("/") + "/" + "x" * (lk.random_chars + 4)
                  if lk.enabled else "")
        try:
            loaded = await templates.load_file(
                self.store.client, self.keys, self.cfg.resolve(name),
                classes=list(self.cfg.queue.classes), engine=self._engine, link_sample=sample)
        except ConfigError as e:
            log.error("templates not loaded: %s", e)
            return
        log.info("templates loaded", extra={"count": len(loaded)})

    # Housekeeping -------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        assert self.queue and self.dispatcher and self.inbound
        interval = self.cfg.daemon.housekeeping_interval_s
        self._last_reclaim = time.time()
        # First: what a previous run of this consumer left pending, without waiting.
        self._job("takeover", lambda: self._takeover(own_since=self.started_at))
        burst_deadline = time.monotonic() + self.burst_timeout_s if self.burst_timeout_s else 0.0
        while not self.stop_event.is_set():
            if await self._housekeeping_pass():
                return
            if burst_deadline and time.monotonic() > burst_deadline:
                log.warning("burst mode: timeout; stopping with work left")
                self.stop_event.set()
                return
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
            except TimeoutError:
                pass

    async def _housekeeping_pass(self) -> bool:
        """One tick. Every step runs whatever happened to the others: a failing step
        (a poisoned key, a script error, a bug) is logged once and counted
        (``gatewayd_housekeeping_errors_total{step}``) while the heartbeat, the receipt
        expiry and the gauges go on. Only an error that says Redis cannot be reached
        (store.connection.is_unavailable) marks Redis down; then the remaining steps
        are skipped (each would wait out the same timeout). True: burst mode is done."""
        assert self.queue and self.dispatcher and self.inbound
        queue, inbound = self.queue, self.inbound
        now = time.time()
        down = False
        depths: dict[str, dict[str, int]] | None = None

        async def step(name: str, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
            nonlocal down
            if down:
                return None
            try:
                result = await work()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                metrics.HOUSEKEEPING_ERRORS.labels(name).inc()
                if is_unavailable(e):
                    down = True
                    if self.redis_ok:
                        log.error("housekeeping: Redis unreachable: %s: %s",
                                  type(e).__name__, e)
                    metrics.REDIS_ERRORS.labels("housekeeping").inc()
                    return None
                what = f"{type(e).__name__}: {e}"
                if self._failing.get(name) != what:  # once per new error, not every tick
                    self._failing[name] = what
                    log.error("housekeeping step %s failed (the other steps go on): %s",
                              name, what, exc_info=e)
                return None
            if self._failing.pop(name, None) is not None:
                log.info("housekeeping step %s works again", name)
            return result

        await step("move_due", lambda: queue.move_due(now))
        if self.spool is not None and self.spool.active:
            self._job("spool", self._replay_spool)
        if now - self._last_reclaim >= max(1.0, self.cfg.queue.reclaim_idle_s / 4):
            self._last_reclaim = now
            self._job("takeover", lambda: self._takeover(own_since=None))
        await step("retry_early", inbound.retry_early)
        await step("expire_awaiting", inbound.expire_awaiting)
        depths = await step("gauges", self._gauges)
        await step("heartbeat", self._heartbeat)
        if down:
            self.redis_ok = False
            metrics.REDIS_UP.set(0)
        else:
            if not self.redis_ok:
                log.info("Redis reachable again")
            self.redis_ok = True
            metrics.REDIS_UP.set(1)
        # Still alive (Redis away or not): the systemd watchdog is fed.
        self.notifier.watchdog()
        if depths is not None:
            self.notifier.status(self._status_line(depths))
            if self.burst and await step("burst_check", lambda: self._drained(depths)):
                log.info("burst mode: everything drained; stopping")
                self.stop_event.set()
                return True
        return False

    async def _gauges(self) -> dict[str, dict[str, int]]:
        assert self.queue is not None
        depths = await self.queue.depths()
        for klass, d in depths.items():
            metrics.QUEUE_DEPTH.labels(klass).set(d["ready"])
            metrics.QUEUE_PENDING.labels(klass).set(d["pending"])
        metrics.DELAYED.set(sum(d["delayed"] for d in depths.values()))
        return depths

    def _job(self, name: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start a background job unless it is still running."""
        job = self._jobs.get(name)
        if job is None or job.done():
            self._jobs[name] = asyncio.create_task(make(), name=name)

    async def _takeover(self, own_since: float | None) -> None:
        """Take over pending entries, batch after batch until none is left: a dead
        consumer's (idle reclaim_idle_s), ours left by a previous run (own_since).
        Up to ``dispatch_workers`` batches are processed at once, like fresh ones."""
        assert self.queue and self.dispatcher
        q = self.cfg.queue
        total = 0
        running: set[asyncio.Task[list[Any]]] = set()
        try:
            while not self.stop_event.is_set():
                while len(running) >= q.dispatch_workers:
                    _done, running = await asyncio.wait(
                        running, return_when=asyncio.FIRST_COMPLETED)
                    for t in _done:
                        t.result()  # a failed batch ends the pass; its entries stay ours
                own = None if own_since is None else max(0.0, time.time() - own_since)
                entries = await self.queue.reclaim(q.read_batch, self.dispatcher.held_ids(),
                                                   own_idle_s=own)
                if not entries:
                    break
                total += len(entries)
                task = asyncio.create_task(self.dispatcher.process(entries))
                # Held at once (process() marks them in its first step, before any await).
                await asyncio.sleep(0)
                running.add(task)
            if running:
                for t in (await asyncio.wait(running))[0]:
                    t.result()
                running = set()
        except Exception as e:  # Redis away: the next pass goes on
            log.warning("taking over pending entries: %s: %s", type(e).__name__, e)
        finally:
            if running:  # let the batches started finish (they record what they sent)
                for t in (await asyncio.wait(running))[0]:
                    if not t.cancelled() and t.exception() is not None:
                        log.warning("taking over: a batch failed: %s", t.exception())
        if total:
            log.info("took over %d pending entries%s", total,
                     " left by this consumer's previous run" if own_since is not None else "")

    async def _replay_spool(self) -> None:
        assert self.inbound is not None
        try:
            await self.inbound.replay_spool()
        except Exception as e:
            log.warning("replaying the receipt spool: %s: %s", type(e).__name__, e)

    async def _heartbeat(self) -> None:
        """While this key lives, other daemons leave our pending entries alone."""
        ttl_ms = int(max(2.0, 5 * self.cfg.daemon.housekeeping_interval_s) * 1000)
        await self.store.client.set(
            self.keys.heartbeat(self.consumer), int(time.time()), px=ttl_ms
        )

    async def _drained(self, depths: dict[str, dict[str, int]]) -> bool:
        if any(sum(d.values()) for d in depths.values()):
            return False
        if self.spool is not None and self.spool.active:
            return False
        redis = self.store.client
        awaiting = await redis.zcard(self.keys.awaiting_receipt)
        early = await redis.zcard(self.keys.early_receipts)
        return int(awaiting) == 0 and int(early) == 0

    def _status_line(self, depths: dict[str, dict[str, int]]) -> str:
        queued = sum(d["ready"] + d["delayed"] for d in depths.values())
        up: dict[str, int] = {}  # by protocol, so systemctl status tells SMPP from CMPP
        for b in self.pool.snapshot() if self.pool else []:
            up[b.protocol] = up.get(b.protocol, 0) + (b.state == "bound")
        done = self.dispatcher.processed if self.dispatcher else 0
        each = ", ".join(f"{p} {n}" for p, n in sorted(up.items()))
        line = (f"processed {done}; queued {queued}; binds up {sum(up.values())}"
                + (f" ({each})" if each else ""))
        pool = self.pool
        suspended = [c for c in pool.carriers() if pool.suspended(c)] if pool else []
        return line + (f"; suspended {', '.join(suspended)}" if suspended else "")

    # For the HTTP backend ------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        why: dict[str, Any] = {"redis": "ok" if self.redis_ok else "unreachable"}
        carriers: dict[str, str] = {}
        binds: list[dict[str, Any]] = []
        if self.pool is not None:
            pool = self.pool
            by: dict[str, bool] = {}
            for b in pool.snapshot():
                by[b.carrier] = by.get(b.carrier, False) or b.state == "bound"
                binds.append(b.public())
            # A suspended carrier takes no submits, bound or not: not "bound" here.
            carriers = {c: ("suspended" if pool.suspended(c) else
                            "bound" if up else "no bind up") for c, up in by.items()}
        why["carriers"] = carriers
        why["binds"] = binds
        ok = self.redis_ok and bool(carriers) and any(v == "bound" for v in carriers.values())
        return ok, why

