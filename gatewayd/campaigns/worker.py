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

TERM/INT: finish the group in flight and stop; HUP: ignored (campaign keys need a
restart, as in the daemon); the daemon going away (even killed): stop too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from gatewayd.campaigns.fanout import CampaignRunner
from gatewayd.config import Config
from gatewayd.ops.gctune import tune_gc
from gatewayd.ops.startup import redis_answers
from gatewayd.store.connection import Store
from gatewayd.store.keys import keys_for

log = logging.getLogger("gatewayd.campaigns.worker")

# Set by the daemon for its child: its Redis URL (an embedded server's is known only to
# it) and its consumer name (the child's lease token derives from it).
ENV_REDIS_URL = "GATEWAYD_FANOUT_REDIS_URL"
ENV_CONSUMER = "GATEWAYD_FANOUT_CONSUMER"


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
            runner = CampaignRunner(redis, keys_for(self.cfg), self.cfg, manage=False,
                                    token=self.token)
            tune_gc()
            log.info("fan-out process started", extra={"pid": os.getpid()})
            watch = asyncio.create_task(self._watch(parent), name="watch")
            await runner.run(self.stop_event, interval_s=0.2)
            watch.cancel()
        finally:
            await self.store.close()
        log.info("fan-out process stopped")
        return 0

    async def _watch(self, parent: int) -> None:
        """Stop when the daemon is gone (the parent-death signal covers a killed daemon;
        this covers the rest)."""
        while not self.stop_event.is_set():
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("fan-out process: the daemon is gone; stopping")
                self.stop_event.set()
