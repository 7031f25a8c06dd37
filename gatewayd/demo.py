"""`gatewayd demo`: the whole path on one machine, in one command.

Starts the daemon on the demo config (embedded Redis, built-in SMPP and CMPP simulators), queues
a handful of realistic messages, waits for their receipts and prints what happened.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from gatewayd.client import Client
from gatewayd.config import Config
from gatewayd.daemon import Daemon
from gatewayd.model import FINAL_STATES

DEMO_MESSAGES: list[dict[str, Any]] = [
    {"to": "+8613800138000", "category": "otp", "ref": "login-7731",
     "text": "【京东】您的验证码是 482913，5分钟内有效，请勿泄露给他人。"},
    {"to": "+8613912345678", "category": "transactional", "ref": "order-10023",
     "text": "【京东】您的订单 10023 已发货，顺丰单号 SF1234567890，预计明天送达。"},
    {"to": "+447700900123", "category": "transactional", "ref": "order-10024",
     "text": "[ACME] Your order #10024 has shipped. Track it at https://acme.example/t/8f3k"},
    {"to": "+8618612345678", "category": "marketing", "ref": "campaign-1111",
     "text": "【京东】双11狂欢价：全场满300减50，家电低至5折，今晚12点截止！回TD退订"},
    {"to": "+8613700001111", "category": "transactional", "ref": "invoice-77",
     "text": "【京东】尊敬的客户，您于11月24日购买的商品已完成出库，包裹将由京东物流配送。"
             "配送员会在送达前与您电话联系，请保持电话畅通。如需修改收货地址或预约送货时间，"
             "请在APP内“我的订单”中操作。如对商品有任何疑问，可联系在线客服或拨打客服热线，"
             "我们将竭诚为您服务。温馨提示：签收前请检查外包装是否完好。感谢您的支持，祝您购物愉快！"},
]


def run_demo(cfg: Config, *, keep_running: bool, timeout_s: float,
             campaign: bool = False) -> int:
    # Only errors: the demo's own table is the output (its config's warnings, such as
    # the embedded Redis being for development only, are expected here).
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    return asyncio.run(_demo(cfg, keep_running=keep_running, timeout_s=timeout_s,
                             campaign=campaign))


async def _demo(cfg: Config, *, keep_running: bool, timeout_s: float,
                campaign: bool = False) -> int:
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run(), name="daemon")
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()  # raises the startup error
        return 3
    cmpp = (f", CMPP ISMG simulator on {cfg.simulator.host}:{cfg.simulator.cmpp_port}"
            if cfg.simulator.cmpp_port else "")
    print(f"gatewayd demo: Redis {daemon.store.url}, SMSC simulator on "
          f"{cfg.simulator.host}:{cfg.simulator.port}{cmpp}, HTTP on {cfg.http.listen}")
    t0 = time.time()
    async with Client(daemon.store.url, prefix=cfg.redis.prefix, queue=cfg.queue) as client:
        results = await client.send(DEMO_MESSAGES, source="demo")
        ids = [msg_id for msg_id, _ in results]
        records: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg_id in ids:
                rec = await client.status(msg_id)
                if rec is not None:
                    records[msg_id] = rec
            if all(records.get(i, {}).get("state") in FINAL_STATES for i in ids):
                break
            await asyncio.sleep(0.1)
    _print_table(DEMO_MESSAGES, ids, records, t0)
    delivered = sum(1 for i in ids if records.get(i, {}).get("state") == "delivered")
    print(f"\n{delivered}/{len(ids)} delivered")
    if campaign:
        from gatewayd.demo_campaign import run_campaign

        ok = await run_campaign(daemon, timeout_s)
        delivered = delivered if ok else -1
    if keep_running:
        print("Still running (Ctrl-C to stop). Try:\n"
              f"  gatewayd enqueue -c {cfg.source} --to +8613800138000 --text '【京东】验证码 1234'"
              " --category otp\n"
              f"  gatewayd events -c {cfg.source} --follow\n"
              f"  curl -s http://{cfg.http.listen}/metrics | grep gatewayd_")
        await task
    else:
        daemon.stop_event.set()
        await task
    return 0 if delivered == len(ids) else 1


def _print_table(items: list[dict[str, Any]], ids: list[str],
                 records: dict[str, dict[str, Any]], t0: float) -> None:
    print()
    header = f"{'id':<28} {'to':<16} {'category':<14} {'parts':>5} {'state':<13} " \
             f"{'carrier':<8} {'carrier id':<20} {'latency':>8}"
    print(header)
    print("-" * len(header))
    for item, msg_id in zip(items, ids, strict=True):
        rec = records.get(msg_id, {})
        done = rec.get("done_at") or rec.get("updated_at")
        latency = f"{(float(done) - t0) * 1000:.0f} ms" if done else "-"
        print(f"{msg_id:<28} {rec.get('to', item['to']):<16} {item['category']:<14} "
              f"{rec.get('segments', '-')!s:>5} {rec.get('state', 'unknown'):<13} "
              f"{rec.get('carrier', '-'):<8} {rec.get('carrier_id', '-'):<20} {latency:>8}")
        if rec.get("state") not in ("delivered", None) and rec.get("reason"):
            print(f"{'':<28} reason: {rec['reason']}")
