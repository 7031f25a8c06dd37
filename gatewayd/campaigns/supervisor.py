"""``campaigns.fanout_process``: the daemon starts and supervises its fan-out child.

The child (gatewayd.campaigns.worker) is ``gatewayd run -c <the same file>
--fanout-worker``, at ``campaigns.fanout_nice``, kept by the daemon's one child-process
machinery (gatewayd.ops.children): one that exits while the daemon runs is started again
(after 0.5 s, doubling to 10 s while it keeps dying within 10 s of its start) and counted
(``gatewayd_campaign_fanout_restarts_total``); a new child is started only once the old
one is reaped, so two never hold the same lease token at once. Stopping the daemon sends
TERM and after ``daemon.shutdown_timeout_s`` KILL; the child also dies with the daemon
(the kernel's parent-death signal).
"""

from __future__ import annotations

import asyncio
import os
import sys

from gatewayd.campaigns.worker import ENV_CONSUMER, ENV_REDIS_URL
from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.ops import metrics
from gatewayd.ops.children import Children


class FanoutProcess:
    def __init__(self, cfg: Config, redis_url: str, consumer: str) -> None:
        if not cfg.source:
            raise ConfigError("campaigns.fanout_process: the child reads the daemon's "
                              "config file; run the daemon with -c FILE")
        self.cfg = cfg
        self.redis_url = redis_url
        self.consumer = consumer
        self.children = Children("fan-out process", nice=cfg.campaigns.fanout_nice,
                                 restarts=metrics.FANOUT_RESTARTS)

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.children.procs.get(0)

    def start(self) -> None:
        """Not waited for: the daemon's dispatch never waits on its fan-out."""
        assert self.cfg.source
        self.children.keep(0, [sys.executable, "-m", "gatewayd", "run", "-c",
                               self.cfg.source, "--fanout-worker"], self._env)

    def _env(self) -> dict[str, str]:
        return {**os.environ, ENV_REDIS_URL: self.redis_url, ENV_CONSUMER: self.consumer}

    def drain(self) -> None:
        """TERM: the child finishes its group in flight and stops; not started again."""
        self.children.drain()

    async def stop(self, timeout_s: float) -> None:
        await self.children.stop(timeout_s)
