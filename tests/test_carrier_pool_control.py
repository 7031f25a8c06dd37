"""The pool's live-control seam (issue 21 item 5), over real SMPP and CMPP connections:
suspend (routing moves on; a chain of suspended carriers is back-pressure), set_tuning
(every link's window and tps share, the rate gate's cap; None = the config's),
restart_binds (down and up again, nothing lost), and _adopt replacing an engine keeps
the carrier's overrides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gatewayd.carrier import CarrierPool, SubmitRequest
from gatewayd.carrier.engines import engine_for
from gatewayd.carrier.throttle import LocalRateGate
from gatewayd.sim.cmpp.ismg import IsmgSimulator
from tests.cmpp_helpers import cmpp_carrier, ismg
from tests.interop.pysmsc import PySmsc, Recorder, carrier, config


@pytest.fixture
async def smscs() -> AsyncIterator[tuple[PySmsc, PySmsc]]:
    a, b = PySmsc(), PySmsc()
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


@pytest.fixture
async def cmpp_sim() -> AsyncIterator[IsmgSimulator]:
    async with ismg(receipt_delay_s=0.05) as sim:
        yield sim


def reqs(n: int, tag: str, forced: str = "") -> list[SubmitRequest]:
    return [SubmitRequest(msg_id=f"{tag}{i}", destination="+8613800138000", text=tag,
                          carrier=forced) for i in range(n)]


async def started(pool: CarrierPool) -> CarrierPool:
    await pool.start()
    assert await pool.wait_bound(5.0)
    return pool


async def test_suspend_moves_routing_on_and_a_suspended_chain_is_backpressure(
        smscs: tuple[PySmsc, PySmsc]) -> None:
    a, b = smscs
    pool = await started(CarrierPool(
        config(carrier("a", a.port), carrier("b", b.port), default=["a", "b"]), Recorder()))
    try:
        out = await pool.submit_batch(reqs(3, "x"))
        assert {o.carrier for o in out} == {"a"}
        pool.suspend("a", True)
        assert pool.suspended("a")
        out = await pool.submit_batch(reqs(3, "y"))
        assert all(o.ok for o in out) and {o.carrier for o in out} == {"b"}
        assert len(a.submitted) == 3
        # A forced carrier that is suspended, or a chain of suspended ones: wait (retry,
        # back-pressure, no attempt used), never a failure of the message.
        out = await pool.submit_batch(reqs(1, "z", forced="a"))
        assert (out[0].ok, out[0].kind, out[0].status_name, out[0].backpressure) == (
            False, "retry", "CARRIER_SUSPENDED", True)
        pool.suspend("b", True)
        out = await pool.submit_batch(reqs(2, "w"))
        assert all(o.status_name == "CARRIER_SUSPENDED" and o.backpressure for o in out)
        # Binds stay up while suspended (receipts and MO flow on them), but with every
        # carrier suspended the pool is not ready: the dispatcher leaves messages queued.
        assert all(s.state == "bound" for s in pool.snapshot())
        assert not pool.ready()
        pool.suspend("a", False)
        assert pool.ready()
        out = await pool.submit_batch(reqs(2, "v"))
        assert {o.carrier for o in out} == {"a"} and all(o.ok for o in out)
        with pytest.raises(KeyError):
            pool.suspend("nosuch", True)
    finally:
        await pool.stop(1.0)


async def test_tuning_reaches_links_and_the_rate_gate_and_goes_back(
        smscs: tuple[PySmsc, PySmsc], cmpp_sim: IsmgSimulator) -> None:
    a, _ = smscs
    cfg = config(carrier("a", a.port, binds=2, tps=1000.0, window=50),
                 cmpp_carrier(cmpp_sim.port, name="c", protocol="cmpp", tps=400.0, window=16))
    gate = LocalRateGate(cfg)
    pool = await started(CarrierPool(cfg, Recorder(), rate_gate=gate))
    try:
        pool.set_tuning("a", 100.0, 5)
        pool.set_tuning("c", None, 4)
        assert pool.effective("a") == (100.0, 5) and pool.effective("c") == (400.0, 4)
        assert pool.tuning("c") == (None, 4)
        by = {(s.carrier, s.index): s for s in pool.snapshot()}
        assert [by[("a", i)].window for i in (0, 1)] == [5, 5]
        assert [by[("a", i)].tps_limit for i in (0, 1)] == [50.0, 50.0]  # tps / binds
        assert by[("c", 0)].window == 4
        assert gate.rate("a") == 100.0  # the account's cap, at once (it sat at the old one)
        out = await pool.submit_batch(reqs(20, "t", forced="a") + reqs(10, "u", forced="c"))
        assert all(o.ok for o in out)
        with pytest.raises(ValueError):
            pool.set_tuning("a", 0.0, None)
        with pytest.raises(ValueError):
            pool.set_tuning("a", None, 0)
        pool.set_tuning("a", None, None)
        pool.set_tuning("c", None, None)
        assert pool.tuning("a") == (None, None)
        by = {(s.carrier, s.index): s for s in pool.snapshot()}
        assert by[("a", 0)].window == 50 and by[("c", 0)].window == 16
        assert gate.rate("a") == 1000.0
    finally:
        await pool.stop(1.0)


async def test_restart_binds_reconnects_both_protocols_and_loses_nothing(
        smscs: tuple[PySmsc, PySmsc], cmpp_sim: IsmgSimulator) -> None:
    a, _ = smscs
    cfg = config(carrier("a", a.port, binds=2),
                 cmpp_carrier(cmpp_sim.port, name="c", protocol="cmpp"))
    pool = await started(CarrierPool(cfg, Recorder()))
    try:
        before = {(s.carrier, s.index): s.reconnects for s in pool.snapshot()}
        logins_a = a.binds_ok
        sending = [pool.submit_batch(reqs(50, f"r{k}", forced=c))
                   for k, c in enumerate(("a", "c", "a", "c"))]
        results, _, _ = await asyncio.gather(asyncio.gather(*sending),
                                             pool.restart_binds("a"), pool.restart_binds("c"))
        assert await pool.wait_bound(5.0)
        after = {(s.carrier, s.index): s.reconnects for s in pool.snapshot()}
        assert all(after[k] == before[k] + 1 for k in before), (before, after)
        assert a.binds_ok == logins_a + 2
        # Every message has an outcome: accepted, or a retry (never a silent loss).
        outs = [o for batch in results for o in batch]
        assert len(outs) == 200
        assert all(o.ok or o.kind == "retry" for o in outs), [o for o in outs if not o.ok][:3]
        out = await pool.submit_batch(reqs(5, "after", forced="a") + reqs(5, "after", forced="c"))
        assert all(o.ok for o in out)
    finally:
        await pool.stop(1.0)


async def test_adopting_a_new_engine_keeps_the_carriers_overrides(
        smscs: tuple[PySmsc, PySmsc]) -> None:
    a, b = smscs
    cfg = config(carrier("a", a.port), carrier("b", b.port), default=["a", "b"])
    pool = await started(CarrierPool(cfg, Recorder()))
    try:
        pool.suspend("a", True)
        pool.set_tuning("a", None, 7)
        old = pool.links("a")
        pool._adopt("a", engine_for(cfg.carrier[0], "secret", Recorder(), lambda: 0.0))
        new = pool.links("a")
        assert new and not set(map(id, new)) & set(map(id, old))
        assert pool.suspended("a")
        assert all(link.status().window == 7 for link in new)
        assert await pool.wait_bound(5.0)  # a started pool starts the adopted links
        for link in old:
            await link.shutdown()
        out = await pool.submit_batch(reqs(2, "k"))
        assert {o.carrier for o in out} == {"b"}
    finally:
        await pool.stop(1.0)

