"""End to end through the real daemon over CMPP: Redis -> policies -> CMPP over TCP -> reports.

The same bar as the SMPP daemon tests (test_e2e, test_carrier_fidelity, test_faults,
test_mo_optout), against the built-in ISMG simulator: texts arrive intact (long ones as
UDH parts the handset joins), reports correlate by 64-bit Msg_Id, every message ends in
exactly one final state, flow control (Result 8) delays without using attempts and
resends only the refused parts of a long message, disconnects and unanswered SUBMITs
lose nothing, permanent results fail the message, and a `TD` reply opts the sender out.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from gatewayd.client import Client
from gatewayd.config import Config
from gatewayd.model import FINAL_STATES
from gatewayd.ops import metrics, top
from gatewayd.sim.cmpp.ismg import IsmgSettings, IsmgSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from tests.cmpp_helpers import ACCESS, SECRET, SP_ID, write_cmpp_config
from tests.e2e_helpers import (
    ROOT,
    Smsc,
    events_by_id,
    in_flight_bound,
    load,
    running_daemon,
    wait_final,
)

LONG_GSM = "Dear customer, your parcel {n} is out for delivery today between 14:00 and 18:00. " * 4
LONG_ZH = ("【京东】尊敬的客户，您的包裹{n}今天由京东物流配送，"
           "配送员会在送达前与您电话联系，请保持电话畅通。") * 3
DEMO_POLICY = ROOT / "policies" / "demo.toml"
QUEUE = """
[queue]
max_attempts = {attempts}
retry_backoff_s = [0.2, 0.5]
"""


@pytest.fixture
async def sim_factory() -> AsyncIterator[list[IsmgSimulator]]:
    started: list[IsmgSimulator] = []
    yield started
    for s in started:
        await s.stop()


async def start_ismg(started: list[IsmgSimulator], **kw: object) -> IsmgSimulator:
    settings: dict[str, object] = {"sp_id": SP_ID, "secret": SECRET, **kw}
    sim = IsmgSimulator(IsmgSettings(**settings))  # type: ignore[arg-type]
    await sim.start()
    started.append(sim)
    return sim


async def send(redis_url: str, cfg: Config, items: list[dict[str, object]]) -> list[str]:
    async with Client(redis_url, queue=cfg.queue) as client:
        return [i for i, _ in await client.send(items)]


def national(to: object) -> str:
    return str(to).removeprefix("+86")


@pytest.mark.parametrize("version", ["2.0", "3.0"])
async def test_messages_reach_the_ismg_intact_and_reports_come_back(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator], version: str,
) -> None:
    sim = await start_ismg(sim_factory, receipt_delay_s=0.05)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port,
                                 version=version))
    items: list[dict[str, object]] = []
    for n in range(40):
        text = {
            0: f"Your code is {1000 + n} {{ok}} [5]",
            1: f"【京东】您的验证码是 {1000 + n}，5分钟内有效。",
            2: LONG_GSM.format(n=n),
            3: LONG_ZH.format(n=n),
        }[n % 4]
        items.append({"to": f"+86138{n:08d}", "text": text,
                      "category": ["otp", "transactional"][n % 2]})
    ids = await send(redis_url, cfg, items)
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    for item in items:
        assert sim.texts_to(national(item["to"])) == [item["text"]], item["to"]
    assert all(s.v3 == (version == "3.0") for s in sim.submissions)
    assert {s.src_id for s in sim.submissions} == {ACCESS}
    assert {s.service_id for s in sim.submissions} == {"MJS0019905"}
    # Every part's report correlated by its 64-bit Msg_Id: one per accepted SUBMIT.
    assert sim.stats.receipts_acked == len(sim.submissions)
    events = await events_by_id(redis, keys)
    msg_ids = {str(s.msg_id) for s in sim.submissions}
    for mid, item in zip(ids, items, strict=True):
        states = [e["state"] for e in events[mid]]
        assert states == ["queued", "submitted", "delivered"], (mid, states)
        submitted = events[mid][1]
        assert submitted["carrier"] == "cmcc" and submitted["carrier_id"] in msg_ids
        parts = len([s for s in sim.submissions if s.destination == national(item["to"])])
        assert records[mid]["segments"] == str(parts)


async def test_every_message_ends_in_exactly_one_final_event(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    sim = await start_ismg(sim_factory, receipt_delay_s=0.01, undeliverable_fraction=0.2,
                           failure_stat="MK:0001", seed=3)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port))
    ids = await send(redis_url, cfg,
                     [{"to": f"+86137{n:08d}", "text": f"n{n}"} for n in range(500)])
    async with running_daemon(cfg, burst=True) as daemon:
        await asyncio.wait_for(daemon.stop_event.wait(), 60)
    events = await events_by_id(redis, keys)
    finals: collections.Counter[str] = collections.Counter()
    for mid in ids:
        f = [e["state"] for e in events[mid] if e["state"] in FINAL_STATES]
        assert len(f) == 1, (mid, f)
        finals[f[0]] += 1
    assert set(finals) == {"delivered", "undeliverable"}
    undeliverable = [e for mid in ids for e in events[mid] if e["state"] == "undeliverable"]
    assert len(undeliverable) == finals["undeliverable"] > 0
    # China Mobile's error code in the report's Stat reaches the event.
    assert {e.get("err") for e in undeliverable} == {"MK:0001"}


async def test_flow_control_delays_but_uses_no_attempt(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    """30 % of SUBMITs answered Result 8: retried as ESME_RTHROTTLED is, without using an
    attempt, so max_attempts = 1 fails none."""
    sim = await start_ismg(sim_factory, receipt_delay_s=0.01, flow_control_fraction=0.3,
                           seed=7)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port,
                                 extra=QUEUE.format(attempts=1)))
    ids = await send(redis_url, cfg,
                     [{"to": f"+86139{n:08d}", "text": f"notice {n}"} for n in range(300)])
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=90)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 300}
    assert sim.stats.flow_controlled > 0
    assert {r.get("attempts", "0") for r in records.values()} == {"0"}
    events = await events_by_id(redis, keys)
    deferred = [e for mid in ids for e in events[mid] if e["state"] == "deferred"]
    assert deferred and {e["reason"] for e in deferred} == {"retry:CMPP_FLOW_CONTROL"}


async def test_flow_controlled_parts_of_a_long_message_are_resent_alone(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    sim = await start_ismg(sim_factory, receipt_delay_s=0.01, flow_control_fraction=0.3,
                           seed=5)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port))
    items: list[dict[str, object]] = [{"to": f"+86150{n:08d}", "text": LONG_ZH.format(n=n)}
                                      for n in range(60)]
    ids = await send(redis_url, cfg, items)
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    assert {r["segments"] for r in records.values()} == {"3"}
    accepted = collections.Counter((s.destination, s.pk_number) for s in sim.submissions
                                   if s.result == 0)
    assert len(accepted) == 180 and set(accepted.values()) == {1}  # each part once
    for item in items:
        assert sim.texts_to(national(item["to"])) == [item["text"]]


async def test_permanent_result_fails_the_message(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    sim = await start_ismg(sim_factory, error_fraction=1.0, error_result=13)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port))
    [mid] = await send(redis_url, cfg, [{"to": "+8613800138000", "text": "hi"}])
    async with running_daemon(cfg):
        rec = (await wait_final(redis, keys, [mid], timeout_s=30))[mid]
    assert (rec["state"], rec["reason"]) == ("failed", "CMPP_INVALID_DEST_TERMINAL")


async def test_disconnects_mid_window_lose_nothing_and_use_no_attempt(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    """The ISMG drops the connection every 100 SUBMITs with the window full: what was in
    flight is retried as BIND_LOST (no attempt), so max_attempts = 1 fails none."""
    sim = await start_ismg(sim_factory, receipt_delay_s=0.05, drop_after=100,
                           response_delay_s=0.002)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port,
                                 extra=QUEUE.format(attempts=1)))
    ids = await send(redis_url, cfg,
                     [{"to": f"+86134{n:08d}", "text": f"parcel {n}"} for n in range(1000)])
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=120)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 1000}
    assert sim.stats.drops >= 5
    delivered_to = {s.destination for s in sim.submissions if s.result == 0}
    assert delivered_to == {f"134{n:08d}" for n in range(1000)}


async def test_unanswered_submits_are_retried_and_hold_up_no_batch(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    sim = await start_ismg(sim_factory, receipt_delay_s=0.02, unanswered_fraction=0.02,
                           seed=11)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port,
                                 response_timeout_s=1.0, extra=QUEUE.format(attempts=8)))
    ids = await send(redis_url, cfg,
                     [{"to": f"+86135{n:08d}", "text": f"code {n}"} for n in range(500)])
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=120)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 500}
    assert sim.stats.unanswered >= 3
    events = await events_by_id(redis, keys)
    timed_out = [mid for mid in ids
                 if any(e.get("reason") == "retry:RESPONSE_TIMEOUT" for e in events[mid])]
    assert timed_out
    for mid in ids:  # exactly one final state each, whatever went before
        assert len([e for e in events[mid] if e["state"] in FINAL_STATES]) == 1


async def test_ismg_killed_and_restarted(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator],
) -> None:
    """The ISMG dies mid-window: the connection comes back, in-flight messages are
    retried; reports the dead ISMG still owed never come, so those end `expired` at the
    receipt timeout. Every message ends once; duplicates are bounded by what was in
    flight."""
    sim = await start_ismg(sim_factory, receipt_delay_s=0.3, response_delay_s=0.01)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port, extra="""
[queue]
read_batch = 64
dispatch_workers = 2
receipt_timeout_s = 4.0
retry_backoff_s = [0.2, 0.5]
max_attempts = 8
"""))
    ids = await send(redis_url, cfg, [{"to": f"+86132{n:08d}", "text": f"parcel {n}"}
                                      for n in range(1500)])
    async with running_daemon(cfg) as daemon:
        while len(sim.submissions) < 400:
            await asyncio.sleep(0.01)
        await sim.stop(timeout_s=0)  # gone, with its window and owed reports
        await asyncio.sleep(0.5)
        assert not daemon.readiness()[0]
        sim2 = await start_ismg(sim_factory, port=sim.port, receipt_delay_s=0.05)
        records = await wait_final(redis, keys, ids, timeout_s=90)
    states = collections.Counter(r.get("state") for r in records.values())
    assert set(states) <= {"delivered", "expired"}, states
    assert states["delivered"] >= 1500 - 400 - 50
    events = await events_by_id(redis, keys)
    for mid in ids:
        assert len([e for e in events[mid] if e["state"] in FINAL_STATES]) == 1, mid
    seen = collections.Counter(s.destination for x in (sim, sim2) for s in x.submissions
                               if s.result == 0)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    assert len(seen) == 1500 and duplicates <= 16 + 2 * 2 * 64 + 32


async def test_redis_restarted_mid_run(
    tmp_path: Path, sim_factory: list[IsmgSimulator],
) -> None:
    """Redis goes away under load over CMPP: unready meanwhile, the connection kept,
    reports spooled or redelivered (DELIVER_RESP only once recorded); it resumes and
    every message is delivered, duplicates within what was in flight."""
    rport = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=rport, persist=True)
    url = server.start()
    sim = await start_ismg(sim_factory, receipt_delay_s=0.05, receipt_resend_s=1.0)
    client = aioredis.from_url(url, decode_responses=True)
    keys = Keys()
    try:
        cfg = load(write_cmpp_config(tmp_path, redis_url=url, port=sim.port, tps=2000,
                                     extra=QUEUE.format(attempts=8)))
        ids = await send(url, cfg, [{"to": f"+86131{n:08d}", "text": f"parcel {n}"}
                                    for n in range(2000)])
        async with running_daemon(cfg) as daemon:
            while len(sim.submissions) < 500:
                await asyncio.sleep(0.01)
            server.stop()  # SIGTERM: Redis writes its append-only file and exits
            await asyncio.sleep(1.5)
            ready, why = daemon.readiness()
            assert not ready and why["redis"] != "ok"
            assert why["carriers"] == {"cmcc": "bound"}  # the connection kept meanwhile
            server.port = rport
            server.start()
            await client.aclose()
            client = aioredis.from_url(url, decode_responses=True)
            records = await wait_final(client, keys, ids, timeout_s=90)
            assert daemon.readiness()[0]
        assert collections.Counter(r.get("state") for r in records.values()) == {
            "delivered": 2000}
        events = await events_by_id(client, keys)
        for mid in ids:
            assert len([e for e in events[mid] if e["state"] in FINAL_STATES]) == 1, mid
        seen = collections.Counter(s.destination for s in sim.submissions if s.result == 0)
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        assert len(seen) == 2000 and duplicates <= in_flight_bound(cfg)
    finally:
        await client.aclose()
        server.stop()


async def test_one_daemon_routes_over_both_protocols_and_fails_over(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator], smsc: Smsc,
) -> None:
    """138 numbers go to the CMPP carrier first, others to SMPP; with the ISMG refusing
    our secret, the 138 numbers fail over to SMPP. Reports correlate on both."""
    ismg_ok = await start_ismg(sim_factory, receipt_delay_s=0.02)
    smpp = await smsc(receipt_delay_s=0.02)
    routing = f"""
[[carrier]]
name = "sim"
host = "127.0.0.1"
port = {smpp.port}
system_id = "demo"
password = "demo"
source_addr = "10690001"
reconnect_min_s = 0.1
reconnect_max_s = 1.0
mo_country_code = "86"

[routing]
default = ["sim"]
[routing.prefixes]
"86138" = ["cmcc", "sim"]
"""
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=ismg_ok.port,
                                 after=routing))
    items: list[dict[str, object]] = [{"to": f"+86{p}{n:08d}", "text": f"n{n}"}
                                      for p in ("138", "186") for n in range(50)]
    ids = await send(redis_url, cfg, items)
    async with running_daemon(cfg) as daemon:
        records = await wait_final(redis, keys, ids, timeout_s=30)
        # Which protocol each bind speaks: in its status, the readiness answer and the
        # daemon's status line (systemd), and as a metric label.
        assert {(b.carrier, b.protocol, b.version) for b in daemon.pool.snapshot()} == {
            ("cmcc", "cmpp", "3.0"), ("sim", "smpp", "3.4")}
        binds = daemon.readiness()[1]["binds"]
        assert {(b["carrier"], b["protocol"], b["state"]) for b in binds} == {
            ("cmcc", "cmpp", "bound"), ("sim", "smpp", "bound")}
        assert daemon._status_line({}).endswith("binds up 2 (cmpp 1, smpp 1)")
        text = generate_latest(metrics.REGISTRY).decode()
        for line in ('gatewayd_bind_info{bind="0",carrier="cmcc",protocol="cmpp",'
                     'version="3.0"} 1.0',
                     'gatewayd_bind_info{bind="0",carrier="sim",protocol="smpp",'
                     'version="3.4"} 1.0'):
            assert line in text.splitlines()
        samples = top.parse(text)
        assert top.total(samples, "gatewayd_submits_total", carrier="cmcc",
                         protocol="cmpp") >= 50
        assert top.total(samples, "gatewayd_command_status_total", carrier="cmcc",
                         protocol="cmpp", command="cmpp_submit", status="CMPP_OK") >= 50
    assert {r["state"] for r in records.values()} == {"delivered"}
    assert {(r["to"][:6], r["carrier"]) for r in records.values()} == {
        ("+86138", "cmcc"), ("+86186", "sim")}
    # Now the ISMG does not know our secret: 138 numbers fail over to the SMPP carrier.
    refusing = await start_ismg(sim_factory, secret="not ours")
    cfg2 = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=refusing.port,
                                  after=routing, name="gw2.toml"))
    ids2 = await send(redis_url, cfg2, [{"to": f"+86138{n:08d}", "text": f"again {n}"}
                                        for n in range(20)])
    async with running_daemon(cfg2):
        records2 = await wait_final(redis, keys, ids2, timeout_s=30)
    assert {(r["state"], r["carrier"]) for r in records2.values()} == {("delivered", "sim")}
    assert refusing.stats.connect_refused >= 1 and refusing.stats.submits == 0


@pytest.mark.parametrize("reply", ["TD", "退订"])
async def test_td_reply_blocks_the_next_marketing_message(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    sim_factory: list[IsmgSimulator], reply: str,
) -> None:
    sim = await start_ismg(sim_factory, receipt_delay_s=0.01)
    cfg = load(write_cmpp_config(tmp_path, redis_url=redis_url, port=sim.port,
                                 policy=DEMO_POLICY))
    async with running_daemon(cfg):
        # CMPP gives the sender in national form; mo_country_code makes it E.164.
        await sim.inject_mo("13800138000", ACCESS + "88", reply, gbk=reply != "TD", wait=True)
        for _ in range(100):
            if await redis.exists(keys.optout("8613800138000")):
                break
            await asyncio.sleep(0.05)
        ids = await send(redis_url, cfg, [
            {"to": "+8613800138000", "category": "marketing",
             "text": "【京东】双11全场满300减50 回TD退订"},
            {"to": "+8613800138000", "category": "otp", "text": "【京东】您的验证码是 4821"},
        ])
        records = await wait_final(redis, keys, ids, timeout_s=20)
    promo, code = ids
    assert records[promo]["state"] == "rejected"
    assert records[promo]["reason"].startswith("optout")
    assert records[code]["state"] == "delivered"
    mo = [f for _, f in await redis.xrange(keys.inbound)]
    assert mo[0]["from"] == "+8613800138000" and mo[0]["text"] == reply
    assert mo[0]["carrier"] == "cmcc"
