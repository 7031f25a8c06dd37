"""Another process's series in this process's /metrics: the daemon's exposition with its
webhook sender's ``gatewayd_webhook_*`` families (gatewayd.webhooks.process) and its
fan-out child's ``gatewayd_campaign_recipients_total`` (gatewayd.campaigns.supervisor).
The daemon's side (ChildMetrics: read the child's /metrics at each scrape, check it is
its own child, merge) and the child's (serve_metrics) are here, one copy for both.

Both sides are prometheus_client's text format, where every family (and every
``_created`` companion) is a block that starts with its ``# HELP`` line. The merge works
on those blocks: the other process's blocks that ``take`` selects replace this
process's blocks of the same name, so no name gets two HELP/TYPE lines (Prometheus
rejects the whole scrape for that) and no family mixes two processes' samples.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("gatewayd.ops")

_HELP = b"# HELP "


def blocks(text: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, block)`` for each family of an exposition, in order; text before the
    first HELP line (none from prometheus_client) is kept under the name b""."""
    out: list[tuple[bytes, bytes]] = []
    start = 0
    while start < len(text):
        nxt = text.find(b"\n" + _HELP, start)
        end = len(text) if nxt < 0 else nxt + 1
        chunk = text[start:end]
        name = chunk[len(_HELP):].split(b" ", 1)[0].rstrip(b"\n") \
            if chunk.startswith(_HELP) else b""
        out.append((name, chunk))
        start = end
    return out


def merge(own: bytes, other: bytes, take: Callable[[bytes], bool]) -> bytes:
    """``own`` without the families ``other`` provides, then those of ``other`` that
    ``take(name)`` selects."""
    taken = [(n, b) for n, b in blocks(other) if n and take(n)]
    names = {n for n, _ in taken}
    kept = b"".join(b for n, b in blocks(own) if n not in names)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    return kept + b"".join(b if b.endswith(b"\n") else b + b"\n" for _, b in taken)


# A child's series in the daemon's /metrics ----------------------------------------------
# The daemon's wait for a child's /metrics at a scrape: a local process answers in
# milliseconds; a hung one must not make the daemon's own scrape time out (Prometheus'
# default scrape_timeout is 10 s). Children are read concurrently.
SCRAPE_TIMEOUT_S = 2.0
# The per-start token the daemon gives a child (environment: readable by its user only)
# and the child's answer header carrying it: the daemon merges a /metrics only when it
# carries its current child's token, not whatever process holds that port (another
# daemon's child with the same ports, a stale or foreign server).
ENV_TOKEN = "GATEWAYD_CHILD_TOKEN"
TOKEN_HEADER = "X-Gatewayd-Child"


class ChildMetrics:
    """The daemon's side for one child process serving /metrics at ``url``: at each
    scrape of the daemon's /metrics, its families that ``take`` selects are added (merge)
    with the gauge ``up`` (name, help): 1 read now, 0 not (stopped, restarting, hung, or
    another process on that port). ``url`` "": the child serves none; nothing added."""

    def __init__(self, what: str, url: str, take: Callable[[bytes], bool],
                 up: tuple[str, str], series: str) -> None:
        self.what = what  # "webhook sender": for the log
        self.url = url
        self.take = take
        self.up_name, self.up_help = up
        self.series = series  # what goes missing, for the log: "gatewayd_webhook_*"
        self.token = ""  # the current child's (env(): a new one each start)
        self._up: bool | None = None  # the last scrape's answer, for the log

    def env(self) -> dict[str, str]:
        """The environment entry of a child being started: a new token, from now on the
        only one accepted (the previous child is gone)."""
        self.token = secrets.token_hex(16)
        return {ENV_TOKEN: self.token}

    async def read(self) -> bytes:
        """The child's exposition, or b"" (not read: logged when that changes)."""
        if not self.url:
            return b""
        body = b""
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as s, \
                    s.get(self.url) as r:
                answer = r.headers.get(TOKEN_HEADER, "")
                if r.status != 200:
                    why = f"HTTP {r.status}"
                elif not (self.token and hmac.compare_digest(answer, self.token)):
                    why = f"another process answers there, not this daemon's {self.what}"
                else:
                    body = await r.read()
                    why = ""
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            why = type(e).__name__
        up = bool(body)
        if up != self._up:
            if up:
                log.info("%s: /metrics read", self.what, extra={"url": self.url})
            else:
                log.warning("%s: its /metrics at %s was not read (%s): the daemon's "
                            "/metrics has no %s series now", self.what, self.url, why,
                            self.series)
            self._up = up
        return body

    def add(self, own: bytes, other: bytes) -> bytes:
        """``own`` with ``other``'s selected families and the up gauge."""
        if not self.url:
            return own
        gauge = (f"# HELP {self.up_name} {self.up_help}\n# TYPE {self.up_name} gauge\n"
                 f"{self.up_name} {1.0 if other else 0.0}\n").encode()
        return merge(own, other, self.take) + gauge

    async def exposition(self, own: bytes) -> bytes:
        return self.add(own, await self.read())


def combined(children: Sequence[ChildMetrics]) -> Callable[[bytes], Awaitable[bytes]]:
    """The daemon's exposition hook (HttpServer.exposition) for several children: read
    at once (one hung child costs a scrape SCRAPE_TIMEOUT_S, not one a child)."""

    async def exposition(own: bytes) -> bytes:
        others = await asyncio.gather(*(c.read() for c in children))
        for child, other in zip(children, others, strict=True):
            own = child.add(own, other)
        return own

    return exposition


# The child's side -----------------------------------------------------------------------
async def serve_metrics(listen: str, registry: CollectorRegistry) -> web.AppRunner:
    """/metrics (``registry``) and /healthz on ``listen`` (HOST:PORT); the answers carry
    the token the daemon gave this process, if any (ENV_TOKEN). OSError if the port is
    taken."""
    token = os.environ.get(ENV_TOKEN, "")
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    if token:
        headers[TOKEN_HEADER] = token

    async def get_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers=headers)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    site = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await site.setup()
    host, _, port = listen.rpartition(":")
    try:
        await web.TCPSite(site, host.strip("[]") or "127.0.0.1", int(port),
                          reuse_address=True).start()
    except OSError:
        await site.cleanup()
        raise
    return site
