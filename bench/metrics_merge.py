"""The daemon's /metrics with its webhook sender process's series: what one scrape costs.

Renders the registry (three classes, four carriers and five webhook endpoints with
samples: ~37 KB), times its rendering and the merge of a sender's exposition the same
size (on the daemon's loop), then the daemon's read of a real sender /metrics site in
its own process (gatewayd.ops.exposition.ChildMetrics, as SenderProcess uses it: the
read over loopback with its token check, waited off the loop, plus the merge).
Medians; no target (the figures are in README "Webhooks").

    python -m bench.metrics_merge [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from prometheus_client import generate_latest

from gatewayd.ops import metrics
from gatewayd.ops.exposition import ChildMetrics, merge
from gatewayd.store.embedded import free_port
from gatewayd.webhooks.process import _sender_series, scrape_url

_CHILD = """
import asyncio, sys
from gatewayd.ops import metrics
from gatewayd.ops.exposition import serve_metrics
for e in range(5):
    metrics.WEBHOOK_DELIVERED.labels(f"ep{e}").inc(5)
    metrics.WEBHOOK_LATENCY.labels(f"ep{e}").observe(0.02)
async def main() -> None:
    await serve_metrics(sys.argv[1], metrics.REGISTRY)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _fill() -> None:
    metrics.zero_known(["otp", "transactional", "marketing"], [f"c{i}" for i in range(4)])
    for e in range(5):
        metrics.WEBHOOK_DELIVERED.labels(f"ep{e}").inc(5)
        metrics.WEBHOOK_LATENCY.labels(f"ep{e}").observe(0.02)
        metrics.WEBHOOK_BACKLOG.labels(f"ep{e}").set(1)


def _time(fn: object, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


async def _fetches(own: bytes, sender: ChildMetrics, n: int) -> float:
    for _ in range(100):  # the site up
        if b"gatewayd_webhook_sender_up 1.0" in await sender.exposition(own):
            break
        await asyncio.sleep(0.05)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        await sender.exposition(own)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics_merge")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args(argv)
    _fill()
    own = generate_latest(metrics.REGISTRY)
    listen = f"127.0.0.1:{free_port()}"
    sender = ChildMetrics("webhook sender", scrape_url(listen), _sender_series,
                          metrics.WEBHOOK_SENDER_UP, "gatewayd_webhook_*")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, listen],
                             env={**os.environ, **sender.env()})
    try:
        render = _time(lambda: generate_latest(metrics.REGISTRY), args.n)
        merged = _time(lambda: merge(own, own, _sender_series), args.n)
        fetched = asyncio.run(_fetches(own, sender, args.n))
    finally:
        child.terminate()
        child.wait()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"exposition {len(own)} B: render {render * 1e3:.2f} ms, merge {merged * 1e3:.2f} "
          f"ms, read + merge {fetched * 1e3:.2f} ms (medians of {args.n}; load {load})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
