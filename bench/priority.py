"""Priority under load: a marketing flood drains while codes (OTP) arrive at --otp-rate/s.

Queues --n marketing messages (Chinese, every policy on; see bench.harness), starts one
``gatewayd run --burst`` and, while the flood drains, enqueues OTP messages through
gatewayd.client at --otp-rate a second (in 10 ms ticks) until the marketing backlog is
gone. Figures: OTP queue->submit latency (status submitted_at - enqueued_at) p50/p99/max,
and the marketing rate meanwhile. Median of --runs with min and max; writes
bench/results/priority.json.

    python -m bench priority [--quick] [-n 100000] [--otp-rate 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench import harness
from bench.common import summary, table, write_result
from bench.e2e import _fmt, analyse
from gatewayd.client import Client


async def _feed_otp(url: str, rate: float, stop_when_empty: str, run: int
                    ) -> list[str]:
    """Enqueue codes at `rate`/s until the marketing stream is empty; returns their ids."""
    ids: list[str] = []
    tick = 0.01
    sent = 0
    r = aioredis.from_url(url, decode_responses=True)
    # Codes start once the daemon is up and draining (its start-up is not the point).
    first = int(await r.xlen(stop_when_empty))
    while int(await r.xlen(stop_when_empty)) >= first:
        await asyncio.sleep(0.01)
    async with Client(url, prefix=harness.PREFIX) as c:
        t0 = time.monotonic()
        i = 0
        while True:
            due = int((time.monotonic() - t0) * rate)
            batch = [{"to": f"+8615{run:01d}{(sent + k) % 100_000_000:08d}",
                      "text": f"Your verification code is {100000 + (sent + k) % 900000}.",
                      "category": "otp"} for k in range(due - sent)]
            if batch:
                ids += [m for m, _ in await c.send(batch, source="bench")]
                sent += len(batch)
            i += 1
            if i % 10 == 0 and int(await r.xlen(stop_when_empty)) == 0:
                break
            await asyncio.sleep(tick)
    await r.aclose()
    return ids


def one_run(rig: harness.Rig, n: int, rate: float, run: int,
            opts: harness.GatewaydOptions) -> dict[str, Any]:
    rig.flush()
    flood = harness.make_messages(n, run=run, mix=(0.0, 0.0, 1.0))
    flood_ids = rig.enqueue(flood)
    cfg = rig.config(opts)
    proc = rig.gatewayd(cfg, timeout_s=max(120.0, n / 300))
    try:
        otp_ids = asyncio.run(_feed_otp(rig.redis_url, rate,
                                        f"{harness.PREFIX}q:{{marketing}}", run))
        _, err = proc.communicate(timeout=max(150.0, n / 300))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"gatewayd exited {proc.returncode}: {err.decode()[-2000:]}")
    otp = rig.statuses(otp_ids)
    lat = sorted(float(s["submitted_at"]) - float(s["enqueued_at"])
                 for s in otp if s.get("submitted_at") and s.get("enqueued_at"))
    mk = analyse(rig.statuses(flood_ids))
    return {
        "n": n, "otp_sent": len(otp_ids), "otp_submitted": len(lat),
        "otp_p50_ms": 1000 * harness.percentile(lat, 50),
        "otp_p99_ms": 1000 * harness.percentile(lat, 99),
        "otp_max_ms": 1000 * (lat[-1] if lat else 0.0),
        "marketing_final_per_s": mk["final_per_s"], "marketing_states": mk["states"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench priority",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="marketing messages in the flood")
    ap.add_argument("--otp-rate", type=float, default=200.0, help="codes a second")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="-n 5000 --runs 1 unless given")
    ap.add_argument("--read-batch", type=int, default=0, help="0: gatewayd's default")
    ap.add_argument("--workers", type=int, default=0, help="dispatch_workers; 0: default")
    ap.add_argument("--window", type=int, default=1000, help="gatewayd's window per bind")
    ap.add_argument("--name", default="priority", help="result file name")
    args = ap.parse_args(argv)
    opts = harness.GatewaydOptions(read_batch=args.read_batch, dispatch_workers=args.workers,
                                   window=args.window)
    if args.quick:
        args.n = 5000 if args.n == 100_000 else args.n
        args.runs = 1 if args.runs == 3 else args.runs
    runs = []
    with harness.Rig() as rig:
        print(f"priority: {args.n:,} marketing + OTP at {args.otp_rate:.0f}/s x {args.runs} "
              f"runs; recipients in {rig.zone} (local {rig.zone_local})", flush=True)
        for i in range(args.runs):
            r = one_run(rig, args.n, args.otp_rate, i, opts)
            runs.append(r)
            print(f"run {i + 1}: OTP p50 {r['otp_p50_ms']:.1f} ms, p99 {r['otp_p99_ms']:.1f} ms "
                  f"({r['otp_submitted']}/{r['otp_sent']} codes); marketing "
                  f"{r['marketing_final_per_s']:,.0f} final/s", flush=True)

    def s(key: str) -> dict[str, float]:
        return summary([float(r[key]) for r in runs])

    result = {"n": args.n, "otp_rate": args.otp_rate, "read_batch": args.read_batch,
              "workers": args.workers, "window": args.window, "otp_p50_ms": s("otp_p50_ms"),
              "otp_p99_ms": s("otp_p99_ms"), "otp_max_ms": s("otp_max_ms"),
              "marketing_final_per_s": s("marketing_final_per_s"), "runs": runs}
    path = write_result(args.name, result)
    print(table([
        ("OTP queue->submit p50", _fmt(result["otp_p50_ms"], " ms", digits=1)),
        ("OTP queue->submit p99", _fmt(result["otp_p99_ms"], " ms", digits=1)),
        ("OTP queue->submit max", _fmt(result["otp_max_ms"], " ms", digits=1)),
        ("marketing final/s meanwhile", _fmt(result["marketing_final_per_s"])),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
