"""A backlog of deliver_sm in one read is handled a bounded number of PDUs per loop turn,
all of it, in order, each answered after the handler took it (real TCP, both loops)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from gatewayd.carrier import CarrierPool
from gatewayd.carrier.smpp.session import MAX_PDUS_PER_TURN
from gatewayd.model import Receipt
from tests.interop.pysmsc import PySmsc, Recorder, carrier, config, deliver_sm_body, wait_until
from tests.test_carrier_unbind import DELIVER_SM_RESP, UNBIND_RESP, LoggingSmsc

HDR = struct.Struct(">IIII")
DELIVER_SM, UNBIND, BIND_TRANSCEIVER = 0x00000005, 0x00000006, 0x00000009


class TurnRecorder(Recorder):
    """Records each handler call's size and how many loop turns a ticker had seen by then."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.ticks_at_call: list[int] = []
        self.ticks = 0

    async def tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    async def on_receipts(self, receipts: list[Receipt]) -> None:
        self.batches.append(len(receipts))
        self.ticks_at_call.append(self.ticks)
        await super().on_receipts(receipts)


def receipt_pdu(seq: int, smsc_id: int) -> bytes:
    body = deliver_sm_body(source="8613800138000", destination="10690", esm_class=0x04,
                           short_message=f"id:{smsc_id:x} stat:DELIVRD err:000".encode())
    return HDR.pack(16 + len(body), DELIVER_SM, 0, seq) + body


async def with_pool(scenario: Callable[[PySmsc, TurnRecorder], Coroutine[Any, Any, None]],
                    smsc_type: type[PySmsc] = PySmsc) -> None:
    smsc = smsc_type()
    await smsc.start()
    handler = TurnRecorder()
    ticker = asyncio.create_task(handler.tick())
    pool = CarrierPool(config(carrier("a", smsc.port)), handler)
    try:
        await pool.start()
        assert await pool.wait_bound(5.0)
        await scenario(smsc, handler)
    finally:
        ticker.cancel()
        await pool.stop(1.0)
        await smsc.stop()


async def burst_in_one_write(smsc: PySmsc, handler: TurnRecorder) -> None:
    n = 3 * MAX_PDUS_PER_TURN + 17
    conn = smsc.bound_conns()[0]
    conn.writer.write(b"".join(receipt_pdu(1000 + i, 0xA000 + i) for i in range(n)))
    await wait_until(lambda: len(smsc.deliver_resps) == n, 20.0)
    assert [r.smsc_id for r in handler.receipts] == [f"{0xA000 + i:x}" for i in range(n)]
    assert sorted(smsc.deliver_resps) == [(1000 + i, 0) for i in range(n)]
    assert sum(handler.batches) == n
    assert max(handler.batches) <= MAX_PDUS_PER_TURN
    assert len(handler.batches) >= 4  # n / MAX_PDUS_PER_TURN, rounded up
    # Other tasks ran between the turns: no two batches were parsed in one turn.
    assert len(set(handler.ticks_at_call)) == len(handler.ticks_at_call)
    # Reading resumed once the backlog was gone: the bind still takes receipts.
    last = conn.deliver(deliver_sm_body(source="1", destination="2", esm_class=0x04,
                                        short_message=b"id:FFFF stat:DELIVRD"))
    await wait_until(lambda: (last, 0) in smsc.deliver_resps)
    assert handler.receipts[-1].smsc_id == "ffff"


async def test_burst_larger_than_a_turn_is_all_handled_in_order() -> None:
    await with_pool(burst_in_one_write)


def test_burst_larger_than_a_turn_on_uvloop() -> None:
    # uvloop reads a whole backlog in one callback: where one turn used to last longest.
    uvloop.run(with_pool(burst_in_one_write))


def unbind_in_a_backlog(where: int) -> Callable[[PySmsc, TurnRecorder],
                                                Coroutine[Any, Any, None]]:
    async def scenario(smsc: PySmsc, handler: TurnRecorder) -> None:
        assert isinstance(smsc, LoggingSmsc)
        n = 2 * MAX_PDUS_PER_TURN
        conn = smsc.bound_conns()[0]
        pdus = [receipt_pdu(10 + i, 0xB000 + i) for i in range(n)]
        pdus.insert(where, HDR.pack(16, UNBIND, 0, 7))
        conn.writer.write(b"".join(pdus))
        await wait_until(lambda: smsc.binds_ok == 2, 20.0)  # answered, closed, bound again
        assert [r.smsc_id for r in handler.receipts] == [f"{0xB000 + i:x}" for i in range(n)]
        # Every deliver_sm of the read, before the unbind and after it (which an SMSC
        # should not send, but answering them spares it a redelivery), is answered
        # ESME_ROK, in order, before the unbind_resp; nothing is sent after it.
        assert smsc.answers(conn) == (
            [(DELIVER_SM_RESP, 0, 10 + i) for i in range(n)] + [(UNBIND_RESP, 0, 7)]
        )
        assert smsc.requests(conn) == [BIND_TRANSCEIVER]

    return scenario


@pytest.mark.parametrize("where", [1, MAX_PDUS_PER_TURN, MAX_PDUS_PER_TURN + 3])
async def test_unbind_inside_a_backlog_keeps_the_order(where: int) -> None:
    """PDUs before and after an unbind in the same read are all handled in order, and
    the unbind_resp waits for the deliver_sm_resp of all of them, this turn's and later
    turns'."""
    await with_pool(unbind_in_a_backlog(where), LoggingSmsc)


def test_unbind_inside_a_backlog_on_uvloop() -> None:
    uvloop.run(with_pool(unbind_in_a_backlog(1), LoggingSmsc))


async def test_a_failing_later_turn_drops_the_connection_not_the_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in a later turn must not leave the bind paused for good: it reconnects."""
    from gatewayd.carrier.smpp.delivery import Deliveries

    real = Deliveries.process
    calls = [0]

    def second_call_fails(self: Deliveries, session: Any, items: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("injected fault in the second turn")
        real(self, session, items)

    monkeypatch.setattr(Deliveries, "process", second_call_fails)

    async def scenario(smsc: PySmsc, handler: TurnRecorder) -> None:
        conn = smsc.bound_conns()[0]
        conn.writer.write(b"".join(receipt_pdu(1 + i, i) for i in range(2 * MAX_PDUS_PER_TURN)))
        await wait_until(lambda: smsc.binds_ok == 2, 10.0)  # dropped and bound again
        assert len(handler.receipts) == MAX_PDUS_PER_TURN  # the first turn's
        new = smsc.bound_conns()[-1]
        seq = new.deliver(deliver_sm_body(source="1", destination="2", esm_class=0x04,
                                          short_message=b"id:77 stat:DELIVRD"))
        await wait_until(lambda: (seq, 0) in smsc.deliver_resps)
        assert handler.receipts[-1].smsc_id == "77"

    await with_pool(scenario)
