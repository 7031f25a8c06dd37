"""CMPP vs SMPP at the carrier layer: submit -> answer -> report, same load, same window.

The carrier layer alone (bench cmpp_e2e measures the daemon end to end): the CMPP
client (gatewayd.carrier.cmpp.CmppClient, the pool over one CMPP carrier) against the ISMG
simulator, and as the baseline of the same run the SMPP pool (gatewayd.carrier.CarrierPool)
against the SMSC simulator.
Each simulator runs in its own process (`python -m gatewayd.sim --protocol ...`), the
client in this one. N messages (a quarter of them Chinese long messages of 2 parts),
submitted in batches of 500, every report taken by a handler that only counts.

Figures per protocol: messages/s to the last report, and the client process's CPU
microseconds per message (the steadiest figure on a shared machine). Median of --runs.

    python bench/cmpp_carrier.py [-n 20000] [--runs 3] [--window 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import summary, write_result  # noqa: E402
from gatewayd.carrier import CarrierPool, SubmitRequest  # noqa: E402
from gatewayd.carrier.cmpp.client import CmppClient  # noqa: E402
from gatewayd.carrier.cmpp.settings import CmppSettings  # noqa: E402
from gatewayd.config import CarrierConfig, Config  # noqa: E402
from gatewayd.model import InboundMessage, Receipt  # noqa: E402

OTP = "【京东】您的验证码是482913，5分钟内有效，请勿泄露。"
LONG = "【京东】您的订单已发货，快递单号SF1234567890，预计明天送达，请注意查收。" * 2


class Counter:
    def __init__(self) -> None:
        self.receipts = 0
        self.done = asyncio.Event()
        self.want = 0

    async def on_receipts(self, receipts: list[Receipt]) -> None:
        self.receipts += len(receipts)
        if self.receipts >= self.want:
            self.done.set()

    async def on_inbound(self, messages: list[InboundMessage]) -> None:
        pass


def _start_sim(protocol: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.sim", "--protocol", protocol, "--port", "0",
         "--receipt-delay", "0.05", "--stats-interval", "0", "--log-level", "WARNING",
         "--system-id", "gw", "--password", "secret", "--sp-id", "901234",
         "--secret", "secret"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    return proc, int(line[1].rsplit(":", 1)[1])


def _carrier(protocol: str, port: int, window: int) -> CarrierConfig:
    return CarrierConfig(
        name=protocol, host="127.0.0.1", port=port, system_id="901234" if protocol == "cmpp"
        else "gw", password="secret", source_addr="106900001234", window=window,
        tps=1_000_000.0, response_timeout_s=10.0,
    )


async def _one(protocol: str, port: int, n: int, window: int) -> dict[str, float]:
    counter = Counter()
    cfg = _carrier(protocol, port, window)
    client: Any
    if protocol == "cmpp":
        client = CmppClient(cfg, CmppSettings(version="3.0"), "secret", counter)
    else:
        client = CarrierPool(Config(carrier=[cfg]), counter)
    await client.start()
    try:
        ok = await (client.wait_bound(10.0))
        assert ok, f"{protocol}: not bound"
        reqs = [SubmitRequest(msg_id=f"m{i}", destination=f"+86138{i:08d}",
                              text=LONG if i % 4 == 0 else OTP) for i in range(n)]
        counter.want = sum(2 if i % 4 == 0 else 1 for i in range(n))
        t0, c0 = time.perf_counter(), time.process_time()
        sent = 0
        for i in range(0, n, 500):
            outs = await client.submit_batch(reqs[i : i + 500])
            sent += sum(1 for o in outs if o.ok)
        await asyncio.wait_for(counter.done.wait(), 60)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert sent == n, f"{protocol}: {n - sent} not accepted"
        return {"per_s": n / wall, "cpu_us_per_msg": cpu / n * 1e6}
    finally:
        await client.stop(2.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=16)
    args = ap.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {}
    for protocol in ("smpp", "cmpp"):
        proc, port = _start_sim(protocol)
        try:
            for _ in range(args.runs):
                r = asyncio.run(_one(protocol, port, args.n, args.window))
                for k, v in r.items():
                    results.setdefault(protocol, {}).setdefault(k, []).append(v)
        finally:
            proc.terminate()
            proc.wait(10)
    data: dict[str, Any] = {"n": args.n, "window": args.window}
    for protocol, figures in results.items():
        data[protocol] = {k: summary(v) for k, v in figures.items()}
    smpp, cmpp = data["smpp"], data["cmpp"]
    data["ratio_per_s"] = cmpp["per_s"]["median"] / smpp["per_s"]["median"]
    data["ratio_cpu"] = cmpp["cpu_us_per_msg"]["median"] / smpp["cpu_us_per_msg"]["median"]
    write_result("cmpp_carrier", data)
    print(f"carrier layer, N={args.n}, window {args.window}, median of {args.runs}:")
    for protocol in ("smpp", "cmpp"):
        d = data[protocol]
        print(f"  {protocol}: {d['per_s']['median']:8.0f} messages/s to last report, "
              f"{d['cpu_us_per_msg']['median']:6.1f} us CPU per message")
    print(f"  cmpp/smpp: {data['ratio_per_s']:.2f}x throughput, {data['ratio_cpu']:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
