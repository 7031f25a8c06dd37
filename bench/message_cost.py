"""CPU a message of each step every message takes, measured alone, no Redis.

Steps (on N messages of bench/harness's mix: English OTP codes and notices, Chinese
marketing with 【signature】 and 回TD退订, 5 % long multipart, +86 numbers; with
--countries the recipients are E.164 numbers of several countries):

  parse        parse_message on a client item (the client's and HTTP's validation)
  to_fields    to_fields(msg, seal) (the stream entry with its sealed internal fields)
  status       Ledger.build(msg, "queued") and the str() pass QueueStore makes of it
  pack         msgspec.msgpack.encode of the rows (the one script argument)
  reparse      parse_message on the entry (what the dispatcher's ``_parse`` does)
  segments     smstext.segments with an empty cache (each text seen first)

Each step runs on the outputs of the one before, timed with time.process_time over all
N messages; median of --runs. Under load the figures move; for a count that does not,
count instructions instead (--callgrind: the script runs itself under valgrind's
callgrind once for each cumulative set of steps, and each step's instructions a message
are the difference between two sets over N; ~25 s a set):

    python -m bench.message_cost [-n 20000] [--runs 5]
    python -m bench.message_cost --callgrind [-n 2000]
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench import harness
from gatewayd import smstext
from gatewayd.config import Config, QueueConfig
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.intake import parse_message, to_fields
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Seal

# Numbers of several countries (E.164, valid lengths): China, US, UK, India, Brazil,
# Germany, Singapore.
_PREFIXES = ("+86138", "+1415", "+447700", "+9198", "+55119", "+49151", "+659")
_LENGTHS = (14, 12, 13, 13, 14, 14, 11)


def messages(n: int, countries: bool) -> list[dict[str, str]]:
    items = harness.make_messages(n)
    if countries:
        for i, item in enumerate(items):
            k = i % len(_PREFIXES)
            p = _PREFIXES[k]
            item["to"] = p + str(10**12 + i)[-(_LENGTHS[k] - len(p)):]
    return items


def steps(items: list[dict[str, str]]) -> dict[str, Callable[[], Any]]:
    q = QueueConfig()
    cfg = Config(queue=q)
    seal = Seal("bench-secret")
    led = Ledger(Keys("gw:"), cfg)
    now = time.time()
    st: dict[str, Any] = {}

    def parse() -> None:
        st["msgs"] = [parse_message(i, classes=q.classes, max_segments=q.max_segments,
                                    now=now, horizon_s=q.horizon_s) for i in items]
        for m in st["msgs"]:
            m.intake = "client"

    def fields() -> None:
        st["fields"] = [to_fields(m, seal) for m in st["msgs"]]

    # As QueueStore._enqueue_script: the record's values all str (build(text=True), or
    # on an older tree, where build has no ``text``, its values made str after).
    as_text = "text" in inspect.signature(led.build).parameters

    def status() -> None:
        out = []
        for m in st["msgs"]:
            if as_text:
                key, rec = led.build(m, "queued", now, text=True)
            else:
                key, rec = led.build(m, "queued", now)
                for k, v in rec.items():
                    if type(v) is not str:
                        rec[k] = repr(v) if isinstance(v, float) else str(v)
            out.append((key, rec))
        st["status"] = out

    def pack() -> None:
        rows = [[k, m.id, "", "gw:q:" + m.category, rec, f]
                for m, (k, rec), f in zip(st["msgs"], st["status"], st["fields"],
                                          strict=True)]
        st["packed"] = msgspec.msgpack.encode(rows)

    def reparse() -> None:
        for f in st["fields"]:
            parse_message(f, classes=q.classes, max_segments=q.max_segments, now=now,
                          seal=seal, horizon_s=q.horizon_s)

    def segments() -> None:
        for i in items:
            smstext._segments(i["text"], 8)

    return {"parse": parse, "to_fields": fields, "status": status, "pack": pack,
            "reparse": reparse, "segments": segments}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.message_cost",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--countries", action="store_true",
                    help="recipients of seven countries instead of +86 only")
    ap.add_argument("--step", action="append", default=None,
                    help="run only these steps (and those they need), e.g. for callgrind")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions a message of each step (valgrind; load-independent)")
    ap.add_argument("--quick", action="store_true", help="n=2000, one run")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.runs = 2000, 1
    if args.callgrind:
        return callgrind(args.n, args.countries)
    items = messages(args.n, args.countries)
    run = steps(items)
    order = list(run)
    needs = {"to_fields": ["parse"], "status": ["parse"],
             "pack": ["parse", "to_fields", "status"], "reparse": ["parse", "to_fields"]}
    wanted = args.step or order
    timed: dict[str, list[float]] = {s: [] for s in order if s in wanted}
    for _ in range(args.runs):
        done: set[str] = set()
        for s in order:
            if s not in wanted and not any(s in needs.get(w, []) for w in wanted):
                continue
            c0 = time.process_time()
            run[s]()
            c = time.process_time() - c0
            done.add(s)
            if s in timed:
                timed[s].append(c / len(items) * 1e6)
    print(f"message cost, {len(items):,} messages, CPU us a message, median of "
          f"{args.runs} (min-max)")
    total = 0.0
    for s, xs in timed.items():
        med = statistics.median(xs)
        if s in ("parse", "to_fields", "status", "pack"):
            total += med
        print(f"  {s:<10} {med:8.2f}  ({min(xs):.2f}-{max(xs):.2f})")
    print(f"  client steps (parse + to_fields + status + pack): {total:.2f}")
    return 0


def _instructions(n: int, countries: bool, steps: list[str]) -> int:
    out = f"/tmp/message_cost.{os.getpid()}.cg"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           "-m", "bench.message_cost", "-n", str(n), "--runs", "1",
           *(["--countries"] if countries else []),
           *[a for s in (steps or ["none"]) for a in ("--step", s)]]
    # A fixed hash seed: dict and set layouts (and so the counts) alike from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    os.unlink(out)
    m = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert m, done.stderr[-2000:]
    return int(m.group(1).replace(",", ""))


def callgrind(n: int, countries: bool) -> int:
    """Each step's instructions a message: cumulative sets, differences over n."""
    chain = ["parse", "to_fields", "status", "pack", "reparse"]
    prev = base = _instructions(n, countries, [])
    print(f"message cost, {n:,} messages, instructions a message (callgrind)")
    total = 0
    for k in range(len(chain)):
        got = _instructions(n, countries, chain[:k + 1])
        per = (got - prev) / n
        if chain[k] != "reparse":
            total += int(per)
        print(f"  {chain[k]:<10} {per:10,.0f}", flush=True)
        prev = got
    seg = _instructions(n, countries, ["segments"]) - base
    print(f"  {'segments':<10} {seg / n:10,.0f}")
    print(f"  client steps (parse + to_fields + status + pack): {total:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
