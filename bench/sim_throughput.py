"""How many submit_sm a second the SMSC simulator answers, receipts included.

Starts `python -m gatewayd.sim` in a subprocess, then pushes N submit_sm
(registered_delivery=1) through a pipelined raw client (window 1000 per bind) that answers
every receipt, and measures:
  msgs/s      N / (first submit_sm .. last submit_sm_resp)
  e2e/s       N / (first submit_sm .. last receipt)   (includes the receipt delay once)
  sim CPU %   CPU time the simulator process used / wall time (100 % = one core)
Three runs by default; prints the median, min and max and writes
bench/results/sim_throughput.json. With --clients K the load comes from K client
processes (one bind each), for when one Python client cannot saturate the simulator.

    python bench/sim_throughput.py [-n 200000] [--runs 3] [--clients 1] [--window 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.common import ProcSampler, summary, write_result  # noqa: E402

HDR = struct.Struct("!IIII")

BIND_TRX = 0x09
SUBMIT = 0x04
DELIVER = 0x05
R = 0x80000000


def _submit_body(i: int) -> bytes:
    dest = f"86138{i % 100000000:08d}".encode()
    text = b"Your code is 123456. Valid for 5 minutes."
    return (
        b"\0" + bytes((5, 0)) + b"10690\0" + bytes((1, 1)) + dest + b"\0"
        + bytes((0, 0, 0)) + b"\0\0" + bytes((1, 0, 0, 0, len(text))) + text
    )


class BenchClient(asyncio.Protocol):
    def __init__(self, n: int, window: int, done: asyncio.Future[None]) -> None:
        self.n = n
        self.window = window
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.seq = 1
        self.sent = 0
        self.resps = 0
        self.ok = 0
        self.receipts = 0
        self.in_flight = 0
        self.t_start = 0.0
        self.t_resps = 0.0
        self.t_receipts = 0.0
        # A handful of distinct bodies is enough; the simulator parses each anyway.
        self.bodies = [_submit_body(i) for i in range(64)]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        body = b"demo\0demo\0\0" + bytes((0x34, 0, 0)) + b"\0"
        transport.write(HDR.pack(16 + len(body), BIND_TRX, 0, 1) + body)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"lost after {self.resps} resps: {exc}"))

    def _fill(self, out: list[bytes]) -> None:
        pack = HDR.pack
        bodies = self.bodies
        while self.in_flight < self.window and self.sent < self.n:
            self.seq += 1
            body = bodies[self.seq & 63]
            out.append(pack(16 + len(body), SUBMIT, 0, self.seq) + body)
            self.sent += 1
            self.in_flight += 1

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        n = len(data)
        pos = 0
        out: list[bytes] = []
        pack = HDR.pack
        unpack = HDR.unpack_from
        while n - pos >= 16:
            length, cmd, status, seq = unpack(data, pos)
            if pos + length > n:
                break
            pos += length
            if cmd == SUBMIT | R:
                self.resps += 1
                self.in_flight -= 1
                if status == 0:
                    self.ok += 1
            elif cmd == DELIVER:
                self.receipts += 1
                out.append(pack(17, DELIVER | R, 0, seq) + b"\0")
            elif cmd == BIND_TRX | R:
                if status:
                    self.done.set_exception(RuntimeError(f"bind refused 0x{status:x}"))
                    return
                self.t_start = time.time()
        self.buf = data[pos:]
        if self.t_start:
            self._fill(out)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        now = time.time()
        if self.resps == self.n and not self.t_resps:
            self.t_resps = now
        if self.t_resps and self.receipts >= self.ok and not self.done.done():
            self.t_receipts = now
            self.done.set_result(None)


async def _client(host: str, port: int, n: int, window: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, proto = await loop.create_connection(
        lambda: BenchClient(n, window, done), host, port
    )
    await asyncio.wait_for(done, timeout=max(60.0, n / 2000))
    transport.close()
    return {
        "start": proto.t_start, "resps_at": proto.t_resps, "receipts_at": proto.t_receipts,
        "ok": proto.ok, "n": n,
    }


def _run_client(host: str, port: int, n: int, window: int) -> dict[str, float]:
    try:
        import uvloop
        return uvloop.run(_client(host, port, n, window))
    except ImportError:
        return asyncio.run(_client(host, port, n, window))


def _one_run(host: str, port: int, sim_pid: int, n: int, clients: int, window: int
             ) -> dict[str, float]:
    with ProcSampler(sim_pid) as sampler:
        if clients == 1:
            parts = [_run_client(host, port, n, window)]
        else:
            per = n // clients
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--client", host, str(port), str(per),
                     str(window)],
                    stdout=subprocess.PIPE, text=True,
                )
                for _ in range(clients)
            ]
            parts = [json.loads(p.communicate()[0]) for p in procs]
    total = sum(int(p["n"]) for p in parts)
    start = min(p["start"] for p in parts)
    resps = max(p["resps_at"] for p in parts)
    receipts = max(p["receipts_at"] for p in parts)
    return {
        "n": total,
        "ok": sum(int(p["ok"]) for p in parts),
        "msgs_per_s": total / (resps - start),
        "e2e_per_s": total / (receipts - start),
        "elapsed_s": receipts - start,
        "sim_cpu_pct": sampler.cpu_percent,
        "sim_peak_rss_mb": sampler.peak_rss / 1e6,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        host, port, n, window = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(_run_client(host, port, n, window)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="submit_sm per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1, help="client processes (one bind each)")
    ap.add_argument("--window", type=int, default=1000, help="outstanding submit_sm per bind")
    ap.add_argument("--receipt-delay", type=float, default=0.2)
    ap.add_argument("--no-uvloop", action="store_true", help="run the simulator on asyncio's loop")
    args = ap.parse_args()

    cmd = [sys.executable, "-m", "gatewayd.sim", "--port", "0", "--stats-interval", "0",
           "--log-level", "WARNING", "--receipt-delay", str(args.receipt_delay)]
    if args.no_uvloop:
        cmd.append("--no-uvloop")
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline().split()
        if not line or line[0] != "listening":
            raise SystemExit(f"simulator did not start: {line}")
        host, port_text = line[1].rsplit(":", 1)
        runs = []
        for i in range(args.runs):
            r = _one_run(host, int(port_text), sim.pid, args.n, args.clients, args.window)
            runs.append(r)
            print(
                f"run {i + 1}: {r['msgs_per_s']:,.0f} msgs/s, {r['e2e_per_s']:,.0f} e2e/s "
                f"(receipts in), simulator CPU {r['sim_cpu_pct']:.0f} %", flush=True,
            )
    finally:
        sim.terminate()
        sim.wait(10)
    rates = summary([r["msgs_per_s"] for r in runs])
    result: dict[str, Any] = {
        "n": args.n, "window": args.window, "clients": args.clients,
        "receipt_delay_s": args.receipt_delay, "uvloop": not args.no_uvloop,
        "msgs_per_s": rates,
        "e2e_per_s": summary([r["e2e_per_s"] for r in runs]),
        "sim_cpu_pct": summary([r["sim_cpu_pct"] for r in runs]),
        "runs": runs,
    }
    path = write_result("sim_throughput", result)
    print(
        f"sim_throughput: median {rates['median']:,.0f} msgs/s "
        f"(min {rates['min']:,.0f}, max {rates['max']:,.0f}); simulator CPU "
        f"{result['sim_cpu_pct']['median']:.0f} % of one core -> {path.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
