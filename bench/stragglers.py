"""Unanswered submits: the rate with 1 % of submit_sm never answered against none.

Issue 16 item 5: when the worker waited for the slowest submit of its batch, 1 % of
submits never answered cut the rate to ~100 msg/s (105 s for 10,000 messages, 13-15 s
with no fault). Now a batch's answered messages are recorded at once and only the
straggler waits (for its response timeout, then a retry). Target: with 1 % unanswered,
>= 80 % of the no-fault rate.

Two rigs side by side (each its own Redis and simulator process: one perfect, one with
``--unanswered 0.01``), the same N messages (bench.harness's mix, every policy on)
through one ``gatewayd run --burst`` each, runs alternating between them so the
machine's load falls on both alike. Figures per run:

  bulk final/s   the first 98 % of messages to reach a final state, per second from the
                 first submit (the 1 % unanswered cannot end before their response
                 timeout and retry: they are the tail, reported apart)
  bulk submit/s  the same for `submitted` (accepted by the SMSC)
  all final      seconds from the first submit until every message is final
  gatewayd CPU a message
Ratio = fault / no-fault bulk final/s, per pair of runs; median of --runs.

    python -m bench stragglers [--quick] [-n 10000] [--runs 3] [--unanswered 0.01]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench import harness
from bench.common import summary, table, write_result
from bench.e2e import FINAL


def analyse(statuses: list[dict[str, str]], share: float) -> dict[str, Any]:
    submitted = sorted(float(s["submitted_at"]) for s in statuses if s.get("submitted_at"))
    done = sorted(float(s["done_at"]) for s in statuses
                  if s.get("done_at") and s.get("state") in FINAL)
    states: dict[str, int] = {}
    for s in statuses:
        states[s.get("state", "missing")] = states.get(s.get("state", "missing"), 0) + 1
    first = submitted[0] if submitted else 0.0
    k_done = max(1, int(len(statuses) * share))
    k_sub = max(1, int(len(statuses) * share))
    bulk_final = k_done / (done[k_done - 1] - first) if len(done) >= k_done else 0.0
    bulk_sub = k_sub / (submitted[k_sub - 1] - first) if len(submitted) >= k_sub else 0.0
    return {"states": states, "bulk_final_per_s": bulk_final, "bulk_submit_per_s": bulk_sub,
            "all_final_s": (done[-1] - first) if done else 0.0, "final": len(done)}


def one_run(rig: harness.Rig, n: int, run: int, opts: harness.GatewaydOptions,
            share: float) -> dict[str, Any]:
    rig.flush()
    ids = rig.enqueue(harness.make_messages(n, run=run))
    out = harness.run_gatewayd(rig, rig.config(opts), timeout_s=max(120.0, n / 100))
    if out.code != 0:
        raise SystemExit(f"gatewayd exited {out.code}: {out.stderr}")
    res = analyse(rig.statuses(ids), share)
    res.update({"n": n, "gw_cpu_us_per_msg": 1e6 * out.gw.cpu_s / n,
                "gw_cpu_pct": out.gw.cpu_percent})
    if res["final"] != n:
        res["warning"] = f"only {res['final']} of {n} messages reached a final state"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench stragglers",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="-n 2000 --runs 1 unless given")
    ap.add_argument("--unanswered", type=float, default=0.01, help="share never answered")
    ap.add_argument("--response-timeout", type=float, default=10.0,
                    help="the carrier's response_timeout_s (gatewayd's default 10)")
    ap.add_argument("--receipt-delay", type=float, default=0.2)
    args = ap.parse_args(argv)
    if args.quick:
        if args.n == 10_000:
            args.n = 2000
        if args.runs == 3:
            args.runs = 1
    share = max(0.5, 1.0 - 2 * args.unanswered)  # leave the stragglers' tail out
    opts = harness.GatewaydOptions(response_timeout_s=args.response_timeout)
    clean: list[dict[str, Any]] = []
    fault: list[dict[str, Any]] = []
    load = [os.getloadavg()[0]]
    with harness.Rig(args.receipt_delay) as ok_rig, harness.Rig(
            args.receipt_delay, ["--unanswered", str(args.unanswered), "--seed", "16"]
    ) as bad_rig:
        print(f"stragglers: {args.n:,} messages x {args.runs} runs, no fault vs "
              f"{args.unanswered:.0%} of submit_sm never answered (response timeout "
              f"{args.response_timeout:g} s); bulk = first {share:.0%} final", flush=True)
        for i in range(args.runs):
            pair = [(ok_rig, clean, "no fault"), (bad_rig, fault, "unanswered")]
            if i % 2:
                pair.reverse()
            for rig, into, label in pair:
                r = one_run(rig, args.n, i, opts, share)
                into.append(r)
                print(f"run {i + 1} {label}: bulk {r['bulk_final_per_s']:,.0f} final/s, "
                      f"{r['bulk_submit_per_s']:,.0f} submitted/s, all final in "
                      f"{r['all_final_s']:.1f} s, gatewayd {r['gw_cpu_us_per_msg']:.0f} us/msg,"
                      f" states {r['states']}", flush=True)
                if "warning" in r:
                    print(f"  WARNING: {r['warning']}", flush=True)
                load.append(os.getloadavg()[0])

    def s(key: str, src: list[dict[str, Any]]) -> dict[str, float]:
        return summary([float(r[key]) for r in src])

    ratios = [f["bulk_final_per_s"] / c["bulk_final_per_s"]
              for c, f in zip(clean, fault, strict=True) if c["bulk_final_per_s"]]
    result: dict[str, Any] = {
        "n": args.n, "unanswered": args.unanswered, "response_timeout_s": args.response_timeout,
        "bulk_share": share, "load_1m": summary(load),
        "no_fault": {k: s(k, clean) for k in ("bulk_final_per_s", "bulk_submit_per_s",
                                              "all_final_s", "gw_cpu_us_per_msg")},
        "unanswered_runs": {k: s(k, fault) for k in ("bulk_final_per_s", "bulk_submit_per_s",
                                                     "all_final_s", "gw_cpu_us_per_msg")},
        "ratio": summary(ratios) if ratios else {},
        "runs": {"no_fault": clean, "unanswered": fault},
    }
    path = write_result("stragglers", result)

    def fmt(d: dict[str, float], digits: int = 0) -> str:
        f = f"{{:,.{digits}f}}"
        return f"{f.format(d['median'])} ({f.format(d['min'])}-{f.format(d['max'])})"

    nf, uf = result["no_fault"], result["unanswered_runs"]
    print(table([
        ("bulk final/s, no fault", fmt(nf["bulk_final_per_s"])),
        (f"bulk final/s, {args.unanswered:.0%} unanswered", fmt(uf["bulk_final_per_s"])),
        ("ratio (target >= 0.80)", fmt(result["ratio"], 2) if ratios else "-"),
        ("bulk submitted/s, no fault / unanswered",
         f"{fmt(nf['bulk_submit_per_s'])} / {fmt(uf['bulk_submit_per_s'])}"),
        ("all final (s), no fault / unanswered",
         f"{fmt(nf['all_final_s'], 1)} / {fmt(uf['all_final_s'], 1)}"),
        ("gatewayd CPU us/msg, no fault / unanswered",
         f"{fmt(nf['gw_cpu_us_per_msg'])} / {fmt(uf['gw_cpu_us_per_msg'])}"),
        ("machine load (1 min)", fmt(result["load_1m"], 1)),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
