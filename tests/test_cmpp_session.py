"""CMPP binds against the built-in ISMG simulator over real TCP.

Authentication (ok, refused, impostor ISMG, version), the window, flow-control back-off,
ACTIVE_TEST both ways, long messages reassembled on the ISMG's side, reports correlated by
Msg_Id, MO (concatenated, GBK, TD), DELIVER_RESP only after the handler, TERMINATE both
ways, and a connection lost mid-window losing nothing.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gatewayd import smstext
from gatewayd.carrier.api import SubmitOutcome, SubmitRequest
from gatewayd.carrier.cmpp.client import CmppClient
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.sim.cmpp.ismg import IsmgSimulator
from tests.cmpp_helpers import ACCESS, client, ismg
from tests.interop.pysmsc import wait_until

OTP = "【京东】您的验证码是482913，5分钟内有效。"
LONG_ZH = "【京东】您的订单已发货，快递单号SF1234567890，请注意查收。回TD退订" * 5
LONG_ASCII = "Your order 1234 has shipped {tracking: SF1234567890} thank you! " * 5
LOST = {"BIND_LOST", "NOT_SENT", "RESPONSE_TIMEOUT", "NO_BOUND_CARRIER"}


def reqs(n: int, text: str = OTP, start: int = 0, **kw: object) -> list[SubmitRequest]:
    return [SubmitRequest(msg_id=f"m{i}", destination=f"+86138{i:08d}", text=text,
                          **kw)  # type: ignore[arg-type]
            for i in range(start, start + n)]


async def send_until_all_ok(c: CmppClient, batch: list[SubmitRequest],
                            rounds: int = 40) -> dict[str, SubmitOutcome]:
    """Resubmit what came back as retry (what the dispatcher does), until all are ok."""
    done: dict[str, SubmitOutcome] = {}
    todo = batch
    for _ in range(rounds):
        outs = await c.submit_batch(todo)
        assert len(outs) == len(todo)
        for o in outs:
            assert o.ok or o.kind == "retry", o
            if o.ok:
                done[o.msg_id] = o
        todo = [r for r in todo if r.msg_id not in done]
        if not todo:
            return done
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(todo)} never accepted")


@pytest.mark.parametrize("version", ["2.0", "3.0"])
async def test_submit_long_messages_and_correlated_reports(version: str) -> None:
    async with ismg() as sim, client(sim, version=version) as (c, rec):
        batch = [
            SubmitRequest(msg_id="otp", destination="+8613800000001", text=OTP,
                          expires_at=time.time() + 300),
            SubmitRequest(msg_id="zh", destination="+8613800000002", text=LONG_ZH, source="88"),
            SubmitRequest(msg_id="en", destination="+8613800000003", text=LONG_ASCII),
        ]
        outs = await c.submit_batch(batch)
        assert [o.ok for o in outs] == [True, True, True], outs
        expected = [1, smstext.segments(LONG_ZH).parts, smstext.segments(LONG_ASCII).parts]
        assert expected[1:] == [3, 3]
        assert [len(o.smsc_ids) for o in outs] == expected
        assert [o.segments for o in outs] == expected
        assert sim.texts_to("13800000001") == [OTP]
        assert sim.texts_to("13800000002") == [LONG_ZH]
        assert sim.texts_to("13800000003") == [LONG_ASCII]
        by_dest = {s.destination: s for s in sim.submissions}
        assert by_dest["13800000002"].src_id == ACCESS + "88"
        assert by_dest["13800000001"].src_id == ACCESS
        assert by_dest["13800000001"].valid_time.endswith("032+")
        assert by_dest["13800000001"].service_id == "MJS0019905"
        assert all(s.v3 == (version == "3.0") for s in sim.submissions)
        ids = [i for o in outs for i in o.smsc_ids]
        assert ids == [str(s.msg_id) for s in sim.submissions]
        await wait_until(lambda: len(rec.receipts) == len(ids), 5.0)
        assert sorted(r.smsc_id for r in rec.receipts) == sorted(ids)
        assert {r.state for r in rec.receipts} == {"delivered"}
        assert sim.stats.receipts_acked == len(ids)


async def test_undeliverable_reports_carry_the_carrier_code() -> None:
    async with ismg(undeliverable_fraction=1.0, failure_stat="MK:0001") as sim, \
            client(sim) as (c, rec):
        [o] = await c.submit_batch(reqs(1))
        await wait_until(lambda: len(rec.receipts) == 1, 5.0)
        r = rec.receipts[0]
        assert (r.smsc_id, r.state, r.stat, r.err) == (o.smsc_ids[0], "undeliverable",
                                                       "UNDELIV", "MK:0001")


async def test_wrong_secret_is_refused_and_nothing_is_sent() -> None:
    async with ismg() as sim, client(sim, secret="wrong", wait=False) as (c, _):
        await wait_until(lambda: c.snapshot()[0].state == "refused", 5.0)
        assert "CMPP_AUTH_FAILED" in c.snapshot()[0].last_error
        [o] = await c.submit_batch(reqs(1))
        assert (o.ok, o.kind, o.status_name) == (False, "retry", "NO_BOUND_CARRIER")
        assert sim.stats.connect_refused >= 1 and sim.stats.submits == 0


async def test_an_ismg_that_does_not_know_our_secret_is_refused() -> None:
    async with ismg(bad_ismg_auth=True) as sim, client(sim, wait=False) as (c, _):
        await wait_until(lambda: c.snapshot()[0].state == "refused", 5.0)
        assert "AuthenticatorISMG" in c.snapshot()[0].last_error
        assert not c.ready()


async def test_a_version_the_ismg_does_not_speak_is_refused() -> None:
    async with ismg(version="2.0") as sim, client(sim, version="3.0", wait=False) as (c, _):
        await wait_until(lambda: c.snapshot()[0].state == "refused", 5.0)
        assert "CMPP_VERSION_TOO_HIGH" in c.snapshot()[0].last_error


async def test_window_of_16_unanswered_submits() -> None:
    async with ismg(response_delay_s=0.2) as sim, client(sim) as (c, _):
        outs = await c.submit_batch(reqs(80))
        assert all(o.ok for o in outs)
        assert sim.stats.max_outstanding == 16


async def test_flow_control_slows_the_bind_and_loses_nothing() -> None:
    async with ismg(max_tps=200) as sim, client(sim, tps=2000.0) as (c, _):
        first = await c.submit_batch(reqs(300))
        throttled = [o for o in first if not o.ok]
        assert throttled, "the ISMG's cap was never hit"
        assert {(o.kind, o.status_name) for o in throttled} == {("retry", "CMPP_FLOW_CONTROL")}
        assert c.snapshot()[0].state == "throttled"
        # The account's learned rate (carrier/throttle.py, as for ESME_RTHROTTLED) is cut
        # and shown on the bind at the pool's next housekeeping tick.
        await wait_until(lambda: c.snapshot()[0].tps_limit < 2000.0, 5.0)
        done = await send_until_all_ok(c, [r for r, o in zip(reqs(300), first, strict=True)
                                           if not o.ok])
        accepted = [s for s in sim.submissions if s.result == 0]
        assert len(accepted) == 300 == len(done) + (300 - len(throttled))
        assert len({s.destination for s in accepted}) == 300


async def test_flow_controlled_parts_of_a_long_message_are_sent_again_alone() -> None:
    async with ismg(flow_control_fraction=0.25, seed=7) as sim, client(sim) as (c, _):
        batch = reqs(30, LONG_ZH)
        done = await send_until_all_ok(c, batch)
        assert len(done) == 30
        for r in batch:
            dest = r.destination[3:]
            assert sim.texts_to(dest) == [LONG_ZH]
            parts = [s.pk_number for s in sim.submissions if s.destination == dest
                     and s.result == 0]
            assert sorted(parts) == [1, 2, 3]  # no accepted part ever sent twice
        assert sim.stats.flow_controlled > 10


async def test_active_test_both_ways() -> None:
    # Our idle time (0.05 s) below the simulator's period (0.1 s): each side's ACTIVE_TEST
    # is read by the other, so neither's idle timer is always reset by the other's.
    async with ismg(active_test_s=0.1) as sim, client(sim, enquire_link_s=0.05) as (c, _):
        await wait_until(lambda: sim.stats.active_test_resps >= 2, 5.0)
        await wait_until(lambda: sim.stats.active_tests >= 1, 5.0)
        assert c.snapshot()[0].reconnects == 0


async def test_a_dead_link_is_noticed_by_active_test() -> None:
    async with ismg(answer_active_test=False) as sim, \
            client(sim, enquire_link_s=0.05, response_timeout_s=0.1) as (c, _):
        await wait_until(lambda: sim.stats.connects >= 2, 5.0)
        assert sim.stats.active_tests >= 3
        assert "ACTIVE_TEST" in c.binds[0].last_error or c.snapshot()[0].reconnects >= 1


async def test_report_answered_only_after_the_handler_took_it() -> None:
    async with ismg() as sim, client(sim) as (c, rec):
        rec.fail = True
        [o] = await c.submit_batch(reqs(1))
        await wait_until(lambda: sim.stats.receipts_refused >= 1, 5.0)
        assert rec.receipts == [] and sim.stats.receipts_acked == 0
        rec.fail = False
        await wait_until(lambda: len(rec.receipts) == 1, 5.0)
        assert rec.receipts[0].smsc_id == o.smsc_ids[0]
        await wait_until(lambda: sim.stats.receipts_acked == 1, 5.0)


async def test_mo_td_concatenated_and_gbk() -> None:
    async with ismg() as sim, client(sim) as (_, rec):
        await sim.inject_mo("13900000001", ACCESS, "TD", wait=True)
        long = "我要退订，不要再给我发营销短信了。" * 8
        await sim.inject_mo("13900000002", ACCESS + "88", long, parts=3, shuffle=True,
                            wait=True)
        await sim.inject_mo("13900000003", ACCESS, "退订", gbk=True, wait=True)
        await wait_until(lambda: len(rec.inbound) == 3, 5.0)
        got = {m.source: m for m in rec.inbound}
        assert got["13900000001"].text == "TD" and got["13900000001"].destination == ACCESS
        assert (got["13900000002"].text, got["13900000002"].parts) == (long, 3)
        assert got["13900000002"].destination == ACCESS + "88"
        assert got["13900000003"].text == "退订"


async def test_mo_handler_failure_gets_it_delivered_again() -> None:
    async with ismg() as sim, client(sim) as (_, rec):
        rec.fail = True
        task = asyncio.create_task(sim.inject_mo("13900000001", ACCESS, "TD", wait=True))
        await wait_until(lambda: sim.stats.mo_sent >= 1 and sim.stats.mo_acked == 0
                         and not task.done(), 5.0)
        await asyncio.sleep(0.3)
        rec.fail = False
        await asyncio.wait_for(task, 5.0)
        await wait_until(lambda: len(rec.inbound) == 1, 5.0)


async def test_disconnect_mid_window_loses_nothing() -> None:
    async with ismg(drop_after=25, response_delay_s=0.02) as sim, client(sim) as (c, _):
        batch = reqs(200)
        first = await c.submit_batch(batch)
        assert len(first) == 200
        lost = [o for o in first if not o.ok]
        assert lost, "the drop should have cut some submits off"
        assert {o.status_name for o in lost} <= LOST and {o.kind for o in lost} == {"retry"}
        accepted = {str(s.msg_id) for s in sim.submissions if s.result == 0}
        assert {i for o in first if o.ok for i in o.smsc_ids} <= accepted
        sim.set(drop_after=0)
        done = await send_until_all_ok(c, [r for r, o in zip(batch, first, strict=True)
                                           if not o.ok])
        assert len(done) + (200 - len(lost)) == 200
        assert {s.destination for s in sim.submissions if s.result == 0} == \
            {r.destination[3:] for r in batch}


async def test_unanswered_submits_time_out_as_retry() -> None:
    async with ismg(unanswered_fraction=1.0) as sim, \
            client(sim, response_timeout_s=0.2) as (c, _):
        outs = await c.submit_batch(reqs(5))
        assert {(o.ok, o.status_name) for o in outs} == {(False, "RESPONSE_TIMEOUT")}
        assert sim.stats.unanswered == 5


async def test_terminate_on_stop_and_from_the_ismg() -> None:
    async with ismg() as sim:
        async with client(sim) as (c, _):
            await sim.terminate_all()
            await wait_until(lambda: sim.stats.connects == 2 and c.ready(), 5.0)
            assert all(o.ok for o in await c.submit_batch(reqs(3)))
        assert sim.stats.terminates == 1  # our stop() said goodbye


async def test_framing_error_drops_only_that_connection() -> None:
    async with ismg() as sim, client(sim, binds=2) as (c, _):
        await wait_until(lambda: sim.connected_count() == 2, 5.0)
        await sim.send_raw(b"\x00\x00\x00\x05\x00\x00\x00\x05\x00\x00\x00\x01")
        await wait_until(lambda: sim.stats.connects >= 4 and c.ready(), 5.0)
        assert all(o.ok for o in await c.submit_batch(reqs(10)))


async def test_malformed_deliver_is_answered_and_the_link_stays() -> None:
    async with ismg() as sim, client(sim) as (c, rec):
        bad = (b"\x00\x00\x00\x20" + b"\x00\x00\x00\x05" + b"\x00\x00\x00\x63"
               + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00" * 12)
        await sim.send_raw(bad)
        await sim.inject_mo("13900000001", ACCESS, "TD", wait=True)
        await wait_until(lambda: len(rec.inbound) == 1, 5.0)
        assert c.snapshot()[0].reconnects == 0


async def test_gbk_outbound_setting() -> None:
    settings = CmppSettings(version="2.0", encoding="gbk", validity="relative")
    async with ismg() as sim, client(sim, settings=settings) as (c, _):
        [o] = await c.submit_batch(reqs(1, LONG_ZH, expires_at=time.time() + 600))
        assert o.ok
        assert {s.msg_fmt for s in sim.submissions} == {15}
        assert sim.submissions[0].valid_time == "000000001000000R"
        assert sim.texts_to("13800000000") == [LONG_ZH]


async def test_unsendable_request_fails_alone() -> None:
    async with ismg() as sim, client(sim) as (c, _):
        outs = await c.submit_batch([
            SubmitRequest(msg_id="bad", destination="+8613800000001", text="x", source="+86"),
            SubmitRequest(msg_id="good", destination="+8613800000002", text="x"),
        ])
        assert (outs[0].ok, outs[0].kind, outs[0].status_name) == (False, "permanent",
                                                                   "CMPP_UNSENDABLE")
        assert outs[1].ok and len(sim.submissions) == 1


def test_simulator_is_independent_of_the_client() -> None:
    import ast
    from pathlib import Path

    import gatewayd.sim.cmpp as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("gatewayd.carrier"), path
    assert IsmgSimulator  # the simulator's own codec is what checks the client's


async def test_keep_submissions_bounds_the_simulators_record() -> None:
    """The ISMG keeps at most keep_submissions SUBMITs, the newest (trimmed in chunks,
    not one list shift a SUBMIT once past the bound)."""
    async with ismg(keep_submissions=50, receipts=False) as sim, client(sim) as (c, _):
        outs = await c.submit_batch(reqs(120))
        assert all(o.ok for o in outs)
        assert 45 <= len(sim.submissions) <= 50
        assert int(outs[-1].smsc_ids[0]) in {s.msg_id for s in sim.submissions}
        assert sim.stats.submits == 120
