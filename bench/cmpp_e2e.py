"""End to end over CMPP against SMPP in the same run: the daemon, Redis, policies, reports.

Issue 22's target: gatewayd over CMPP within 10 % of its SMPP figure. Two rigs (bench
harness: a private Redis and a simulator process each), one with the SMSC simulator,
one with the CMPP ISMG simulator (``python -m gatewayd.sim --protocol cmpp``); runs
alternate SMPP, CMPP, SMPP, CMPP ... so machine noise hits both alike. Each run is
bench.e2e's: flush, queue N messages (30 % Chinese, 5 % long; every policy on, quiet
hours on), ``gatewayd run --burst`` (its own process, uvloop) until drained, then every
status record. The carrier is the same but for ``protocol = "cmpp"`` and its keys: same
window (default 16, ISMGs' usual; check-config allows CMPP at most 64), binds, tps.

Figures per protocol, median (min, max) of --runs: messages/s to the final state, the
daemon's CPU microseconds a message (whole life, and steady: first submit .. last final),
simulator CPU; and CMPP / SMPP ratios of each pair of runs (median).

    python -m bench cmpp_e2e [--quick] [-n 20000] [--runs 3] [--window 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import e2e, harness
from bench.common import summary, table, write_result

SP_ID, SECRET = "901234", "secret"


class CmppRig(harness.Rig):
    """The harness's rig with the ISMG simulator, and the carrier speaking CMPP."""

    def __init__(self, receipt_delay_s: float) -> None:
        super().__init__(receipt_delay_s, sim_args=["--protocol", "cmpp", "--sp-id", SP_ID,
                                                    "--secret", SECRET])

    def config(self, opts: harness.GatewaydOptions) -> Path:
        p = super().config(opts)
        text = p.read_text(encoding="utf-8")
        smpp = 'system_id = "demo"\npassword = "demo"\n'
        assert smpp in text and "\n[routing]" in text, "bench.harness config changed"
        text = text.replace(smpp, f'protocol = "cmpp"\nsystem_id = "{SP_ID}"\n'
                                  f'password = "{SECRET}"\n')
        text = text.replace("\n[routing]", '\n[carrier.cmpp]\nversion = "3.0"\n'
                                           'service_id = "BENCH"\n\n[routing]', 1)
        p.write_text(text, encoding="utf-8")
        return p


def _fmt(s: dict[str, float], digits: int = 0) -> str:
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cmpp_e2e",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="-n 2000 --runs 1 unless given")
    ap.add_argument("--receipt-delay", type=float, default=0.2)
    ap.add_argument("--window", type=int, default=16, help="per connection, both protocols")
    ap.add_argument("--binds", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        if args.n == 20_000:
            args.n = 2000
        if args.runs == 3:
            args.runs = 1
    opts = harness.GatewaydOptions(window=args.window, binds=args.binds)
    runs: dict[str, list[dict[str, Any]]] = {"smpp": [], "cmpp": []}
    with harness.Rig(args.receipt_delay) as smpp, CmppRig(args.receipt_delay) as cmpp:
        print(f"cmpp_e2e: {args.n:,} messages x {args.runs} runs a protocol, window "
              f"{args.window}, binds {args.binds}", flush=True)
        for i in range(args.runs):
            for name, rig in (("smpp", smpp), ("cmpp", cmpp)):
                r = e2e.one_run(rig, args.n, i, opts)
                r.pop("redis_commands", None)
                runs[name].append(r)
                print(f"run {i + 1} {name}: {r['final_per_s']:,.0f} final/s, gatewayd "
                      f"{r['gw_cpu_us_per_msg']:.0f} us/msg (steady "
                      f"{r['gw_steady_us_per_msg']:.1f}), simulator steady "
                      f"{r['sim_steady_us_per_msg']:.1f} us/msg, states {r['states']}",
                      flush=True)
                if "warning" in r:
                    print(f"  WARNING: {r['warning']}", flush=True)

    def s(name: str, key: str) -> dict[str, float]:
        return summary([float(r[key]) for r in runs[name]])

    def ratio(key: str) -> dict[str, float]:
        return summary([c[key] / m[key] for m, c in zip(runs["smpp"], runs["cmpp"],
                                                           strict=True) if m[key]])

    keys = ("final_per_s", "gw_cpu_us_per_msg", "gw_steady_us_per_msg",
            "sim_steady_us_per_msg", "redis_cpu_us_per_msg", "submit_final_p50_ms")
    result: dict[str, Any] = {
        "n": args.n, "window": args.window, "binds": args.binds,
        "receipt_delay_s": args.receipt_delay,
        **{name: {k: s(name, k) for k in keys} | {"runs": runs[name]} for name in runs},
        "ratio": {k: ratio(k) for k in keys[:3]},
    }
    rows = []
    for label, key, digits in (("messages/s to final state", "final_per_s", 0),
                               ("gatewayd CPU per message, us", "gw_cpu_us_per_msg", 0),
                               ("  steady, us", "gw_steady_us_per_msg", 1),
                               ("simulator CPU per message, steady, us",
                                "sim_steady_us_per_msg", 1),
                               ("redis-server CPU per message, us", "redis_cpu_us_per_msg", 1),
                               ("submit->report p50, ms", "submit_final_p50_ms", 0)):
        rows.append((f"{label}: SMPP | CMPP",
                     f"{_fmt(result['smpp'][key], digits)} | "
                     f"{_fmt(result['cmpp'][key], digits)}"))
    for key in keys[:3]:
        rows.append((f"CMPP / SMPP {key}", _fmt(result["ratio"][key], 2)))
    path = write_result("cmpp_e2e", result)
    print(table(rows))
    r = result["ratio"]
    print(f"cmpp/smpp: throughput {r['final_per_s']['median']:.2f}x, CPU a message "
          f"{r['gw_cpu_us_per_msg']['median']:.2f}x (steady "
          f"{r['gw_steady_us_per_msg']['median']:.2f}x)")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
