"""Receipts, MO and malformed input from the SMSC, over real TCP (plus the pure parsers)."""

from __future__ import annotations

import calendar
import struct
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd import smstext
from gatewayd.carrier import CarrierPool, SubmitRequest, id_candidates, normalise_id
from gatewayd.carrier.smpp.receipts import parse_receipt
from gatewayd.ops import metrics as M
from tests.interop.pysmsc import PySmsc, Recorder, carrier, config, deliver_sm_body, wait_until

# -- ids --------------------------------------------------------------------------------------


def test_normalise_id_forms() -> None:
    assert normalise_id(" 000A1B ") == "a1b"
    assert normalise_id("0000") == "0"
    assert normalise_id("Msg-7F") == "msg-7f"
    assert id_candidates("0A1B") == ["a1b", "2587"]
    assert id_candidates("2587") == ["2587", "9607"]
    assert id_candidates("msg-7f") == ["msg-7f"]
    assert id_candidates("") == []


@given(st.integers(min_value=0, max_value=2**64), st.integers(0, 4), st.booleans())
def test_hex_and_decimal_forms_of_one_id_always_meet(value: int, zeros: int, upper: bool) -> None:
    hex_form = "0" * zeros + (f"{value:X}" if upper else f"{value:x}")
    dec_form = "0" * zeros + str(value)
    assert set(id_candidates(hex_form)) & set(id_candidates(dec_form))


# -- receipt text -----------------------------------------------------------------------------

FIELDS = st.fixed_dictionaries({
    "id": st.text("0123456789abcdefABCDEF", min_size=1, max_size=20),
    "sub": st.just("001"),
    "dlvrd": st.sampled_from(["000", "001"]),
    "submit date": st.datetimes().map(lambda d: d.replace(year=2000 + d.year % 100)),
    "done date": st.datetimes().map(lambda d: d.replace(year=2000 + d.year % 100)),
    "stat": st.sampled_from(["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "ACCEPTD", "ENROUTE",
                             "DELETED", "UNKNOWN"]),
    "err": st.sampled_from(["000", "001", "0ff"]),
})
STATE = {"DELIVRD": "delivered", "UNDELIV": "undeliverable", "EXPIRED": "expired",
         "REJECTD": "undeliverable", "DELETED": "undeliverable", "UNKNOWN": "undeliverable",
         "ACCEPTD": "", "ENROUTE": ""}


@given(
    FIELDS, st.permutations(["id", "sub", "dlvrd", "submit date", "done date", "stat", "err"]),
    st.sampled_from([str.lower, str.upper, str.title]), st.booleans(),
    st.sets(st.sampled_from(["sub", "dlvrd", "submit date", "err"])),
    st.text(max_size=20),
)
def test_receipt_text_any_order_case_dates_and_missing_fields(
    f: dict[str, object], order: list[str], case: object, seconds: bool, drop: set[str],
    tail: str,
) -> None:
    def date(d: object) -> str:
        return d.strftime("%y%m%d%H%M%S" if seconds else "%y%m%d%H%M")  # type: ignore[attr-defined]

    parts = []
    for key in order:
        if key in drop:
            continue
        value = f[key]
        if key.endswith("date"):
            value = date(value)
        parts.append(f"{case(key)}:{value}")  # type: ignore[operator]
    text = " ".join(parts) + f" {case('text')}:{tail} id:999 stat:EXPIRED"  # type: ignore[operator]
    r = parse_receipt("a", text, {}, 5.0)
    assert r is not None
    assert r.smsc_id == normalise_id(str(f["id"]))
    assert r.stat == f["stat"] and r.state == STATE[str(f["stat"])]
    done = f["done date"]
    expected = done.replace(microsecond=0, **({} if seconds else {"second": 0}))  # type: ignore[attr-defined]
    assert r.done_date == calendar.timegm(expected.timetuple())
    if "err" not in drop:
        assert r.err == f["err"]
    if "submit date" in drop:
        assert r.submit_date == 0.0


def test_receipt_tlvs_win_over_text() -> None:
    tlvs = {0x001E: b"00FF\x00", 0x0427: bytes([3])}
    r = parse_receipt("a", "id:1 stat:DELIVRD", tlvs, 0.0)
    assert r is not None and (r.smsc_id, r.stat, r.state) == ("ff", "EXPIRED", "expired")
    assert parse_receipt("a", "stat:DELIVRD err:000", {}, 0.0) is None
    odd = parse_receipt("a", "ID:77 Stat:delivered Submit_Date:99999 text:", {}, 0.0)
    assert odd is not None and odd.state == "delivered" and odd.submit_date == 0.0


# -- over TCP ---------------------------------------------------------------------------------


@pytest.fixture
async def smsc() -> AsyncIterator[PySmsc]:
    s = PySmsc()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def pool_and_handler(smsc: PySmsc) -> AsyncIterator[tuple[CarrierPool, Recorder]]:
    handler = Recorder()
    pool = CarrierPool(config(carrier("a", smsc.port)), handler)
    await pool.start()
    assert await pool.wait_bound(5.0)
    try:
        yield pool, handler
    finally:
        await pool.stop(1.0)


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes((5, 0, 3, ref, total, seq))


def udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes((6, 8, 4, ref >> 8, ref & 0xFF, total, seq))


def sar(ref: int, total: int, seq: int) -> dict[int, bytes]:
    return {0x020C: struct.pack(">H", ref), 0x020E: bytes([total]), 0x020F: bytes([seq])}


async def test_multipart_mo_out_of_order_udh8_udh16_and_sar(
    smsc: PySmsc, pool_and_handler: tuple[CarrierPool, Recorder]
) -> None:
    _, handler = pool_and_handler
    conn = smsc.bound_conns()[0]
    gsm = "TD please stop sending me these offers {now} " * 4
    g = smstext.encode(gsm, "gsm7")
    g_parts = [g[:153], g[153:]]
    zh = "退订，谢谢。我不想再收到这些营销短信了，请把我从名单里删掉。" * 5
    z = smstext.encode(zh, "ucs2")
    z_parts = [z[i : i + 134] for i in range(0, len(z), 134)]
    sar_text = "STOP ALL " * 30
    s = smstext.encode(sar_text, "gsm7")
    s_parts = [s[:150], s[150:]]
    bodies = [
        deliver_sm_body(source="8613800000001", destination="10690", esm_class=0x40,
                        short_message=udh8(7, 2, 2) + g_parts[1]),
        deliver_sm_body(source="8613800000002", destination="10690", esm_class=0x40,
                        data_coding=8, short_message=udh16(0x1234, len(z_parts), 3) + z_parts[2]),
        deliver_sm_body(source="8613800000003", destination="10690",
                        short_message=s_parts[1], tlvs=sar(0x0102, 2, 2)),
        deliver_sm_body(source="8613800000002", destination="10690", esm_class=0x40,
                        data_coding=8, short_message=udh16(0x1234, len(z_parts), 1) + z_parts[0]),
        deliver_sm_body(source="8613800000001", destination="10690", esm_class=0x40,
                        short_message=udh8(7, 2, 1) + g_parts[0]),
        deliver_sm_body(source="8613800000003", destination="10690",
                        short_message=s_parts[0], tlvs=sar(0x0102, 2, 1)),
        deliver_sm_body(source="8613800000002", destination="10690", esm_class=0x40,
                        data_coding=8, short_message=udh16(0x1234, len(z_parts), 2) + z_parts[1]),
        deliver_sm_body(source="8613800000004", destination="10690", short_message=b"TD"),
    ]
    assert len(z_parts) == 3
    for body in bodies:
        conn.deliver(body)
    await wait_until(lambda: len(handler.inbound) == 4)
    texts = {m.source: (m.text, m.parts) for m in handler.inbound}
    assert texts == {
        "8613800000001": (gsm, 2), "8613800000002": (zh, 3),
        "8613800000003": (sar_text, 2), "8613800000004": ("TD", 1),
    }
    await wait_until(lambda: len(smsc.deliver_resps) == len(bodies))
    assert {st for _, st in smsc.deliver_resps} == {0}


async def test_handler_failure_asks_for_redelivery(
    smsc: PySmsc, pool_and_handler: tuple[CarrierPool, Recorder]
) -> None:
    _, handler = pool_and_handler
    conn = smsc.bound_conns()[0]
    handler.fail = True
    receipt = deliver_sm_body(source="1", destination="2", esm_class=0x04,
                              short_message=b"id:0A stat:DELIVRD err:000")
    first = conn.deliver(receipt)
    await wait_until(lambda: len(smsc.deliver_resps) == 1)
    assert smsc.deliver_resps == [(first, 0x64)]  # ESME_RX_T_APPN: deliver it again
    handler.fail = False
    second = conn.deliver(receipt)
    await wait_until(lambda: len(smsc.deliver_resps) == 2)
    assert smsc.deliver_resps[1] == (second, 0)
    assert [r.smsc_id for r in handler.receipts] == ["a"]


async def test_mo_timeout_delivers_incomplete_message(smsc: PySmsc) -> None:
    now = [1000.0]
    handler = Recorder()
    pool = CarrierPool(config(carrier("a", smsc.port)), handler, clock=lambda: now[0])
    await pool.start()
    assert await pool.wait_bound(5.0)
    try:
        conn = smsc.bound_conns()[0]
        conn.deliver(deliver_sm_body(source="8613800000009", destination="1069",
                                     esm_class=0x40, short_message=udh8(9, 3, 1) + b"Hello "))
        conn.deliver(deliver_sm_body(source="8613800000009", destination="1069",
                                     esm_class=0x40, short_message=udh8(9, 3, 3) + b" world"))
        await wait_until(lambda: len(smsc.deliver_resps) == 2)  # held parts acked at once
        assert not handler.inbound
        now[0] += 61.0
        await wait_until(lambda: len(handler.inbound) == 1, 5.0)
        m = handler.inbound[0]
        assert m.text == "Hello \ufffd world" and m.parts == 2
    finally:
        await pool.stop(1.0)


def pdu_errors(kind: str) -> float:
    return M.REGISTRY.get_sample_value(
        "gatewayd_pdu_errors_total", {"carrier": "a", "kind": kind}
    ) or 0.0


async def test_garbled_deliver_sm_is_nacked_and_the_bind_stays(
    smsc: PySmsc, pool_and_handler: tuple[CarrierPool, Recorder]
) -> None:
    pool, handler = pool_and_handler
    conn = smsc.bound_conns()[0]
    body_errors, tlv_errors = pdu_errors("body"), pdu_errors("tlv")
    truncated = conn.deliver(b"\x00\x01\x01861380")  # ends inside source_addr
    good = deliver_sm_body(source="1", destination="2", short_message=b"hi")
    bad_tlv = conn.deliver(good + b"\x04\x24\x00\x50abc")  # TLV claims 80 octets, has 3
    await wait_until(lambda: smsc.generic_nacks and smsc.deliver_resps)
    assert smsc.generic_nacks == [(0x02, truncated)]
    assert smsc.deliver_resps == [(bad_tlv, 0xC0)]
    assert pdu_errors("body") == body_errors + 1 and pdu_errors("tlv") == tlv_errors + 1
    # Unknown command from the SMSC: generic_nack ESME_RINVCMDID.
    conn.send(0x00000103, 0, 4242, b"")
    await wait_until(lambda: len(smsc.generic_nacks) == 2)
    assert smsc.generic_nacks[1] == (0x03, 4242)
    out = await pool.submit_batch([SubmitRequest(msg_id="x", destination="1", text="ok")])
    assert out[0].ok and smsc.binds_ok == 1
    assert not handler.inbound


async def test_bad_command_length_closes_only_that_bind(smsc: PySmsc) -> None:
    handler = Recorder()
    pool = CarrierPool(config(carrier("a", smsc.port, binds=2)), handler)
    await pool.start()
    assert await pool.wait_bound(5.0)
    try:
        before = pdu_errors("command_length")
        conns = smsc.bound_conns()
        assert len(conns) == 2
        conns[0].writer.write(struct.pack(">IIII", 8, 0x5, 0, 1))  # command_length 8 < 16
        await wait_until(lambda: smsc.binds_ok == 3)  # that bind reconnected
        assert pdu_errors("command_length") == before + 1
        assert not conns[1].writer.is_closing()  # the other bind never noticed
        assert await pool.wait_bound(5.0)
        out = await pool.submit_batch([SubmitRequest(msg_id="x", destination="1", text="ok")])
        assert out[0].ok
    finally:
        await pool.stop(1.0)


async def test_enquire_link_both_ways_and_missing_response_reconnects(smsc: PySmsc) -> None:
    cfg = config(carrier("a", smsc.port, enquire_link_s=0.1, response_timeout_s=0.3))
    pool = CarrierPool(cfg, Recorder())
    await pool.start()
    assert await pool.wait_bound(5.0)
    try:
        await wait_until(lambda: smsc.enquire_links >= 2)
        assert smsc.binds_ok == 1
        smsc.answer_enquire_link = False
        await wait_until(lambda: smsc.binds_ok >= 2)  # dropped and bound again
        smsc.answer_enquire_link = True
        assert await pool.wait_bound(5.0)
        assert "enquire_link" in pool.snapshot()[0].last_error or pool.snapshot()[0].reconnects
    finally:
        await pool.stop(1.0)


async def test_smsc_unbind_is_answered_and_the_bind_returns(smsc: PySmsc) -> None:
    pool = CarrierPool(config(carrier("a", smsc.port)), Recorder())
    await pool.start()
    assert await pool.wait_bound(5.0)
    try:
        conn = smsc.bound_conns()[0]
        conn.send(0x00000006, 0, 77)
        await wait_until(lambda: smsc.binds_ok == 2)
        assert (0x80000006, 0, 77) in smsc.responses
        assert await pool.wait_bound(5.0)
    finally:
        await pool.stop(1.0)
