"""End to end: N pre-queued messages -> one gatewayd process -> SMSC simulator -> receipts.

Each run: flush Redis, queue N messages through gatewayd.client (mixed priorities, 30 %
Chinese text, 5 % long; see bench.harness), start ``gatewayd run --burst`` (uvloop,
every policy on) against the simulator (receipts on, --receipt-delay), wait until it
drained and stopped, then read every message's status record. Figures:

  final/s        N / (first submit_sm_resp recorded .. last final state recorded)
  submit/s       submitted / (first .. last submitted_at)
  queue->submit  submitted_at - enqueued_at, p50/p99 (pre-queued: includes the backlog wait)
  submit->final  done_at - submitted_at, p50/p99 (includes the simulator's receipt delay)
  gatewayd CPU % / peak RSS over the process's life (startup included), simulator CPU %
  baseline       the same simulator driven by a minimal pipelined SMPP client (no Redis,
                 no policies; bench.sim_throughput's client, window 1000, receipts
                 answered), N submit_sm, to the last receipt; ratio = gatewayd / baseline

Median of --runs with min and max; writes bench/results/e2e.json.

    python -m bench e2e [--quick] [-n 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import harness
from bench.common import ProcSampler, summary, table, write_result

FINAL = ("delivered", "undeliverable", "expired", "rejected", "failed")


def _fmt(s: dict[str, float], unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    f = f"{{:,.{digits}f}}"
    return (f"{f.format(s['median'] * scale)}{unit} (min {f.format(s['min'] * scale)}, "
            f"max {f.format(s['max'] * scale)})")


def analyse(statuses: list[dict[str, str]]) -> dict[str, Any]:
    states: dict[str, int] = {}
    enq_sub: list[float] = []
    sub_done: list[float] = []
    submitted: list[float] = []
    done: list[float] = []
    for s in statuses:
        st = s.get("state", "missing")
        states[st] = states.get(st, 0) + 1
        sub = float(s.get("submitted_at", 0) or 0)
        fin = float(s.get("done_at", 0) or 0)
        enq = float(s.get("enqueued_at", 0) or 0)
        if sub:
            submitted.append(sub)
            if enq:
                enq_sub.append(sub - enq)
            if fin:
                sub_done.append(fin - sub)
        if fin:
            done.append(fin)
    enq_sub.sort()
    sub_done.sort()
    first = min(submitted) if submitted else 0.0
    last_final = max(done) if done else 0.0
    last_sub = max(submitted) if submitted else 0.0
    n_final = sum(v for k, v in states.items() if k in FINAL)
    return {
        "states": states,
        "final": n_final,
        "first_submit_at": first,
        "last_final_at": last_final,
        "final_per_s": n_final / (last_final - first) if last_final > first else 0.0,
        "submit_per_s": len(submitted) / (last_sub - first) if last_sub > first else 0.0,
        "queue_submit_p50_ms": 1000 * harness.percentile(enq_sub, 50),
        "queue_submit_p99_ms": 1000 * harness.percentile(enq_sub, 99),
        "submit_final_p50_ms": 1000 * harness.percentile(sub_done, 50),
        "submit_final_p99_ms": 1000 * harness.percentile(sub_done, 99),
    }


def baseline(rig: harness.Rig, n: int, window: int) -> dict[str, float]:
    from bench.sim_throughput import _run_client

    assert rig.sim is not None
    with ProcSampler(rig.sim.pid) as sim:
        r = _run_client("127.0.0.1", rig.sim_port, n, window)
    return {
        "final_per_s": n / (r["receipts_at"] - r["start"]),
        "submit_per_s": n / (r["resps_at"] - r["start"]),
        "ok": r["ok"],
        "sim_cpu_pct": sim.cpu_percent,
    }


def one_run(rig: harness.Rig, n: int, run: int, opts: harness.GatewaydOptions
            ) -> dict[str, Any]:
    rig.flush()
    items = harness.make_messages(n, run=run)
    t = time.time()
    ids = rig.enqueue(items)
    enqueue_s = time.time() - t
    cfg = rig.config(opts)
    rig.reset_commandstats()
    started = time.time()
    out = harness.run_gatewayd(rig, cfg, timeout_s=max(120.0, n / 500))
    if out.code != 0:
        raise SystemExit(f"gatewayd exited {out.code}: {out.stderr}")
    # Redis's own account of the run (scripts count once, as eval, plus each command
    # they call): where Redis's CPU goes, per message.
    cmds = rig.commandstats()
    cmds.pop("config|resetstat", None)
    cmds.pop("config", None)
    cmds.pop("info", None)
    gw, sim = out.gw, out.sim
    res = analyse(rig.statuses(ids))
    # The steady part (first submit .. last final state), without start-up and drain.
    t0, t1 = res["first_submit_at"], res["last_final_at"]
    steady = max(1, res["final"])
    res.update({
        "gw_steady_us_per_msg": 1e6 * gw.cpu_between(t0, t1) / steady,
        "redis_steady_us_per_msg": (1e6 * out.redis.cpu_between(t0, t1) / steady
                                    if out.redis else 0.0),
        "sim_steady_us_per_msg": 1e6 * sim.cpu_between(t0, t1) / steady,
    })
    res.update({
        "n": n, "enqueue_s": enqueue_s,
        "wall_per_s": res["final"] / (res["last_final_at"] - started),
        "gw_cpu_pct": gw.cpu_percent, "gw_cpu_s": gw.cpu_s,
        # CPU per message: the figure that survives a shared, noisy machine.
        "gw_cpu_us_per_msg": 1e6 * gw.cpu_s / n,
        "gw_peak_rss_mb": gw.peak_rss / 1e6,
        "sim_cpu_pct": sim.cpu_percent,
        "redis_cpu_pct": out.redis.cpu_percent if out.redis else 0.0,
        "redis_cpu_us_per_msg": 1e6 * out.redis.cpu_s / n if out.redis else 0.0,
        "redis_commands_per_msg": sum(c for c, _ in cmds.values()) / n,
        "redis_commands": {k: {"calls": c, "usec": u} for k, (c, u) in sorted(
            cmds.items(), key=lambda kv: -kv[1][1])},
    })
    if res["final"] != n:
        res["warning"] = f"only {res['final']} of {n} messages reached a final state"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="-n 5000 --runs 1 unless given")
    ap.add_argument("--receipt-delay", type=float, default=0.2)
    ap.add_argument("--window", type=int, default=1000, help="gatewayd's window per bind")
    ap.add_argument("--binds", type=int, default=1)
    ap.add_argument("--read-batch", type=int, default=0, help="0: gatewayd's default")
    ap.add_argument("--workers", type=int, default=0, help="dispatch_workers; 0: default")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--name", default="e2e", help="result file name")
    args = ap.parse_args(argv)
    if args.quick:
        if args.n == 100_000:
            args.n = 5000
        if args.runs == 3:
            args.runs = 1
    opts = harness.GatewaydOptions(read_batch=args.read_batch, dispatch_workers=args.workers,
                                   window=args.window, binds=args.binds)
    runs: list[dict[str, Any]] = []
    bases: list[dict[str, float]] = []
    with harness.Rig(args.receipt_delay) as rig:
        redis_version = rig.redis_version()
        print(f"e2e: Redis {redis_version} at {rig.redis_url}", flush=True)
        print(f"e2e: {args.n:,} messages x {args.runs} runs; quiet hours ON, recipients in "
              f"{rig.zone} (local time {rig.zone_local}: marketing inside 08:00-21:00)",
              flush=True)
        for i in range(args.runs):
            r = one_run(rig, args.n, i, opts)
            runs.append(r)
            line = (f"run {i + 1}: {r['final_per_s']:,.0f} final/s, submit "
                    f"{r['submit_per_s']:,.0f}/s, gatewayd CPU {r['gw_cpu_pct']:.0f} % "
                    f"({r['gw_cpu_us_per_msg']:.0f} us/msg; "
                    f"steady {r['gw_steady_us_per_msg']:.1f}), "
                    f"RSS {r['gw_peak_rss_mb']:.0f} MB, Redis CPU {r['redis_cpu_pct']:.0f} % "
                    f"({r['redis_cpu_us_per_msg']:.0f} us/msg; steady "
                    f"{r['redis_steady_us_per_msg']:.1f}, "
                    f"{r['redis_commands_per_msg']:.1f} commands/msg), "
                    f"states {r['states']}")
            if not args.no_baseline:
                b = baseline(rig, args.n, 1000)
                bases.append(b)
                line += f"; baseline {b['final_per_s']:,.0f} final/s"
            print(line, flush=True)
            if "warning" in r:
                print(f"  WARNING: {r['warning']}", flush=True)

    def s(key: str, src: list[dict[str, Any]] = runs) -> dict[str, float]:
        return summary([float(r[key]) for r in src])

    result: dict[str, Any] = {
        "n": args.n, "receipt_delay_s": args.receipt_delay, "window": args.window,
        "binds": args.binds, "read_batch": args.read_batch, "workers": args.workers,
        "quiet_hours_zone": rig.zone,
        "final_per_s": s("final_per_s"), "submit_per_s": s("submit_per_s"),
        "wall_per_s": s("wall_per_s"),
        "queue_submit_p50_ms": s("queue_submit_p50_ms"),
        "queue_submit_p99_ms": s("queue_submit_p99_ms"),
        "submit_final_p50_ms": s("submit_final_p50_ms"),
        "submit_final_p99_ms": s("submit_final_p99_ms"),
        "gw_cpu_pct": s("gw_cpu_pct"), "gw_cpu_us_per_msg": s("gw_cpu_us_per_msg"),
        "gw_peak_rss_mb": s("gw_peak_rss_mb"),
        "sim_cpu_pct": s("sim_cpu_pct"), "redis_cpu_pct": s("redis_cpu_pct"),
        "redis_cpu_us_per_msg": s("redis_cpu_us_per_msg"),
        "gw_steady_us_per_msg": s("gw_steady_us_per_msg"),
        "redis_steady_us_per_msg": s("redis_steady_us_per_msg"),
        "sim_steady_us_per_msg": s("sim_steady_us_per_msg"),
        "redis_version": redis_version,
        "redis_commands_per_msg": s("redis_commands_per_msg"),
        "runs": runs,
    }
    rows = [
        ("messages/s to final state", _fmt(result["final_per_s"])),
        ("submit rate /s", _fmt(result["submit_per_s"])),
        ("incl. startup /s", _fmt(result["wall_per_s"])),
        ("queue->submit p50", _fmt(result["queue_submit_p50_ms"], " ms")),
        ("queue->submit p99", _fmt(result["queue_submit_p99_ms"], " ms")),
        ("submit->receipt p50", _fmt(result["submit_final_p50_ms"], " ms")),
        ("submit->receipt p99", _fmt(result["submit_final_p99_ms"], " ms")),
        ("gatewayd CPU", _fmt(result["gw_cpu_pct"], " %")),
        ("gatewayd CPU per message", _fmt(result["gw_cpu_us_per_msg"], " us")),
        ("  steady (first submit..last final)", _fmt(result["gw_steady_us_per_msg"], " us",
                                                     digits=1)),
        ("gatewayd peak RSS", _fmt(result["gw_peak_rss_mb"], " MB")),
        ("simulator CPU", _fmt(result["sim_cpu_pct"], " %")),
        ("redis-server CPU", _fmt(result["redis_cpu_pct"], " %")),
        ("redis-server CPU per message", _fmt(result["redis_cpu_us_per_msg"], " us")),
        ("  steady", _fmt(result["redis_steady_us_per_msg"], " us", digits=1)),
        ("simulator CPU per message, steady", _fmt(result["sim_steady_us_per_msg"], " us",
                                                   digits=1)),
        ("Redis commands per message", _fmt(result["redis_commands_per_msg"], digits=1)),
    ]
    if bases:
        result["baseline"] = {
            "final_per_s": s("final_per_s", bases), "submit_per_s": s("submit_per_s", bases),
            "sim_cpu_pct": s("sim_cpu_pct", bases), "runs": bases,
        }
        ratios = [r["final_per_s"] / b["final_per_s"] for r, b in zip(runs, bases, strict=True)]
        result["ratio"] = summary(ratios)
        rows += [
            ("baseline final/s", _fmt(result["baseline"]["final_per_s"])),
            ("baseline simulator CPU", _fmt(result["baseline"]["sim_cpu_pct"], " %")),
            ("gatewayd / baseline", _fmt(result["ratio"], digits=2)),
        ]
    path = write_result(args.name, result)
    print(table(rows))
    last = runs[-1]["redis_commands"]
    print("Redis time by command, last run (us a message, calls a message): " + ", ".join(
        f"{k} {v['usec'] / args.n:.1f}/{v['calls'] / args.n:.2f}"
        for k, v in list(last.items())[:12]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
