"""The fan-out child: campaign recipients into the queues, out of the dispatching loop.

Started and supervised by the daemon (gatewayd.campaigns.supervisor) as ``gatewayd run
-c <file> --fanout-worker`` when ``campaigns.fanout_process`` is on. It runs the
fan-out half of the daemon's CampaignRunner (leases, slices, pace) on Redis alone: no
carrier, no queue reading, no listener. The daemon keeps the other half (starting
scheduled campaigns, the opt-out brake, the campaign metrics), so a slice's rendering
(~1-2 ms of CPU) never runs in the loop that hands codes to the carriers.

Exactly once as in the daemon: each slice is one script call that checks the campaign's
cursor and status (lua/fanout.lua), so a child killed mid-group leaves every slice
either queued with its cursor moved or not at all, and the next holder starts from the
cursor. Its lease token is stable (the daemon's consumer name + "-fanout"), so the
child the daemon starts again takes its campaigns back at once.

Its /metrics (gatewayd_campaign_recipients_total, counted here) on its own port
(fanout_metrics_listen), read by the daemon at each scrape of its own.

TERM/INT: finish the group in flight and stop; HUP: ignored (campaign keys need a
restart, as in the daemon); the daemon going away (even killed): stop too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from gatewayd.campaigns.fanout import CampaignRunner
from gatewayd.config import Config
from gatewayd.ops import metrics
from gatewayd.ops.exposition import serve_metrics
from gatewayd.ops.gctune import tune_gc
from gatewayd.store.connection import Store, redis_answers
from gatewayd.store.keys import keys_for

log = logging.getLogger("gatewayd.campaigns.worker")

# Set by the daemon for its child: its Redis URL (an embedded server's is known only to
# it) and its consumer name (the child's lease token derives from it).
ENV_REDIS_URL = "GATEWAYD_FANOUT_REDIS_URL"
ENV_CONSUMER = "GATEWAYD_FANOUT_CONSUMER"


def fanout_metrics_listen(cfg: Config) -> str:
    """``host:port`` of the fan-out child's /metrics, or "" for none: campaigns.
    fanout_metrics_listen, else the own port after the webhook sender's (http.listen's
    host, http.worker_metrics_port or its port + 1000, + http.workers + 1) when
    http.listen has a fixed port."""
    w = cfg.campaigns.fanout_metrics_listen
    if w == "off":
        return ""
    if w:
        return w
    host, _, port = cfg.http.listen.rpartition(":")
    if not cfg.http.enabled or not port.isdigit() or int(port) == 0:
        return ""
    base = cfg.http.worker_metrics_port or int(port) + 1000
    return f"{host}:{base + cfg.http.workers + 1}"


def lease_token(consumer: str) -> str:
    return f"{consumer}-fanout"


class FanoutWorker:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg)
        if os.environ.get(ENV_REDIS_URL):
            self.store.url = os.environ[ENV_REDIS_URL]
        self.token = lease_token(os.environ.get(ENV_CONSUMER) or "gatewayd")
        self.stop_event = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # not the default: exit
        parent = os.getppid()
        redis = await self.store.open()
        try:
            # Waits out a Redis that cannot answer yet, as the daemon's start does.
            if not await redis_answers(redis, self.cfg, self.store.url, stop=self.stop_event,
                                       what="fan-out process"):
                return 0
            site = await self._serve_metrics()
            runner = CampaignRunner(redis, keys_for(self.cfg), self.cfg, manage=False,
                                    token=self.token)
            tune_gc()
            log.info("fan-out process started", extra={"pid": os.getpid()})
            watch = asyncio.create_task(self._watch(parent), name="watch")
            try:
                await runner.run(self.stop_event, interval_s=0.2)
            finally:
                watch.cancel()
                if site is not None:
                    await site.cleanup()
        finally:
            await self.store.close()
        log.info("fan-out process stopped")
        return 0

    async def _serve_metrics(self) -> web.AppRunner | None:
        """Its gatewayd_campaign_recipients_total for the daemon's /metrics
        (fanout_metrics_listen); a port it cannot take is said, and the fan-out goes on:
        queuing matters more than its figures."""
        listen = fanout_metrics_listen(self.cfg)
        if not listen:
            return None
        try:
            return await serve_metrics(listen, metrics.REGISTRY)
        except OSError as e:
            log.error("fan-out process: cannot serve /metrics on %s: %s", listen, e)
            return None

    async def _watch(self, parent: int) -> None:
        """Stop when the daemon is gone (the parent-death signal covers a killed daemon;
        this covers the rest)."""
        while not self.stop_event.is_set():
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("fan-out process: the daemon is gone; stopping")
                self.stop_event.set()
