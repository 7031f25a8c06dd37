"""The carrier pool against the project's SMSC simulator (gatewayd.sim), end to end."""

from __future__ import annotations

from gatewayd.carrier import CarrierPool, SubmitRequest, id_candidates
from gatewayd.sim.smpp.settings import SimSettings
from gatewayd.sim.smpp.smsc import SmscSimulator
from tests.interop.pysmsc import Recorder, carrier, config, wait_until


async def test_submit_receipts_throttling_and_mo_through_the_simulator() -> None:
    sim = SmscSimulator(SimSettings(
        system_id="gw", password="secret", receipt_delay_s=0.05, id_format="hex",
        receipt_id_format="decimal", receipt_dates_with_seconds=True, throttle_fraction=0.2,
        seed=7,
    ))
    port = await sim.start()
    handler = Recorder()
    pool = CarrierPool(config(carrier("sim", port, binds=2, window=20, udh_ref_bits=16)),
                       handler)
    await pool.start()
    try:
        assert await pool.wait_bound(5.0)
        texts = {f"m{i}": (f"验证码 {i:06d}，5分钟内有效【京东】" if i % 3 == 0
                           else f"Order {i} shipped {{tracking}} " * (1 + i % 7))
                 for i in range(120)}
        todo = [SubmitRequest(msg_id=k, destination=f"+86138{i:08d}", text=t)
                for i, (k, t) in enumerate(texts.items())]
        done = {}
        accepted: list[str] = []  # failed multipart attempts report their accepted parts too
        for _ in range(30):
            for o in await pool.submit_batch(todo):
                accepted.extend(o.smsc_ids)
                if o.ok:
                    done[o.msg_id] = o
                else:
                    assert o.kind == "retry", o
            todo = [r for r in todo if r.msg_id not in done]
            if not todo:
                break
        assert not todo
        await wait_until(lambda: len(handler.receipts) >= len(accepted), 15.0)
        keys = {k for i in accepted for k in id_candidates(i)}
        bad = [r for r in handler.receipts if not set(id_candidates(r.smsc_id)) & keys]
        assert not bad, (bad[:3], sorted(keys)[:5])
        assert sorted(m.text for m in sim.messages()) == sorted(texts.values())

        await sim.inject_mo("8613900000001", "10690", "退订 " * 40, parts=3, udh_bits=16,
                            shuffle=True, wait=True)
        await sim.inject_mo("8613900000002", "10690", "STOP " * 50, parts=2, use_sar=True,
                            shuffle=True, wait=True)
        await wait_until(lambda: len(handler.inbound) == 2)
        got = {m.source: (m.text, m.parts) for m in handler.inbound}
        assert got == {"8613900000001": ("退订 " * 40, 3), "8613900000002": ("STOP " * 50, 2)}
    finally:
        await pool.stop(2.0)
        await sim.stop()
