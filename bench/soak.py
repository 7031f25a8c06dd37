"""Soak: --n messages (default 1,000,000) through one long-running gatewayd process.

The daemon runs without --burst. Messages go in blocks of --every (default 100,000):
a block is queued (through gatewayd.client, while the daemon runs), and once the
daemon's backlog is zero again (every message so far final) the bench samples /proc
of the daemon: RSS and open file descriptors. At the end it reports
whether RSS after the last block is within 10 % of RSS after the first, and the fd
growth, then stops the daemon with SIGTERM (a clean drain must exit 0). Writes
bench/results/soak.json.

    python -m bench soak [--quick] [--n 1000000] [--every 100000]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from bench import harness
from bench.common import cpu_seconds, open_fds, rss_bytes, table, write_result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--n", type=int, default=1_000_000, dest="n")
    ap.add_argument("--every", type=int, default=100_000, help="sample every this many")
    ap.add_argument("--quick", action="store_true", help="--n 20000 --every 5000 unless given")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 20_000 if args.n == 1_000_000 else args.n
        args.every = 5000 if args.every == 100_000 else args.every
    blocks = max(1, args.n // args.every)
    samples: list[dict[str, Any]] = []
    with harness.Rig() as rig:
        print(f"soak: {blocks * args.every:,} messages in blocks of {args.every:,}; "
              f"recipients in {rig.zone} (local {rig.zone_local})", flush=True)
        rig.flush()
        cfg = rig.config(harness.GatewaydOptions())
        proc = rig.gatewayd(cfg, timeout_s=0, burst=False)
        t0 = time.time()
        try:
            for b in range(blocks):
                items = harness.make_messages(args.every, run=b, seed=11)
                rig.enqueue(items)
                while rig.backlog() > 0:
                    if proc.poll() is not None:
                        raise SystemExit(f"gatewayd died: {proc.returncode}")
                    time.sleep(0.05)
                done = (b + 1) * args.every
                s = {"messages": done, "at_s": time.time() - t0,
                     "rss_mb": rss_bytes(proc.pid) / 1e6, "fds": open_fds(proc.pid),
                     "cpu_s": cpu_seconds(proc.pid)}
                samples.append(s)
                print(f"  {done:>9,}  RSS {s['rss_mb']:7.1f} MB  fds {s['fds']:4d}  "
                      f"t {s['at_s']:6.1f} s", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
                proc.wait()
    first, last = samples[0], samples[-1]
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
    result: dict[str, Any] = {
        "n": blocks * args.every, "every": args.every, "samples": samples,
        "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"],
        "rss_growth_pct": 100 * growth, "rss_within_10pct": abs(growth) <= 0.10,
        "fd_first": first["fds"], "fd_last": last["fds"], "fd_growth": last["fds"] - first["fds"],
        "exit_code": proc.returncode,
        "per_s": last["messages"] / last["at_s"],
    }
    path = write_result("soak", result)
    print(table([
        ("RSS first block -> last", f"{first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB "
                                     f"({100 * growth:+.1f} %)"),
        ("within 10 %", "yes" if result["rss_within_10pct"] else "NO"),
        ("open fds first -> last", f"{first['fds']} -> {last['fds']} "
                                   f"(growth {result['fd_growth']:+d})"),
        ("overall rate (incl. queueing)", f"{result['per_s']:,.0f} messages/s"),
        ("SIGTERM exit code", str(proc.returncode)),
    ]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
