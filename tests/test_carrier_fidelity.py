"""Carrier fidelity (issue 16), through the daemon against the simulator's faults.

Every bind layout correlates (split binds, entries sharing an account, old keys after an
upgrade); a message_payload long message expects one receipt; the message's life is the
submit_sm's validity_period; partly accepted long messages resend only what failed, with
the same reference; an unanswered submit holds up only its own message; submits lost with
their bind use no attempt; the account's rate is learned from throttling and shared.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.carrier import CarrierPool, SubmitRequest
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.model import OutboundMessage, Receipt
from gatewayd.ops import metrics
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.policy.ratelimit import CarrierRateGate
from gatewayd.sim.smpp import pdu as simpdu
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, events_by_id, load, running_daemon, wait_final, write_config
from tests.interop.pysmsc import Recorder

LONG = ("Your order {n} has shipped in two boxes; box one arrives tomorrow morning and box "
        "two on Friday. Change the address or pick a locker until 20:00 today at "
        "https://t.ly/{n} - thank you for shopping with us, see you soon. ") * 2

QUEUE = """
[queue]
read_batch = 64
dispatch_workers = 2
reclaim_idle_s = 5.0
early_receipt_hold_s = 30.0
retry_backoff_s = [0.2, 0.5, 1.0]
max_attempts = {attempts}
"""


def queue(attempts: int = 8) -> str:
    return QUEUE.format(attempts=attempts)


async def send(redis_url: str, cfg_queue: object, items: list[dict[str, object]]) -> list[str]:
    async with Client(redis_url, queue=cfg_queue) as client:  # type: ignore[arg-type]
        return [i for i, _ in await client.send(items)]


def bulk(n: int, prefix: str, text: str = "parcel {n} is on its way",
         category: str = "transactional") -> list[dict[str, object]]:
    return [{"to": f"+{prefix}{k:08d}", "text": text.format(n=k), "category": category}
            for k in range(n)]


def accepted_parts(sim: SmscSimulator) -> collections.Counter[tuple[str, int, int]]:
    """(destination, reference, part number) -> times the SMSC accepted that part."""
    out: collections.Counter[tuple[str, int, int]] = collections.Counter()
    for s in sim.submissions:
        if s.status == 0 and s.udh is not None:
            ref, _total, seq = s.udh
            out[(s.destination, ref, seq)] += 1
    return out


# 1. Every bind layout correlates ------------------------------------------------------------

@pytest.mark.parametrize("layout", ["split", "two_entries", "any_receiver"])
async def test_receipts_correlate_whatever_bind_they_arrive_on(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    layout: str,
) -> None:
    """split: one carrier with 2 transmitter binds and a receiver bind. two_entries: a
    transmitter entry and a receiver entry on one account (Kannel's layout; before: 200
    of 200 expired). any_receiver: two transceiver entries on one account and an SMSC
    that sends every receipt to any of the account's binds in turn."""
    sim = await smsc(receipt_delay_s=0.05,
                     receipts_to="any" if layout == "any_receiver" else "submitter")
    carrier_extra, extra = "", ""
    if layout == "split":
        carrier_extra = 'bind_mode = "transmitter"\nbinds = 2\nreceiver_binds = 1'
    elif layout == "two_entries":
        carrier_extra = 'bind_mode = "transmitter"'
        extra = f"""
[[carrier]]
mo_country_code = "86"
name = "sim-rx"
host = "127.0.0.1"
port = {sim.port}
system_id = "demo"
password = "demo"
bind_mode = "receiver"
reconnect_min_s = 0.1
[routing]
default = ["sim"]
"""
    else:
        extra = f"""
[[carrier]]
mo_country_code = "86"
name = "sim-b"
host = "127.0.0.1"
port = {sim.port}
system_id = "demo"
password = "demo"
reconnect_min_s = 0.1
[routing]
default = ["sim", "sim-b"]
[routing.prefixes]
"86139" = ["sim-b"]
"""
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra_carrier=carrier_extra, extra=extra + queue()))
    ids = await send(redis_url, cfg.queue, bulk(100, "86138") + bulk(100, "86139"))
    async with running_daemon(cfg) as daemon:
        records = await wait_final(redis, keys, ids, timeout_s=60)
        modes = collections.Counter(b.mode for b in daemon.pool.snapshot()) \
            if daemon.pool else collections.Counter()
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 200}
    if layout == "split":
        assert modes == {"transmitter": 2, "receiver": 1}
    carriers = collections.Counter(r["carrier"] for r in records.values())
    assert carriers == ({"sim": 100, "sim-b": 100} if layout == "any_receiver"
                        else {"sim": 200})
    # One account: one key space (the account is named after its first entry).
    assert not [k async for k in redis.scan_iter(match=keys.correlation("sim-b", "*"))]
    assert not [k async for k in redis.scan_iter(match=keys.correlation("sim-rx", "*"))]


async def test_keys_of_an_older_gatewayd_are_still_found(
    tmp_path: Path, redis: aioredis.Redis, keys: Keys
) -> None:
    """Receipts in flight across the upgrade: a key named after the carrier entry (how
    gatewayd keyed them before accounts) matches a receipt arriving on any entry's bind."""
    p = tmp_path / "gw.toml"
    p.write_text('[[carrier]]\n'
                 'mo_country_code = "86"\nname = "a"\nhost = "h"\n'
                 'system_id = "acct"\npassword = "p"\n'
                 '[[carrier]]\n'
                 'mo_country_code = "86"\nname = "b"\nhost = "h"\n'
                 'system_id = "acct"\npassword = "p"\n',
                 encoding="utf-8")
    cfg = load_config(p)
    handler = InboundHandler(redis, keys, cfg, lambda: None)
    ledger = Ledger(keys, cfg, redis)
    for mid in ("old-b", "new"):
        m = OutboundMessage(id=mid, to="+8613800138000", text="x")
        pipe = redis.pipeline(transaction=False)
        ledger.record(pipe, m, "submitted", time.time(), carrier="b", segments=1)
        await pipe.execute()
    await redis.set(keys.correlation("b", "b1"), "old-b 0")  # what an older gatewayd wrote
    await redis.set(keys.correlation("a", "c1"), "new 0")  # account "a" (its first entry)
    await handler.on_receipts([
        Receipt(carrier="a", smsc_id="b1", stat="DELIVRD", state="delivered"),
        Receipt(carrier="b", smsc_id="c1", stat="DELIVRD", state="delivered"),
    ])
    for mid in ("old-b", "new"):
        assert await redis.hget(keys.status(mid), "state") == "delivered"


# 2. message_payload: one PDU, one receipt ------------------------------------------------------

async def test_payload_long_message_expects_one_receipt(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.05)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra_carrier='long_messages = "payload"'))
    ids = await send(redis_url, cfg.queue, bulk(5, "86137", text=LONG))
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=20)
    assert {r["state"] for r in records.values()} == {"delivered"}
    for r in records.values():
        assert int(r["segments"]) >= 3 and r["receipts"] == "1" and r["p0"] == "delivered"
    assert all(s.payload for s in sim.submissions) and len(sim.submissions) == 5
    events = await events_by_id(redis, keys)
    assert all("receipts" not in e for i in ids for e in events[i])  # not part of the events


# 3. The OTP's life in validity_period -------------------------------------------------------

@pytest.mark.parametrize("fmt", ["relative", "absolute", "none"])
async def test_validity_period_carries_the_message_life(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc, fmt: str
) -> None:
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra_carrier=f'validity = "{fmt}"'))
    now = time.time()
    expires = int(now) + 3600
    ids = await send(redis_url, cfg.queue, [
        {"to": "+8613800000001", "text": "code 1", "category": "otp"},  # class TTL 300 s
        {"to": "+8613800000002", "text": "order", "expires_at": expires},
        {"to": "+8613800000003", "text": "no end"},
    ])
    async with running_daemon(cfg):
        await wait_final(redis, keys, ids, timeout_s=20)
    by_dest = {s.destination: s.validity_period for s in sim.submissions}
    if fmt == "none":
        assert set(by_dest.values()) == {""}
        return
    assert by_dest["8613800000003"] == ""  # no expiry: the SMSC's default
    otp, order = by_dest["8613800000001"], by_dest["8613800000002"]
    if fmt == "relative":
        # YYMMDDhhmmss000R: what is left of the 300 s (and of the hour), whole seconds.
        assert otp.endswith("000R") and order.endswith("000R")
        left = int(otp[8:10]) * 60 + int(otp[10:12])
        assert otp[:8] == "00000000" and 290 <= left <= 300
        assert order[:6] == "000000" and 3590 <= int(order[6:8]) * 3600 + int(
            order[8:10]) * 60 + int(order[10:12]) <= 3600
    else:
        assert order == time.strftime("%y%m%d%H%M%S", time.gmtime(expires)) + "000+"
        assert otp.endswith("000+") and otp[:12] >= time.strftime(
            "%y%m%d%H%M%S", time.gmtime(now + 290))


# 4. Partly accepted long messages: only what failed goes again ---------------------------------

async def test_partly_accepted_long_messages_resend_only_the_failed_parts(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Parts refused with ESME_RSYSERR (per part), or never answered: only they go
    again, with the same reference and part number, until the message is whole; parts
    still refused after the in-call resends wait in the delayed set (``resume``) with
    their accepted siblings' receipts already recorded. The handset never gets a part
    twice."""
    sim = await smsc(receipt_delay_s=0.05, error_fraction=0.4, error_status=0x08,
                     unanswered_fraction=0.02, seed=4)
    # A timeout long enough that only the unanswered parts time out, even on a loaded
    # machine (a part answered after our timeout may have been accepted: then nobody
    # can know, and its resend is the at-least-once duplicate).
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            response_timeout_s=3.0, extra=queue(attempts=40)))
    ids = await send(redis_url, cfg.queue, bulk(150, "86136", text=LONG))
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=120)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 150}
    parts = accepted_parts(sim)
    assert max(parts.values()) == 1, [k for k, n in parts.items() if n > 1][:5]
    # Every message reached the handset whole under ONE reference.
    refs = collections.defaultdict(set)
    for dest, ref, _seq in parts:
        refs[dest].add(ref)
    assert all(len(r) == 1 for r in refs.values()) and len(refs) == 150
    assert all(len(sim.texts_to(d)) == 1 for d in refs)
    # Both paths ran: resends within the call, and resumes through the delayed set.
    assert (metrics.REGISTRY.get_sample_value("gatewayd_part_resends_total",
                                              {"carrier": "sim"}) or 0) > 0
    resumed = [r for r in records.values() if "sent_parts" in r]
    assert resumed, "no message went through the delayed set with parts accepted"
    events = await events_by_id(redis, keys)
    for r_id in ids:
        states = [e["state"] for e in events[r_id]]
        assert states[-2:] == ["submitted", "delivered"] and states.count("submitted") == 1


# 5. An unanswered submit holds up only its own message ------------------------------------------

async def test_an_unanswered_submit_does_not_hold_its_batch(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """1 % of submits never answered, response timeout 4 s: the batch's other messages
    are recorded at once, not after the straggler's timeout; the straggler is retried."""
    sim = await smsc(receipt_delay_s=0.05, unanswered_fraction=0.01, seed=5)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            response_timeout_s=4.0, extra=queue()))
    ids = await send(redis_url, cfg.queue, bulk(3000, "86135"))
    before = metrics.REGISTRY.get_sample_value("gatewayd_submit_stragglers_total") or 0
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=120)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 3000}
    assert sim.stats.unanswered >= 10
    after = metrics.REGISTRY.get_sample_value("gatewayd_submit_stragglers_total") or 0
    assert after - before >= sim.stats.unanswered
    # Recorded `submitted` right after the SMSC's answer: never a straggler's timeout later.
    # (A straggler's batch used to wait for it: half the batches held 4 s.)
    accepted_at = {s.destination: s.received_at for s in sim.submissions if s.status == 0}
    late = [mid for k, mid in enumerate(ids)
            if float(records[mid]["submitted_at"]) - accepted_at[f"86135{k:08d}"] > 2.0]
    assert not late, late[:3]


# 6. Bind losses use no attempt ----------------------------------------------------------------

async def test_a_flapping_smsc_never_fails_what_it_never_refused(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The SMSC closes the connection every 100 submits, with the window full: what was
    lost in flight is retried without using an attempt, so max_attempts = 2 fails none."""
    sim = await smsc(receipt_delay_s=0.05, drop_after=100)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, window=100,
                            extra=queue(attempts=2)))
    ids = await send(redis_url, cfg.queue, bulk(2000, "86134"))
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=120)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 2000}
    assert sim.stats.drops >= 15
    assert {r.get("attempts") for r in records.values()} == {"0"}
    events = await events_by_id(redis, keys)
    lost = [i for i in ids if any(e.get("reason") == "retry:BIND_LOST" for e in events[i])]
    assert lost, "no submit was lost with its bind"


# 7. The account's rate is learned and shared ----------------------------------------------------

async def test_learned_rate_settles_under_the_smsc_cap_for_two_daemons(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """An SMSC capped at 300/s, tps 1000 configured, two processes' pools on one Redis
    bucket: after the first seconds the account sends near the cap (not the old
    saw-tooth) and few submits are throttled. Figures: bench/throttle.py."""
    sim = await smsc(receipts=False, max_tps=300.0)
    p = tmp_path / "gw.toml"
    p.write_text('[[carrier]]\n'
                 f'mo_country_code = "86"\nname = "sim"\nhost = "127.0.0.1"\nport = {sim.port}\n'
                 'system_id = "demo"\npassword = "demo"\ntps = 1000\nwindow = 200\n',
                 encoding="utf-8")
    cfg = load_config(p)
    pools = [CarrierPool(cfg, Recorder(), rate_gate=CarrierRateGate(redis, keys, cfg))
             for _ in range(2)]
    for pool in pools:
        await pool.start()
        assert await pool.wait_bound(5.0)
    stop = asyncio.Event()

    async def pump(pool: CarrierPool, tag: str) -> None:
        n = 0
        while not stop.is_set():
            reqs = [SubmitRequest(msg_id=f"{tag}{n + k}", destination=f"86133{n + k:07d}",
                                  text="x") for k in range(50)]
            n += 50
            await pool.submit_batch(reqs)

    t0 = time.time()
    tasks = [asyncio.create_task(pump(pool, tag)) for pool, tag in zip(pools, "ab", strict=True)]
    await asyncio.sleep(9.0)
    stop.set()
    await asyncio.gather(*tasks)
    for pool in pools:
        await pool.stop(1.0)
    late = [s for s in sim.submissions if s.received_at >= t0 + 5.0]
    span = max(s.received_at for s in late) - min(s.received_at for s in late)
    ok = sum(1 for s in late if s.status == 0)
    throttled = sum(1 for s in late if s.status == simpdu.ESME_RTHROTTLED)
    print(f"after 5 s: {ok / span:.0f} accepted/s, {throttled / len(late):.1%} throttled")
    # Sending above the SMSC's cap (the configured 1000/s, or a saw-tooth) is the bug
    # this guards against: what both pools sent after 5 s stays within the SMSC's own
    # bucket (300/s over the span plus its one second of burst, which a pool that fell
    # behind on a loaded machine may catch up with) and is rarely throttled. Below the
    # cap is also the machine's speed (two pumps on a loaded 2-core box fell to 237/s),
    # so the floor is read from what the daemons learned (tps_limit below).
    assert len(late) <= 300 * span + 300, (len(late), span)
    assert throttled / len(late) <= 0.05
    assert {b.carrier for b in pools[0].snapshot()} == {"sim"}
    assert 200 <= pools[0].snapshot()[0].tps_limit <= 330
