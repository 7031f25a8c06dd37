"""MO from any sender (issue 14, items 8 and 9), over real SMPP from the simulator.

A `TD` from a sender that is no number (a short code, nothing, 41 digits) is stored and
answered ESME_ROK; it opts nothing out and does not make its neighbours in the same read
fail; an SMSC redelivery of an MO is not stored twice; national senders opt out their
E.164 number, per the carrier's mo_country_code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.consent import records
from gatewayd.ops import metrics
from gatewayd.store.keys import Keys
from tests.e2e_helpers import ROOT, Smsc, load, running_daemon, write_config

DEMO_POLICY = ROOT / "policies" / "demo.toml"
SHORT = "10690001"


async def _until(check: object, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _mo_count(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("gatewayd_mo_total", {"result": result}) or 0.0


async def test_odd_senders_are_stored_acknowledged_and_never_fail_their_chunk(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            policy=DEMO_POLICY, mo_country_code="86"))
    no_number_before = _mo_count("no_number")
    odd = ["10086", "", "1" * 41, "JD-SHOP"]
    async with running_daemon(cfg):
        await _until(lambda: _bound(sim))
        # One write: the four odd senders and a real TD in national form arrive in one
        # read of the daemon's bind, each of them twice (the SMSC resending them).
        await sim.inject_mo_chunk([(s, SHORT, "TD") for s in odd]
                                  + [("13800138000", SHORT, "TD")], copies=2, wait=True)

        async def opted_out() -> bool:
            return bool(await redis.exists(keys.optout("8613800138000")))

        await _until(opted_out)
    # Every deliver_sm answered ESME_ROK the first time: nothing for the SMSC to resend.
    assert sim.stats.mo_acked == 10 and sim.stats.mo_nacked == 0
    rows = [f for _, f in await redis.xrange(keys.inbound)]
    senders = sorted(r["from"] for r in rows)
    assert senders == sorted([*odd, "+8613800138000"])  # each stored once, as received
    assert all(r["text"] == "TD" and r["to"] == SHORT for r in rows)
    # Only the real number opted out; the odd senders were no opt-out of anyone.
    optouts = [k async for k in redis.scan_iter(match=keys.optout("*"))]
    assert optouts == [keys.optout("8613800138000")]
    events = [f for _, f in await redis.xrange(keys.events) if f["state"] == "optout"]
    assert [e["to"] for e in events] == ["+86138****8000"]
    assert _mo_count("no_number") - no_number_before == len(odd)


async def test_a_redelivered_mo_is_stored_once_and_its_opt_out_still_applies(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The SMSC resends an MO whose opt-out step had failed (Redis refused the consent
    write): the resend is not stored again, and its opt-out is applied then."""
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            policy=DEMO_POLICY, mo_country_code="international"))
    # A WRONGTYPE value where the consent log stream goes: the opt-out step raises (a
    # Redis error, not an outage), for this MO only.
    await redis.set(keys.optout_audit, "not a stream")
    failed_before = _mo_count("failed")
    async with running_daemon(cfg):
        await _until(lambda: _bound(sim))
        await sim.inject_mo_chunk([("8613900000001", SHORT, "TD"),
                                   ("8613900000002", SHORT, "hello")], wait=True)

        async def failed() -> bool:
            return _mo_count("failed") > failed_before

        await _until(failed)
        assert not await _optout_events(redis, keys)
        await redis.delete(keys.optout_audit)
        # The SMSC resends both (as after a lost deliver_sm_resp).
        await sim.inject_mo_chunk([("8613900000001", SHORT, "TD"),
                                   ("8613900000002", SHORT, "hello")], wait=True)

        async def recorded() -> bool:
            return bool(await _optout_events(redis, keys))

        await _until(recorded)
    assert await redis.exists(keys.optout("8613900000001"))
    assert [r["number"] async for r in records.read(redis, keys)] == ["+8613900000001"]
    assert await _optout_events(redis, keys) == ["+86139****0001"]
    assert sim.stats.mo_nacked == 0
    rows = [(f["from"], f["text"]) for _, f in await redis.xrange(keys.inbound)]
    assert rows == [("+8613900000001", "TD"), ("+8613900000002", "hello")]


async def _optout_events(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [f["to"] for _, f in await redis.xrange(keys.events) if f["state"] == "optout"]


async def _bound(sim: object) -> bool:
    return bool(sim.bound_count())  # type: ignore[attr-defined]


async def test_cmpp_redelivery_is_known_by_its_msg_id(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    """Over CMPP the ISMG's Msg_Id tells a redelivery (same id: stored once) from the
    same person sending the same text again (a new id: stored again), whatever the
    sender."""
    from gatewayd.pipeline.inbound import InboundHandler
    from gatewayd.policy.engine import PolicyEngine
    from tests.cmpp_helpers import ACCESS, client, ismg

    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=9, policy=DEMO_POLICY))
    engine = PolicyEngine.load(DEMO_POLICY, classes=list(cfg.queue.classes))
    # The CMPP carrier is named "cmcc" in cmpp_helpers; the config's entry is "sim":
    # an entry the handler does not know reads its senders as international.
    handler = InboundHandler(redis, keys, cfg, lambda: engine)
    async with ismg() as sim, client(sim, handler=handler):  # type: ignore[arg-type]
        await sim.inject_mo("8613900000001", ACCESS, "TD", copies=3, wait=True)
        await sim.inject_mo("8613900000001", ACCESS, "TD", wait=True)
        await sim.inject_mo("10086", ACCESS, "TD", copies=2, wait=True)
    # Every DELIVER answered Result 0 at once: none sent again for a refusal.
    assert sim.stats.mo_sent == sim.stats.mo_acked == 6
    rows = [(f["from"], f["text"]) for _, f in await redis.xrange(keys.inbound)]
    assert rows == [("+8613900000001", "TD"), ("+8613900000001", "TD"), ("10086", "TD")]
    assert await redis.exists(keys.optout("8613900000001"))
    assert [k async for k in redis.scan_iter(match=keys.optout("*"))] == [
        keys.optout("8613900000001")]
