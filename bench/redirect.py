"""Short-link redirect throughput: wrk against the redirector on one core.

Starts a private redis-server, writes --links short links, starts the redirector
(gatewayd.http.links.LinkServer, uvloop) in its own process (one Python process: one
core at most; ``--pin`` also pins it to CPU 0 and wrk to CPU 1 with ``taskset``), and
drives it with ``wrk`` (Debian's package): random codes from the set, a browser
User-Agent, keep-alive connections. Saturating runs print requests/s and the
redirector's CPU per request; paced runs (each connection waits between requests so
that together they offer --rate/s) print the latency p50/p99 at that load (wrk's own
distribution) (1e6 / that = redirects a core can
serve); every answer must be a 302 (wrk counts the others as non-2xx/3xx). Median of --runs with min
and max; writes bench/results/redirect.json. Target: >= 5,000/s, p99 <= 5 ms at 5,000/s.

    python -m bench redirect [--quick] [--duration 10] [--connections 32] [--runs 3] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import ProcSampler, summary, table, write_result, wrk_figures
from bench.harness import ROOT, bench_redis_server
from gatewayd.store.embedded import EmbeddedRedis, free_port

_WRK_LUA = """
local codes = {}
for line in io.lines("%s") do codes[#codes + 1] = line end
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/" .. codes[math.random(#codes)], {["User-Agent"] =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"})
end
%s
"""

# Paced load: each connection waits before its next request so that all of them together
# offer --rate requests/s. A saturating closed-loop run measures throughput, but its
# latency is queueing by construction (connections / rate); the p99 promise is about a
# redirector serving a given load, so it is read at that load.
# The wait is drawn uniformly around its mean (connections started together would
# otherwise stay in step and arrive in bursts of all of them at once), and its mean is
# calibrated by a short first run: a connection's cycle is its wait plus the answer's
# latency, so the wait is (connections / rate) less the latency that run observed.
_WRK_DELAY = """
delay = function() return %.3f * (0.5 + math.random()) end
"""


async def _serve(redis_url: str, port: int) -> None:
    from gatewayd.config import Config
    from gatewayd.http.links import LinkServer
    from gatewayd.pipeline.events import Ledger
    from gatewayd.store.connection import connect
    from gatewayd.store.keys import Keys

    r = connect(redis_url)
    keys = Keys("gw:")
    srv = LinkServer(f"127.0.0.1:{port}", r, keys, Ledger(keys, Config(), r))
    await srv.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _make_links(redis_url: str, n: int) -> list[str]:
    from gatewayd.campaigns.links import LinkMaker, link_fields, write
    from gatewayd.store.keys import Keys

    r = aioredis.from_url(redis_url, decode_responses=True)
    keys = Keys("gw:")
    await r.flushdb()
    maker = LinkMaker(r, keys, base_url="https://s.example.cn/")
    await maker.reserve(n)
    codes = [maker.take() for _ in range(n)]
    for start in range(0, n, 5000):
        pipe = r.pipeline(transaction=False)
        for i, code in enumerate(codes[start:start + 5000], start):
            write(pipe, keys, code, link_fields(f"https://shop.example.com/p/{i}", f"b.{i}",
                                                keys.funnel("bench"), "A", "bench", "PROMO",
                                                f"86139{i:08d}", "1.0"), 86400)
        await pipe.execute()
    await r.aclose()
    return codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench redirect",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--links", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=10, help="seconds a run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=5000,
                    help="offered requests/s of the paced runs that read the latency "
                         "(0: no paced runs)")
    ap.add_argument("--quick", action="store_true", help="--links 5000 --duration 3 --runs 1")
    ap.add_argument("--pin", action="store_true",
                    help="pin the redirector to CPU 0 and wrk to CPU 1 (taskset): only on a "
                         "quiet machine, else the pinned core's other tenants set the figures")
    ap.add_argument("--serve", nargs=2, metavar=("REDIS_URL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.install()
        asyncio.run(_serve(args.serve[0], int(args.serve[1])))
        return 0
    if args.quick:
        args.links = 5000 if args.links == 100_000 else args.links
        args.duration = 3 if args.duration == 10 else args.duration
        args.runs = 1
    wrk = shutil.which("wrk")
    if not wrk:
        print("redirect: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    pin = args.pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2
    runs: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-links-") as d:
        srv = EmbeddedRedis(Path(d), port=free_port(), binary=bench_redis_server())
        url = srv.start()
        try:
            codes = asyncio.run(_make_links(url, args.links))
            codes_file = Path(d) / "codes.txt"
            codes_file.write_text("\n".join(codes) + "\n")
            port = free_port()
            cmd = [sys.executable, "-m", "bench.redirect", "--serve", url, str(port)]
            proc = subprocess.Popen((["taskset", "-c", "0"] if pin else []) + cmd, cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit("redirector did not start")
                plan = [("max", i) for i in range(args.runs)]
                if args.rate > 0:
                    plan += [("paced", i) for i in range(args.runs)]
                cycle_ms = 1000.0 * args.connections / max(1, args.rate)
                wait_ms = cycle_ms
                if args.rate > 0:
                    plan.insert(args.runs, ("calibrate", 0))
                for mode, i in plan:
                    script = Path(d) / f"wrk-{mode}{i}.lua"
                    pace = (_WRK_DELAY % wait_ms) if mode != "max" else ""
                    script.write_text(_WRK_LUA % (codes_file, 7 + i, pace))
                    secs = min(3, args.duration) if mode == "calibrate" else args.duration
                    wcmd = [wrk, "-t", "1", "-c", str(args.connections), "-d",
                            f"{secs}s", "--latency", "-s", str(script),
                            f"http://127.0.0.1:{port}"]
                    with ProcSampler(proc.pid) as sampler:
                        out = subprocess.run((["taskset", "-c", "1"] if pin else []) + wcmd,
                                             capture_output=True, text=True, check=True).stdout
                    r: dict[str, Any] = dict(wrk_figures(out))
                    # A redirect answers 302: wrk's "Non-2xx or 3xx", under this name here.
                    r["non_3xx"] = r.pop("non_2xx")
                    r["cpu_pct"] = sampler.cpu_percent
                    r["cpu_us_per_req"] = 1e6 * sampler.cpu_s / max(1, r["requests"])
                    r["load_1m"] = os.getloadavg()[0]
                    r["mode"] = mode
                    if mode == "calibrate":
                        latency_ms = max(0.0, 1000.0 * args.connections / r["rps"] - wait_ms)
                        wait_ms = max(0.1, cycle_ms - latency_ms)
                        print(f"calibrated: {r['rps']:,.0f} req/s with a {cycle_ms:.2f} ms "
                              f"wait -> {wait_ms:.2f} ms", flush=True)
                        continue
                    r["wait_ms"] = wait_ms if mode == "paced" else 0.0
                    (runs if mode == "max" else paced).append(r)
                    print(f"{mode} run {i + 1}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                          f"p99 {r['p99_ms']:.2f} ms, redirector CPU {r['cpu_pct']:.0f} % "
                          f"({r['cpu_us_per_req']:.0f} us a request), non-302 "
                          f"{r['non_3xx']}", flush=True)
                    time.sleep(1)
            finally:
                proc.terminate()
                proc.wait(10)
        finally:
            srv.stop()

    def s(key: str, of: list[dict[str, Any]] = runs) -> dict[str, float]:
        return summary([float(r[key]) for r in of])

    result = {"links": args.links, "connections": args.connections,
              "duration_s": args.duration, "pinned": bool(pin), "rps": s("rps"),
              "p50_ms": s("p50_ms"), "p99_ms": s("p99_ms"),
              "cpu_us_per_req": s("cpu_us_per_req"), "runs": runs,
              "paced_rate": args.rate, "paced": paced}
    if paced:
        result |= {"paced_rps": s("rps", paced), "paced_p50_ms": s("p50_ms", paced),
                   "paced_p99_ms": s("p99_ms", paced)}
    path = write_result("redirect", result)
    print(table([
        ("redirects/s (one core)", f"{result['rps']['median']:,.0f} (min "
         f"{result['rps']['min']:,.0f}, max {result['rps']['max']:,.0f})"),
        ("latency p50 / p99", f"{result['p50_ms']['median']:.2f} / "
         f"{result['p99_ms']['median']:.2f} ms"),
        ("redirector CPU a request", f"{result['cpu_us_per_req']['median']:.0f} us"),
    ] + ([(f"at {args.rate:,}/s offered: p50 / p99",
           f"{result['paced_p50_ms']['median']:.2f} / {result['paced_p99_ms']['median']:.2f} ms"
           f" ({result['paced_rps']['median']:,.0f} req/s served)")] if paced else [])))
    print(f"-> {path}")
    return 0 if all(r["non_3xx"] == 0 for r in runs + paced) else 1


if __name__ == "__main__":
    sys.exit(main())
