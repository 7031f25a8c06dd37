"""`python -m bench [--quick] [NAME ...] [-- extra args]`: run the benchmarks in turn.

Names: ORDER below (the default run, in that order), and NAMED_ONLY (run only when
named: they need software CI does not install). --quick runs each with small N and one
run (the whole suite in a few minutes); without it `make bench` takes 30-40 minutes on
a 2-core machine (README "How to reproduce"). Each benchmark prints its table and writes
bench/results/<name>.json. Exit status: the first failure's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

from bench import (
    campaign_cost,
    campaign_priority,
    client_cost,
    client_intake,
    cluster_path,
    cmpp_e2e,
    consent,
    e2e,
    fanout,
    http_floor,
    http_priority,
    intake,
    kannel,
    message_cost,
    priority,
    receipt_path,
    redirect,
    redis_pool,
    soak,
    stragglers,
    throttle,
    webhooks,
)

ROOT_ARGS: dict[str, list[str]] = {
    # Scripts that are not ours to restructure run as subprocesses with their own flags.
    "policy": ["-n", "10000", "--runs", "1"],
    "sim_throughput": ["-n", "20000", "--runs", "1"],
}
MAINS: dict[str, Callable[[list[str]], int]] = {
    "e2e": e2e.main, "priority": priority.main, "soak": soak.main,
    "receipt_path": receipt_path.main, "redirect": redirect.main, "fanout": fanout.main,
    "campaign_cost": campaign_cost.main, "campaign_priority": campaign_priority.main,
    "stragglers": stragglers.main, "throttle": throttle.main, "consent": consent.main,
    "intake": intake.main, "http_floor": http_floor.main,
    "http_priority": http_priority.main, "cmpp_e2e": cmpp_e2e.main,
    "webhooks": webhooks.main,
    "redis_pool": redis_pool.main, "cluster_path": cluster_path.main, "kannel": kannel.main,
    "client_intake": client_intake.main, "message_cost": message_cost.main,
    "client_cost": client_cost.main,
}
ORDER = ["e2e", "priority", "soak", "policy", "sim_throughput", "receipt_path", "redirect",
         "fanout", "campaign_cost", "campaign_priority", "stragglers", "throttle", "consent",
         "intake", "http_floor", "http_priority", "cmpp_e2e", "webhooks", "redis_pool",
         "cluster_path", "client_intake", "message_cost"]
# Not in the default run: software CI does not install (Kannel, valgrind).
NAMED_ONLY = ["kannel", "client_cost"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", choices=[*ORDER, *NAMED_ONLY, []], metavar="NAME",
                    help=f"any of {', '.join(ORDER + NAMED_ONLY)} (default: all but "
                         f"{', '.join(NAMED_ONLY)})")
    ap.add_argument("--quick", action="store_true", help="small N, one run each")
    args, extra = ap.parse_known_args(argv)
    names = args.names or ORDER
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        t = time.monotonic()
        if name in MAINS:
            sub = (["--quick"] if args.quick else []) + extra
            rc = MAINS[name](sub)
        else:
            cmd = [sys.executable, f"bench/{name}.py"]
            if args.quick:
                cmd += ROOT_ARGS[name]
            rc = subprocess.call(cmd + extra)
        print(f"== {name}: {'ok' if rc == 0 else f'exit {rc}'} in {time.monotonic() - t:.0f} s",
              flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
