"""``campaigns.fanout_process``: the daemon starts and supervises its fan-out child.

The child (gatewayd.campaigns.worker) is ``gatewayd run -c <the same file>
--fanout-worker``, at ``campaigns.fanout_nice``, kept by the daemon's one child-process
machinery (gatewayd.ops.children): one that exits while the daemon runs is started again
(after 0.5 s, doubling to 10 s while it keeps dying within 10 s of its start) and counted
(``gatewayd_campaign_fanout_restarts_total``); a new child is started only once the old
one is reaped, so two never hold the same lease token at once. Stopping the daemon sends
TERM and after ``daemon.shutdown_timeout_s`` KILL; the child also dies with the daemon
(the kernel's parent-death signal).

The child counts ``gatewayd_campaign_recipients_total`` and serves it on its own port
(fanout_metrics_listen); the daemon reads it there at each scrape of its own /metrics
and adds it, with ``gatewayd_campaign_fanout_up``, by the machinery that adds its
webhook sender's series (gatewayd.ops.exposition.ChildMetrics: only from the child it
started, by its per-start token), so a fan-out in the child keeps the dashboard's
fan-out rate.
"""

from __future__ import annotations

import asyncio
import os
import sys

from gatewayd.campaigns.worker import ENV_CONSUMER, ENV_REDIS_URL, fanout_metrics_listen
from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.ops import metrics
from gatewayd.ops.children import Children
from gatewayd.ops.exposition import ChildMetrics
from gatewayd.ops.top import url_from_listen


def _fanout_series(name: bytes) -> bool:
    """The child's family (its _total and _created blocks): the daemon's own stays 0."""
    return name.startswith(b"gatewayd_campaign_recipients_")


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
        listen = fanout_metrics_listen(cfg)
        self.metrics = ChildMetrics("fan-out process", url_from_listen(listen) if listen else "",
                                    _fanout_series, metrics.FANOUT_UP,
                                    "gatewayd_campaign_recipients_total")

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.children.procs.get(0)

    def start(self) -> None:
        """Not waited for: the daemon's dispatch never waits on its fan-out."""
        assert self.cfg.source
        self.children.keep(0, [sys.executable, "-m", "gatewayd", "run", "-c",
                               self.cfg.source, "--fanout-worker"], self._env)

    def _env(self) -> dict[str, str]:
        return {**os.environ, ENV_REDIS_URL: self.redis_url, ENV_CONSUMER: self.consumer,
                **self.metrics.env()}

    def drain(self) -> None:
        """TERM: the child finishes its group in flight and stops; not started again."""
        self.children.drain()

    async def stop(self, timeout_s: float) -> None:
        await self.children.stop(timeout_s)
