"""Throttling: the send rate against an SMSC capped below the configured tps.

Issue 16 item 7: against an SMSC capped at 300/s with gatewayd's tps at 1,000, halving
per throttle and growing back by a step saw-toothed between 200 and 320/s with 19 % of
submits answered ESME_RTHROTTLED. Now the account's rate is learned (carrier/throttle.py,
kept in the account's Redis bucket, shared by every bind and daemon). Target: the rate
settles within 10 % below the cap, <= 2 % throttled after the first 5 s.

The simulator runs in this process (a thread with its own event loop) so every
submit_sm it saw is counted by second: accepted and throttled. Redis is a private
redis-server; gatewayd is one or two ``gatewayd run --burst`` processes (every policy on,
bench.harness's message mix) with ``tps`` = --tps, draining cap x --seconds messages.
Figures per run, over the seconds after --settle (5 s):

  accepted/s     mean, and the lowest and highest whole second (the saw-tooth's span),
                 until 95 % of the messages were accepted (the backlog's drain; the last
                 few trickle in below the cap for want of more to send)
  of the cap     mean accepted / cap
  throttled      share of submit_sm answered ESME_RTHROTTLED (also for the first 5 s)

    python -m bench throttle [--quick] [--cap 300] [--tps 1000] [--seconds 30]
                             [--runs 3] [--daemons 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from typing import Any

from bench import harness
from bench.common import summary, table, write_result
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator

THROTTLED = 0x58


class SimThread:
    """The simulator on its own event loop in a thread of this process."""

    def __init__(self, settings: SimSettings) -> None:
        self.sim = SmscSimulator(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SimThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def submissions(self) -> list[tuple[float, int]]:
        async def grab() -> list[tuple[float, int]]:
            out = [(s.received_at, s.status) for s in self.sim.submissions]
            self.sim.submissions.clear()
            return out
        return asyncio.run_coroutine_threadsafe(grab(), self.loop).result(10)


def analyse(subs: list[tuple[float, int]], cap: float, settle_s: float,
            bulk: float = 0.95) -> dict[str, Any]:
    """Per-second figures between ``settle_s`` after the first submit and the time the
    first ``bulk`` of the accepted submits were in: the backlog's drain, not its tail
    (the last messages, and throttled ones waiting their 1 s retry, trickle in at less
    than the cap because there are no more to send)."""
    subs = sorted(subs)
    t0 = subs[0][0]
    accepted_at = [t for t, status in subs if status == 0]
    end = accepted_at[max(0, int(len(accepted_at) * bulk) - 1)]
    ok: dict[int, int] = {}
    thr_late = ok_late = thr_early = all_early = 0
    for t, status in subs:
        if t - t0 < settle_s:
            all_early += 1
            thr_early += status == THROTTLED
            continue
        if t > end:
            break
        if status == 0:
            ok[int(t - t0)] = ok.get(int(t - t0), 0) + 1
            ok_late += 1
        elif status == THROTTLED:
            thr_late += 1
    # Whole seconds after settling, not the last (partial) one.
    secs = [ok.get(sec, 0) for sec in range(int(settle_s), int(end - t0))]
    span = (end - t0) - settle_s
    mean = ok_late / span if span > 0 else 0.0
    return {
        "accepted_per_s": mean, "of_cap": mean / cap,
        "lowest_second": min(secs) if secs else 0, "highest_second": max(secs) if secs else 0,
        "throttled_after_settle": thr_late / max(1, ok_late + thr_late),
        "throttled_first_s": thr_early / max(1, all_early),
        "seconds": len(secs), "submits": len(subs),
        "drain_s": end - t0, "all_s": subs[-1][0] - t0, "per_second": secs,
    }


def one_run(rig: harness.Rig, sim: SimThread, args: argparse.Namespace, run: int
            ) -> dict[str, Any]:
    rig.flush()
    sim.submissions()  # forget the previous run's
    n = int(args.cap * args.seconds)
    rig.enqueue(harness.make_messages(n, run=run))
    procs = []
    for k in range(args.daemons):
        opts = harness.GatewaydOptions(tps=args.tps, window=200,
                                       name="gatewayd" if k == 0 else f"gw{k}")
        procs.append(rig.gatewayd(rig.config(opts), timeout_s=args.seconds * 4 + 60))
    for p in procs:
        _, err = p.communicate(timeout=args.seconds * 4 + 120)
        if p.returncode != 0:
            raise SystemExit(f"gatewayd exited {p.returncode}: {err.decode()[-2000:]}")
    return analyse(sim.submissions(), args.cap, args.settle)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench throttle",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, default=300.0, help="the SMSC's rate cap (max_tps)")
    ap.add_argument("--tps", type=float, default=1000.0, help="gatewayd's configured tps")
    ap.add_argument("--seconds", type=float, default=30.0, help="cap x this many messages")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds left out at the start")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--daemons", type=int, default=1, help="gatewayd processes sharing it")
    ap.add_argument("--quick", action="store_true", help="--seconds 10 --runs 1 unless given")
    args = ap.parse_args(argv)
    if args.quick:
        if args.seconds == 30.0:
            args.seconds = 10.0
        if args.runs == 3:
            args.runs = 1
    load = [os.getloadavg()[0]]
    runs: list[dict[str, Any]] = []
    settings = SimSettings(port=0, max_tps=args.cap, receipt_delay_s=0.2,
                           keep_submissions=-1)
    with harness.Rig() as rig, SimThread(settings) as sim:
        rig.sim_port = sim.sim.port  # gatewayd talks to the in-process simulator
        print(f"throttle: SMSC capped at {args.cap:g}/s, gatewayd tps {args.tps:g}, "
              f"{args.daemons} daemon(s), {int(args.cap * args.seconds):,} messages x "
              f"{args.runs} runs", flush=True)
        for i in range(args.runs):
            t = time.monotonic()
            r = one_run(rig, sim, args, i)
            runs.append(r)
            load.append(os.getloadavg()[0])
            print(f"run {i + 1}: {r['accepted_per_s']:.0f} accepted/s after "
                  f"{args.settle:g} s ({r['of_cap']:.0%} of the cap; seconds "
                  f"{r['lowest_second']}-{r['highest_second']}), throttled "
                  f"{r['throttled_after_settle']:.2%} (first {args.settle:g} s "
                  f"{r['throttled_first_s']:.1%}), {time.monotonic() - t:.0f} s", flush=True)

    def s(key: str) -> dict[str, float]:
        return summary([float(r[key]) for r in runs])

    result: dict[str, Any] = {
        "cap": args.cap, "tps": args.tps, "daemons": args.daemons, "seconds": args.seconds,
        "settle_s": args.settle, "load_1m": summary(load),
        **{k: s(k) for k in ("accepted_per_s", "of_cap", "lowest_second", "highest_second",
                             "throttled_after_settle", "throttled_first_s")},
        "runs": runs,
    }
    name = "throttle" if args.daemons == 1 else f"throttle_{args.daemons}daemons"
    path = write_result(name, result)

    def fmt(d: dict[str, float], f: str = "{:,.0f}") -> str:
        return f"{f.format(d['median'])} ({f.format(d['min'])}-{f.format(d['max'])})"

    print(table([
        (f"accepted/s after {args.settle:g} s", fmt(result["accepted_per_s"])),
        ("of the cap (target 0.90-1.00)", fmt(result["of_cap"], "{:.2f}")),
        ("lowest / highest whole second",
         f"{fmt(result['lowest_second'])} / {fmt(result['highest_second'])}"),
        (f"throttled after {args.settle:g} s (target <= 2 %)",
         fmt(result["throttled_after_settle"], "{:.2%}")),
        (f"throttled in the first {args.settle:g} s", fmt(result["throttled_first_s"],
                                                           "{:.1%}")),
        ("machine load (1 min)", fmt(result["load_1m"], "{:.1f}")),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
