"""The client's instructions a message in ``Client.send_many``, against a real Redis.

Load-independent (valgrind's callgrind, a fixed hash seed): this script runs itself
under callgrind, sends ``--rounds`` warm-up rounds of N messages (bench/e2e's mix, as
bench/client_intake sends; a fresh set each round) and then one more, counted alone:
that round's ``run_until_complete`` runs inside ``operator.call``, the one C function
callgrind is told to count in (``--collect-atstart=no --toggle-collect=_operator_call``),
so start-up, imports, the warm-up and the items' making are left out. Counted: the
whole ``send_many`` call in this process (validation, ids, entries, seal, records,
packing, redis-py and the event loop). Redis (a private redis-server, bench/harness)
runs outside valgrind and is emptied before each round. ``--keyed`` gives every
message an idempotency_key.

    python -m bench client_cost [-n 2000] [--rounds 1] [--keyed]   (needs valgrind)
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness

_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.M)


def _items(n: int, rounds: int, keyed: bool) -> list[list[dict[str, Any]]]:
    out = []
    for r in range(rounds):
        items: list[dict[str, Any]] = list(harness.make_messages(n, run=r))
        if keyed:
            for i, item in enumerate(items):
                item["idempotency_key"] = f"k-{r}-{i}"
        out.append(items)
    return out


def _child(url: str, rounds: list[list[dict[str, Any]]]) -> None:
    from gatewayd.client import Client

    loop = asyncio.new_event_loop()
    c = Client(url)
    loop.run_until_complete(c.__aenter__())
    assert c._queue is not None
    try:
        for k, items in enumerate(rounds):
            loop.run_until_complete(c.redis.flushdb())
            loop.run_until_complete(c._queue.ensure_groups())
            if k < len(rounds) - 1:
                out = loop.run_until_complete(c.send_many(items))
            else:  # the counted round
                out = operator.call(loop.run_until_complete, c.send_many(items))
            assert len(out) == len(items)
    finally:
        loop.run_until_complete(c.__aexit__(None, None, None))
        loop.close()


def count(n: int, rounds: int, keyed: bool) -> int:
    """The counted round's instructions (callgrind's total)."""
    with harness.private_redis(0) as port, \
            tempfile.TemporaryDirectory(prefix="gw-client-cost-") as d:
        out = Path(d) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--collect-atstart=no", "--toggle-collect=_operator_call",
               sys.executable, "-m", "bench.client_cost", "-n", str(n),
               "--rounds", str(rounds), "--child", f"redis://127.0.0.1:{port}/0",
               *(["--keyed"] if keyed else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, "PYTHONHASHSEED": "0"})
        m = _TOTALS.search(out.read_bytes())
        assert m is not None, "no totals line in callgrind's output"
        return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client_cost",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, help="warm-up rounds before the counted one")
    ap.add_argument("--keyed", action="store_true", help="every message has an idempotency_key")
    ap.add_argument("--quick", action="store_true", help="n=500")
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 500
    if args.child:
        _child(args.child, _items(args.n, args.rounds + 1, args.keyed))
        return 0
    total = count(args.n, args.rounds, args.keyed)
    print(f"send_many, {args.n:,} messages{', keyed' if args.keyed else ''}: "
          f"{total / args.n:,.0f} instructions a message (callgrind, {total:,} in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
