"""``webhooks.sender = "process"`` (the default): the daemon's webhook sender as a child
process, so that its CPU (~9 us an event, ~30 us a message with every state pushed) is
not taken from the dispatching loop.

The daemon side (SenderProcess) starts ``gatewayd webhooks run -c <the same file>
--child`` and keeps it with the machinery that keeps the ``http.workers`` intake
processes (gatewayd.ops.children): restarted if it exits while the daemon runs
(``gatewayd_webhook_sender_restarts_total``), HUP forwarded, TERM on the daemon's stop
and KILL after ``daemon.shutdown_timeout_s``, TERM from the kernel if the daemon is
killed. The child side (serve) is the runner of ``gatewayd webhooks run`` (the same lease,
cursor and guarantees: a sender that dies sends again, from the cursor, what was not
done), plus: the daemon's Redis URL from the environment (an embedded server's is known
only to it), a watch of its parent, HUP re-reads the config file's ``[webhooks]`` (a
file that fails its checks changes nothing), and /metrics and /healthz on a port of its
own (metrics_listen), like each intake worker.

The daemon's /metrics carries the sender's ``gatewayd_webhook_*`` series too: at each
scrape it reads the child's /metrics over loopback and adds them (gatewayd.ops.
exposition.ChildMetrics: only an answer carrying the token this daemon gave its current
child, never another process on that port), so a Prometheus that scrapes the daemon
alone keeps its webhook series and alerts; ``gatewayd_webhook_sender_up`` says whether
they are there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import msgspec

from gatewayd.config import Config, load_config
from gatewayd.errors import ConfigError
from gatewayd.ops import metrics
from gatewayd.ops.children import Children
from gatewayd.ops.exposition import ChildMetrics, serve_metrics
from gatewayd.ops.top import url_from_listen
from gatewayd.store.connection import Store, redis_answers
from gatewayd.store.keys import keys_for
from gatewayd.webhooks.runner import WebhookRunner

log = logging.getLogger("gatewayd.webhooks")

# Set by the daemon for its sender: its Redis URL.
ENV_REDIS_URL = "GATEWAYD_WEBHOOKS_REDIS_URL"
# [webhooks] keys a HUP applies in the running sender process; the rest need a restart.
LIVE = ("endpoints", "callback_prefixes", "callback_secret_env", "batch", "retry_for_s",
        "backoff_min_s", "backoff_max_s")


def metrics_listen(cfg: Config) -> str:
    """``host:port`` of the sender process's /metrics, or "" for none: webhooks.
    metrics_listen, else the next own port after the intake workers' (http.listen's
    host, http.worker_metrics_port or its port + 1000, + http.workers) when http.listen
    has a fixed port."""
    w = cfg.webhooks.metrics_listen
    if w == "off":
        return ""
    if w:
        return w
    host, _, port = cfg.http.listen.rpartition(":")
    if not cfg.http.enabled or not port.isdigit() or int(port) == 0:
        return ""
    base = cfg.http.worker_metrics_port or int(port) + 1000
    return f"{host}:{base + cfg.http.workers}"


def scrape_url(listen: str) -> str:
    """The URL the daemon reads its sender's /metrics at ("" for none): a wildcard
    address (all interfaces) is reached on loopback, as `gatewayd top` does."""
    return url_from_listen(listen) if listen else ""


def _sender_series(name: bytes) -> bool:
    """The families the sender process owns: gatewayd_webhook_*, but not the daemon's
    own gatewayd_webhook_sender_* (its processes, restarts and up: the child exports
    the first two at 0)."""
    return name.startswith(b"gatewayd_webhook_") and \
        not name.startswith(b"gatewayd_webhook_sender_")


class SenderProcess:
    """The daemon's side: one supervised child running the sender."""

    def __init__(self, cfg: Config, redis_url: str) -> None:
        if not cfg.source:
            raise ConfigError('webhooks.sender = "process": the sender process reads the '
                              "daemon's config file; run the daemon with -c FILE (or set "
                              'webhooks.sender = "inline")')
        self.cfg = cfg
        self.redis_url = redis_url
        self.children = Children("webhook sender", running=metrics.WEBHOOK_SENDERS,
                                 restarts=metrics.WEBHOOK_SENDER_RESTARTS)
        self.metrics = ChildMetrics("webhook sender", scrape_url(metrics_listen(cfg)),
                                    _sender_series, metrics.WEBHOOK_SENDER_UP,
                                    "gatewayd_webhook_*")

    async def exposition(self, own: bytes) -> bytes:
        """The daemon's exposition ``own`` with the sender's gatewayd_webhook_* series
        (read from its /metrics now, if it is this daemon's sender: its token) and
        gatewayd_webhook_sender_up; without them, and up 0, if it does not answer within
        SCRAPE_TIMEOUT_S (stopped, restarting, hung) or another process answers there.
        Unchanged when the sender serves no /metrics (metrics_listen "off")."""
        return await self.metrics.exposition(own)

    def pid(self) -> int | None:
        proc = self.children.procs.get(0)
        return proc.pid if proc is not None and proc.returncode is None else None

    def start(self) -> None:
        self.children.keep(0, [sys.executable, "-m", "gatewayd", "webhooks", "run", "-c",
                               self.cfg.source, "--child"], self._env)

    def _env(self) -> dict[str, str]:
        return {**os.environ, ENV_REDIS_URL: self.redis_url, **self.metrics.env()}

    def hup(self) -> None:
        self.children.hup()

    def drain(self) -> None:
        self.children.drain()

    async def stop(self, timeout_s: float) -> None:
        await self.children.stop(timeout_s)


# The child's side -------------------------------------------------------------------
async def serve(cfg: Config, listen: str, *, child: bool) -> int:
    """Run the sender until TERM/INT (or, as the daemon's child, its parent going away);
    /metrics on ``listen`` ("" none)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = Store(cfg)
    if child and os.environ.get(ENV_REDIS_URL):
        store.url = os.environ[ENV_REDIS_URL]
    redis = await store.open()
    # Waits out a Redis that cannot answer yet, as the daemon's start does (its runner
    # would try for ever, a warning a second); past it: exit 3, one line.
    up = False
    try:
        up = await redis_answers(redis, cfg, store.url, stop=stop, what="webhook sender")
    finally:
        if not up:  # stopped while waiting, or waited in vain
            await store.close()
    if not up:
        return 0
    runner = WebhookRunner(redis, keys_for(cfg), cfg)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(runner))
    site = None
    if listen:
        try:
            site = await serve_metrics(listen, metrics.REGISTRY)
        except OSError as e:  # sending matters more than its figures: said, and on
            log.error("webhook sender: cannot serve /metrics on %s: %s", listen, e)
    watch = asyncio.create_task(_watch(os.getppid(), stop)) if child else None
    if child:
        log.info("webhook sender process started",
                 extra={"pid": os.getpid(), "daemon": os.getppid(), "metrics": listen})
    try:
        await runner.run(stop)
    finally:
        if watch is not None:
            watch.cancel()
        if site is not None:
            await site.cleanup()
        await store.close()
    return 0


def _reload(runner: WebhookRunner) -> None:
    """HUP: the config file's live [webhooks] keys (the runner reads its endpoints from
    ``runner.cfg`` within a second); a file that fails its checks changes nothing."""
    running = runner.cfg
    try:
        new = load_config(running.source, need_secrets=False)
    except ConfigError as e:
        log.error("webhook sender: reload refused, running as before: %s", e)
        return
    live: dict[str, Any] = {k: getattr(new.webhooks, k) for k in LIVE}
    runner.cfg = msgspec.structs.replace(
        running, webhooks=msgspec.structs.replace(running.webhooks, **live))
    log.info("webhook sender: reloaded",
             extra={"endpoints": [e.name for e in new.webhooks.endpoints]})


async def _watch(parent: int, stop: asyncio.Event) -> None:
    """Stop when the daemon is gone (its parent-death signal covers a killed daemon on
    Linux; this covers the rest)."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("webhook sender: the daemon is gone; stopping")
            stop.set()
            return
