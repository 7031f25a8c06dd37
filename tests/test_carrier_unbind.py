"""An unbind from the SMSC is answered after the deliver_sm already read are (SMPP 3.4:
outstanding operations complete first), within a bound, and nothing new is submitted on
the unbound session meanwhile (real TCP; the handler stands in for the receipt store)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from gatewayd.carrier import CarrierPool, SubmitRequest
from gatewayd.model import InboundMessage, Receipt
from gatewayd.ops import metrics
from tests.interop.pysmsc import (
    Conn,
    PySmsc,
    Recorder,
    carrier,
    config,
    deliver_sm_body,
    wait_until,
)

HDR = struct.Struct(">IIII")
UNBIND, UNBIND_RESP, DELIVER_SM_RESP = 0x00000006, 0x80000006, 0x80000005
BIND_TRANSCEIVER = 0x00000009


class LoggingSmsc(PySmsc):
    """Also keeps every PDU from the ESME in arrival order, with its connection."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[Conn, int, int, int]] = []

    def _handle(self, conn: Conn, cmd: int, status: int, seq: int, body: bytes) -> None:
        self.log.append((conn, cmd, status, seq))
        super()._handle(conn, cmd, status, seq, body)

    def answers(self, conn: Conn) -> list[tuple[int, int, int]]:
        """(cmd, status, seq) of the responses written on ``conn``, in order."""
        return [(cmd, st, seq) for c, cmd, st, seq in self.log
                if c is conn and cmd & 0x80000000]

    def requests(self, conn: Conn) -> list[int]:
        return [cmd for c, cmd, _, _ in self.log if c is conn and not cmd & 0x80000000]


class HeldRecorder(Recorder):
    """A receipt store that takes nothing until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.calls = 0

    async def on_receipts(self, receipts: list[Receipt]) -> None:
        self.calls += 1
        await self.release.wait()
        await super().on_receipts(receipts)

    async def on_inbound(self, messages: list[InboundMessage]) -> None:
        self.calls += 1
        await self.release.wait()
        await super().on_inbound(messages)


def receipt(smsc_id: str) -> bytes:
    return deliver_sm_body(source="8613800138000", destination="10690", esm_class=0x04,
                           short_message=f"id:{smsc_id} stat:DELIVRD err:000".encode())


def mo(text: str) -> bytes:
    return deliver_sm_body(source="8613800000004", destination="10690",
                           short_message=text.encode())


@pytest.fixture
async def smsc() -> AsyncIterator[LoggingSmsc]:
    s = LoggingSmsc()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def started(smsc: LoggingSmsc, handler: Recorder, **kw: object) -> CarrierPool:
    pool = CarrierPool(config(carrier("a", smsc.port, **kw)), handler)
    await pool.start()
    assert await pool.wait_bound(5.0)
    return pool


async def test_deliver_sm_of_earlier_turns_are_answered_before_the_unbind_resp(
    smsc: LoggingSmsc,
) -> None:
    handler = HeldRecorder()
    pool = await started(smsc, handler)
    try:
        conn = smsc.bound_conns()[0]
        r = conn.deliver(receipt("0A"))
        m = conn.deliver(mo("TD"))
        await wait_until(lambda: handler.calls >= 1)
        conn.send(UNBIND, 0, 77)  # a later read than the deliver_sm still being handled
        await wait_until(lambda: not pool.ready())
        # Read the unbind, the session takes no submit_sm, although it is still open.
        out = await pool.submit_batch([SubmitRequest(msg_id="x", destination="1", text="hi")])
        assert not out[0].ok and out[0].kind == "retry"
        await asyncio.sleep(0.2)
        assert smsc.answers(conn) == [] and smsc.binds_ok == 1
        assert not conn.writer.is_closing()
        # What an SRE sees meanwhile: the bind is on its way out, not up.
        assert pool.snapshot()[0].state == "unbinding"
        assert metrics.REGISTRY.get_sample_value(
            "gatewayd_bind_up", {"carrier": "a", "bind": "0"}) == 0
        handler.release.set()
        await wait_until(lambda: smsc.binds_ok == 2)
        await wait_until(lambda: pool.snapshot()[0].state == "bound")
        answers = smsc.answers(conn)
        assert sorted(answers[:2]) == sorted([(DELIVER_SM_RESP, 0, r), (DELIVER_SM_RESP, 0, m)])
        assert answers[2:] == [(UNBIND_RESP, 0, 77)]
        assert smsc.requests(conn) == [BIND_TRANSCEIVER]  # no submit_sm after the unbind
        assert [x.smsc_id for x in handler.receipts] == ["a"]
        assert [x.text for x in handler.inbound] == ["TD"]
        assert await pool.wait_bound(5.0)
        out = await pool.submit_batch([SubmitRequest(msg_id="y", destination="1", text="hi")])
        assert out[0].ok
    finally:
        handler.release.set()
        await pool.stop(1.0)


async def test_a_stalled_store_holds_the_unbind_only_for_the_bound(smsc: LoggingSmsc) -> None:
    # The wait is the carrier's response timeout here (below UNBIND_WAIT_MAX_S).
    handler = HeldRecorder()
    pool = await started(smsc, handler, response_timeout_s=0.5)
    loop = asyncio.get_running_loop()
    try:
        conn = smsc.bound_conns()[0]
        conn.deliver(receipt("0B"))
        conn.send(UNBIND, 0, 78)
        t0 = loop.time()
        await wait_until(lambda: (UNBIND_RESP, 0, 78) in smsc.answers(conn), 5.0)
        waited = loop.time() - t0
        assert 0.4 <= waited < 2.0, waited
        assert smsc.answers(conn) == [(UNBIND_RESP, 0, 78)]  # the held one unanswered
        await wait_until(lambda: smsc.binds_ok == 2)  # closed, and the bind came back
        assert await pool.wait_bound(5.0)
        # The store recovers: the held receipt is stored, but its answer had nowhere to
        # go (the SMSC delivers it again); the new session's deliver_sm are answered.
        handler.release.set()
        await wait_until(lambda: len(handler.receipts) == 1)
        new = smsc.bound_conns()[-1]
        again = new.deliver(receipt("0B"))
        await wait_until(lambda: (DELIVER_SM_RESP, 0, again) in smsc.answers(new))
        assert smsc.answers(conn) == [(UNBIND_RESP, 0, 78)]
        assert [x.smsc_id for x in handler.receipts] == ["b", "b"]
    finally:
        handler.release.set()
        await pool.stop(1.0)


async def test_smsc_gone_while_the_unbind_waits(smsc: LoggingSmsc) -> None:
    """The SMSC hangs up before we answered its unbind: no answer, no error, bound again."""
    handler = HeldRecorder()
    pool = await started(smsc, handler)
    try:
        conn = smsc.bound_conns()[0]
        conn.deliver(receipt("0C"))
        conn.send(UNBIND, 0, 79)
        await wait_until(lambda: not pool.ready())
        conn.writer.close()
        await wait_until(lambda: smsc.binds_ok == 2)
        assert smsc.answers(conn) == []
        handler.release.set()
        await wait_until(lambda: len(handler.receipts) == 1)
        assert await pool.wait_bound(5.0)
        new = smsc.bound_conns()[-1]
        seq = new.deliver(receipt("0D"))
        await wait_until(lambda: (DELIVER_SM_RESP, 0, seq) in smsc.answers(new))
    finally:
        handler.release.set()
        await pool.stop(1.0)
