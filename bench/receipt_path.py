"""CPU a delivery receipt costs on gatewayd's receive path, no Redis.

A CarrierPool binds (real TCP, uvloop) to a minimal SMSC run in a child process, which
then writes N receipt deliver_sm in one go, built exactly as the SMSC simulator
builds them (``gatewayd.sim``: standard text, hex ids, dates without seconds), and reads
the deliver_sm_resp. On gatewayd's side everything is the production path: the session's
framing, the bind, Deliveries (parse_deliver_sm, parse_receipt), the handler task (it
counts the Receipt objects and checks their order) and the deliver_sm_resp writes.
Two profiles:
  sim    text and the receipted_message_id / message_state TLVs (what `bench e2e` sends)
  text   the same text, no TLVs (carriers that send only the text)
Figures, median of --runs (min, max):
  us/receipt  CPU of the event-loop thread (time.thread_time) from the first write to
              the last Receipt collected, over N
  stall       how late a 2 ms sleeper in the same loop woke (p99 and max): how long the
              receipt path keeps other tasks (the OTP dispatcher) waiting; wall-clock, so
              a busy shared machine adds to it
Writes bench/results/receipt_path.json.

    python -m bench receipt_path [-n 50000] [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.common import summary, table, write_result  # noqa: E402
from gatewayd.carrier import CarrierPool  # noqa: E402
from gatewayd.config import CarrierConfig, Config  # noqa: E402
from gatewayd.model import InboundMessage, Receipt  # noqa: E402
from gatewayd.sim.smpp import pdu as simpdu  # noqa: E402
from gatewayd.sim.smpp.receipts import DateCache, message_state, receipt_text  # noqa: E402

HDR = struct.Struct(">IIII")
DELIVER_SM_RESP = 0x80000005
PROFILES = ("sim", "text")
FIRST_ID = 0x12_3456_7890


def receipts(n: int, profile: str, first_id: int = FIRST_ID) -> bytes:
    """N receipt deliver_sm PDUs, sequence numbers 1..N, as the simulator writes them."""
    dates = DateCache()
    now = time.time()
    submitted, done = dates.stamp(now - 0.2, False), dates.stamp(now, False)
    out = []
    for i in range(n):
        rid = f"{first_id + i:010x}"
        stat = "UNDELIV" if i % 50 == 0 else "DELIVRD"
        body = receipt_text(rid, stat, submitted, done, f"Your code is {i % 1000000:06d}")
        tlvs = simpdu.receipt_tlvs(rid.encode(), message_state(stat)) if profile == "sim" else b""
        out.append(simpdu.deliver_sm(
            i + 1, source=b"8613800138000", source_ton=1, source_npi=1, destination=b"10690",
            dest_ton=5, dest_npi=0, esm_class=simpdu.ESM_RECEIPT, data_coding=0,
            short_message=body, tlvs=tlvs,
        ))
    return b"".join(out)


class Smsc:
    """Accepts one bind, answers it, then on ``go`` writes the PDUs and counts the resps."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data = data
        self.n = n
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.resps = 0
        self.bad_resps = 0

    def serve(self, go: Callable[[], object]) -> None:
        conn, _ = self.listener.accept()
        buf = b""
        while len(buf) < 16 or len(buf) < HDR.unpack_from(buf)[0]:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        length, cmd, _, seq = HDR.unpack_from(buf)
        conn.sendall(HDR.pack(16 + 5, cmd | 0x80000000, 0, seq) + b"smsc\0")
        buf = buf[length:]
        go()
        conn.setblocking(False)
        view, sent = memoryview(self.data), 0
        while self.resps + self.bad_resps < self.n:
            want_write = [conn] if sent < len(view) else []
            readable, writable, _ = select.select([conn], want_write, [], 30.0)
            if not readable and not writable:
                raise TimeoutError(f"{self.resps} of {self.n} deliver_sm_resp")
            if writable:
                sent += conn.send(view[sent : sent + (1 << 20)])
            if readable:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return
                buf = self._count(conn, buf + chunk)
        conn.close()

    def _count(self, conn: socket.socket, buf: bytes) -> bytes:
        pos, n = 0, len(buf)
        while n - pos >= 16:
            length, cmd, status, seq = HDR.unpack_from(buf, pos)
            if n - pos < length:
                break
            if cmd == DELIVER_SM_RESP and status == 0:
                self.resps += 1
            elif cmd == DELIVER_SM_RESP:
                self.bad_resps += 1
            elif cmd & 0x80000000 == 0:  # enquire_link or unbind: answer it
                conn.sendall(HDR.pack(16, cmd | 0x80000000, 0, seq))
            pos += length
        return buf[pos:]


def smsc_main(n: int, profile: str) -> int:
    """The child: port on stdout, wait for "go" after the bind, report the resps as JSON."""
    smsc = Smsc(receipts(n, profile), n)
    print(smsc.port, flush=True)
    smsc.serve(lambda: sys.stdin.readline())
    print(json.dumps({"resps": smsc.resps, "bad_resps": smsc.bad_resps}), flush=True)
    return 0


class Collector:
    """The DeliveryHandler: counts the receipts, checks their order, keeps the first two.

    Keeping all N would make the bench's own heap (and its garbage collections) grow
    with N, which gatewayd's handler, done with a batch once it is recorded, does not.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first: list[Receipt] = []
        self.out_of_order = 0
        self.calls = 0
        self.done = asyncio.get_running_loop().create_future()

    async def on_receipts(self, receipts: list[Receipt]) -> None:
        self.calls += 1
        if len(self.first) < 2:
            self.first.extend(receipts[: 2 - len(self.first)])
        for i in (0, -1):
            if receipts[i].smsc_id != f"{FIRST_ID + self.count + (i % len(receipts)):x}":
                self.out_of_order += 1
        self.count += len(receipts)
        if self.count >= self.n and not self.done.done():
            self.done.set_result(time.thread_time())

    async def on_inbound(self, messages: list[InboundMessage]) -> None:
        raise AssertionError("the bench sends receipts only")


async def one_run(n: int, profile: str) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--smsc", str(n), profile,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(await asyncio.wait_for(child.stdout.readline(), 60.0))
        carrier = CarrierConfig(name="bench", host="127.0.0.1", port=port, system_id="gw",
                                password="pw", window=10, enquire_link_s=600.0,
                                response_timeout_s=30.0)
        handler = Collector(n)
        pool = CarrierPool(Config(carrier=[carrier]), handler)
        await pool.start()
        try:
            if not await pool.wait_bound(10.0):
                raise RuntimeError("the bench SMSC did not bind")
            stalls: list[float] = []

            async def sleeper() -> None:
                while not handler.done.done():
                    t = time.perf_counter()
                    await asyncio.sleep(0.002)
                    stalls.append(time.perf_counter() - t - 0.002)

            probe = asyncio.create_task(sleeper())
            await asyncio.sleep(0.05)
            stalls.clear()
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            child.stdin.write(b"go\n")
            cpu1: float = await asyncio.wait_for(handler.done, max(60.0, n / 1000))
            wall = time.perf_counter() - t0
            await probe
            counts = json.loads(await asyncio.wait_for(child.stdout.readline(), 30.0))
        finally:
            await pool.stop(1.0)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    got = handler.first
    if counts["resps"] != n or handler.count != n or handler.out_of_order:
        raise RuntimeError(f"{profile}: {handler.count} receipts ({handler.out_of_order} batches "
                           f"out of order), {counts} of {n} answered")
    if got[0].smsc_id != "1234567890" or got[0].state != "undeliverable" or not got[1].done_date:
        raise RuntimeError(f"{profile}: unexpected receipt {got[0]!r}")
    stalls.sort()
    return {
        "n": n,
        "cpu_us_per_receipt": 1e6 * (cpu1 - cpu0) / n,
        "receipts_per_s": n / wall,
        "handler_calls": handler.calls,
        "max_stall_ms": 1000 * stalls[-1] if stalls else 0.0,
        "p99_stall_ms": 1000 * stalls[int(0.99 * (len(stalls) - 1))] if stalls else 0.0,
    }


async def main_async(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PROFILES}
    for i in range(args.runs):
        for profile in PROFILES:  # interleaved: a noisy neighbour hits both alike
            r = await one_run(args.n, profile)
            runs[profile].append(r)
            print(f"run {i + 1} {profile:<4}: {r['cpu_us_per_receipt']:.1f} us/receipt, "
                  f"{r['receipts_per_s']:,.0f}/s, {r['handler_calls']} handler calls, "
                  f"stall p99 {r['p99_stall_ms']:.1f} ms, max {r['max_stall_ms']:.1f} ms",
                  flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--smsc"]:
        return smsc_main(int(sys.argv[2]), sys.argv[3])
    ap = argparse.ArgumentParser(prog="python -m bench receipt_path",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50_000, help="receipts a run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="5,000 receipts, one run")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.runs = 5_000, 1
    try:
        import uvloop

        runs = uvloop.run(main_async(args))
        loop = "uvloop"
    except ImportError:  # pragma: no cover
        runs = asyncio.run(main_async(args))
        loop = "asyncio"
    result: dict[str, Any] = {"n": args.n, "loop": loop}
    rows = []
    for profile in PROFILES:
        cpu = summary([r["cpu_us_per_receipt"] for r in runs[profile]])
        rate = summary([r["receipts_per_s"] for r in runs[profile]])
        stall = summary([r["max_stall_ms"] for r in runs[profile]])
        p99 = summary([r["p99_stall_ms"] for r in runs[profile]])
        result[profile] = {"cpu_us_per_receipt": cpu, "receipts_per_s": rate,
                           "max_stall_ms": stall, "p99_stall_ms": p99, "runs": runs[profile]}
        rows.append((f"{profile}: CPU a receipt",
                     f"{cpu['median']:.1f} us (min {cpu['min']:.1f}, max {cpu['max']:.1f})"))
        rows.append((f"{profile}: receipts/s", f"{rate['median']:,.0f} "
                     f"(min {rate['min']:,.0f}, max {rate['max']:,.0f})"))
        rows.append((f"{profile}: loop stall p99 / max", f"{p99['median']:.1f} / "
                     f"{stall['median']:.1f} ms (max of runs {p99['max']:.1f} / "
                     f"{stall['max']:.1f})"))
    path = write_result("receipt_path", result)
    rows.append(("written", str(path)))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
