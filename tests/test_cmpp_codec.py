"""CMPP codec: byte-exact fixtures, client <-> simulator round trips, Msg_Id, text, times.

Fixtures come from two independent places: gocmpp's published pack/unpack tests (the Go
implementation the issue names; the bytes below are those of its connect_test.go and
submit_test.go), and PDUs written out here field by field from the 2.0 / 3.0 layouts.
"""

from __future__ import annotations

import calendar
import hashlib

import pytest

from gatewayd import smstext
from gatewayd.carrier.cmpp import msgid, text, times
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.cmpp.receipts import to_receipt
from gatewayd.carrier.ids import normalise_id, receipt_candidates
from gatewayd.sim.cmpp import pdu as SP
from gatewayd.sim.cmpp.messages import Submission, reassemble

# gocmpp connect_test.go: Source_Addr 900001, secret 888888, timestamp 1021080510,
# version 0x21, Sequence_Id 0x17.
GOCMPP_CONNECT = bytes.fromhex(
    "00000027000000010000001739303030303190d00c1d517abd0b4f65f6bcf853"
    "5d16213cdc73be"
)
GOCMPP_AUTH_SRC = bytes.fromhex("90d00c1d517abd0b4f65f6bcf8535d16")
GOCMPP_CONNECT_RESP_2 = bytes.fromhex(
    "0000001e80000001000000170" "06c0b846e25bab6daa4ed1c466e0f4bd821"
)
GOCMPP_CONNECT_RESP_3 = bytes.fromhex(
    "00000021800000010000001700000000"
    "79429772740" "98cf210ab0c16c367bc8d30"
)
# gocmpp submit_test.go: one SUBMIT, packed for 2.0 and for 3.0.
_UCS2 = "测试gocmpp submit".encode("utf-16-be")
GOCMPP_SUBMIT_2 = bytes.fromhex(
    "000000bd00000004000000170000000000000000010101017465737400000000"
    "0000023133353030303032363936000000000000000000000000083930303030"
    "3130323130000000003135313130353133313535353130312b00000000000000"
    "0000000000000000000000393030303031000000000000000000000000000000"
    "013133353030303032363936000000000000000000001e6d4b8bd50067006f00"
    "63006d007000700020007300750062006d006900740000000000000000"
)
GOCMPP_SUBMIT_3 = bytes.fromhex(
    "000000e100000004000000170000000000000000010101017465737400000000"
    "0000023133353030303032363936000000000000000000000000000000000000"
    "0000000000000839303030303130323130000000003135313130353133313535"
    "353130312b000000000000000000000000000000000000393030303031000000"
    "0000000000000000000000000131333530303030323639360000000000000000"
    "00000000000000000000000000001e6d4b8bd50067006f0063006d0070007000"
    "20007300750062006d0069007400000000000000000000000000000000000000"
    "00"
)
GOCMPP_SUBMIT_RESP_2 = bytes.fromhex("000000158000000400000017b2b9da800001000000")
GOCMPP_SUBMIT_RESP_3 = bytes.fromhex("000000188000000400000017b2b9da800001000000000000")


def test_connect_matches_gocmpp_bytes() -> None:
    data, auth = P.connect_pdu(0x17, "900001", "888888", 0x21, "1021080510")
    assert data == GOCMPP_CONNECT
    assert auth == GOCMPP_AUTH_SRC
    c = SP.parse_connect(GOCMPP_CONNECT[12:])
    assert (c.source_addr, c.version, c.timestamp) == ("900001", 0x21, 1021080510)
    assert c.authenticator == SP.expected_authenticator("900001", "888888", 1021080510)


def test_connect_resp_matches_gocmpp_bytes_for_2_and_3() -> None:
    assert SP.connect_resp(0x17, 0, GOCMPP_AUTH_SRC, "888888", 0x21, wide=False) == \
        GOCMPP_CONNECT_RESP_2
    assert SP.connect_resp(0x17, 0, GOCMPP_AUTH_SRC, "888888", 0x30, wide=True) == \
        GOCMPP_CONNECT_RESP_3
    for raw, status_len, version in ((GOCMPP_CONNECT_RESP_2, 1, 0x21),
                                     (GOCMPP_CONNECT_RESP_3, 4, 0x30)):
        r = P.parse_connect_resp(raw[12:])
        assert (r.status, len(r.status_octets), r.version) == (0, status_len, version)
        assert r.authenticator == P.authenticator_ismg(r.status_octets, GOCMPP_AUTH_SRC,
                                                       "888888")
        assert r.authenticator != P.authenticator_ismg(r.status_octets, GOCMPP_AUTH_SRC, "x")


def test_connect_written_out_from_the_spec() -> None:
    # SP 901234, secret "s3cret", Beijing time 12-07 08:30:15 -> "1207083015" = 0x47f2a007.
    auth = hashlib.md5(b"901234" + b"\0" * 9 + b"s3cret" + b"1207083015").digest()
    assert auth.hex() == "76bb14e9fe46e585b4b81a1bfddd9a2f"
    expected = (bytes.fromhex("00000027" "00000001" "00000005") + b"901234" + auth
                + b"\x30" + bytes.fromhex("47f2a007"))
    unix = calendar.timegm((2026, 12, 7, 0, 30, 15, 0, 0, 0))  # 08:30:15 at UTC+8
    stamp = times.connect_timestamp(unix, 8.0)
    assert stamp == "1207083015"
    assert P.connect_pdu(5, "901234", "s3cret", P.V30, stamp)[0] == expected


@pytest.mark.parametrize("v3,golden", [(False, GOCMPP_SUBMIT_2), (True, GOCMPP_SUBMIT_3)])
def test_submit_matches_gocmpp_bytes(v3: bool, golden: bytes) -> None:
    t = P.SubmitTemplate(
        version=P.V30 if v3 else P.V20, registered_delivery=1, msg_level=1, service_id="test",
        fee_user_type=2, fee_terminal_id="13500002696", tp_pid=0, msg_src="900001",
        fee_type="02", fee_code="10",
    )
    body = t.body(pk_total=1, pk_number=1, udhi=False, msg_fmt=8, valid="151105131555101+",
                  src_id="900001", destination="13500002696", content=_UCS2)
    assert P.pdu(P.SUBMIT, 0x17, body) == golden
    s = SP.parse_submit(golden[12:])
    assert (s.v3, s.service_id, s.fee_type, s.fee_code, s.msg_fmt, s.src_id, s.destinations,
            s.valid_time, s.msg_src) == (v3, "test", "02", "10", 8, "900001", ["13500002696"],
                                         "151105131555101+", "900001")
    assert s.content.decode("utf-16-be") == "测试gocmpp submit"


def test_submit_resp_matches_gocmpp_bytes() -> None:
    mid = 12878564852733378560
    assert SP.submit_resp(0x17, mid, 0, v3=False) == GOCMPP_SUBMIT_RESP_2
    assert SP.submit_resp(0x17, mid, 0, v3=True) == GOCMPP_SUBMIT_RESP_3
    assert P.parse_submit_resp(GOCMPP_SUBMIT_RESP_2[12:]) == (mid, 0)
    assert P.parse_submit_resp(GOCMPP_SUBMIT_RESP_3[12:]) == (mid, 0)
    assert P.parse_submit_resp(SP.submit_resp(1, mid, 8, v3=True)[12:]) == (mid, 8)
    with pytest.raises(P.PduError):
        P.parse_submit_resp(b"\x00" * 10)


def test_msg_id_fields_and_canonical_form() -> None:
    f = msgid.unpack(12878564852733378560)  # gocmpp's id: 11-05 14:29:42, gateway 1
    assert f == msgid.MsgIdFields(11, 5, 14, 29, 42, 1, 0)
    assert msgid.pack(f) == 12878564852733378560
    bits = f"{12:04b}{7:05b}{8:05b}{30:06b}{15:06b}{0x2A0F1:022b}{0x1234:016b}"
    value = int(bits, 2)
    assert msgid.pack(msgid.MsgIdFields(12, 7, 8, 30, 15, 0x2A0F1, 0x1234)) == value
    assert SP.msg_id(12, 7, 8, 30, 15, 0x2A0F1, 0x1234) == value
    assert msgid.canonical(value) == str(value)
    # Already carrier.ids' primary form: the correlator needs nothing CMPP-specific.
    assert normalise_id(msgid.canonical(value)) == msgid.canonical(value)
    assert msgid.canonical(value) in receipt_candidates(str(value))
    assert msgid.canonical(2**64 - 1) == "18446744073709551615"
    assert msgid.describe(value) == "12-07 08:30:15 gw=172273 seq=4660"


@pytest.mark.parametrize("v3", [False, True])
def test_report_deliver_written_out_from_the_spec(v3: bool) -> None:
    width = 32 if v3 else 21
    report = (bytes.fromhex("b2b9da8000010000") + b"DELIVRD" + b"2611051429" + b"2611051430"
              + b"13800138000".ljust(width, b"\0") + bytes.fromhex("0000002a"))
    assert len(report) == (71 if v3 else 60)
    body = (bytes.fromhex("0123456789abcdef") + b"106900001234".ljust(21, b"\0")
            + b"MJS0019905" + b"\x00\x00\x00" + b"13800138000".ljust(width, b"\0")
            + (b"\x00" if v3 else b"") + b"\x01" + bytes((len(report),)) + report
            + bytes(20 if v3 else 8))
    d = P.parse_deliver(body, v3=not v3)  # the other version's layout is tried second
    assert (d.msg_id, d.dest_id, d.service_id, d.source, d.registered_delivery, d.v3) == (
        0x0123456789ABCDEF, "106900001234", "MJS0019905", "13800138000", 1, v3)
    r = P.parse_report(d.content)
    assert (r.msg_id, r.stat, r.submit_time, r.done_time, r.destination, r.smsc_sequence) == (
        12878564852733378560, "DELIVRD", "2611051429", "2611051430", "13800138000", 42)
    rec = to_receipt("cmcc", r, 5.0, 8.0)
    assert rec.smsc_id == "12878564852733378560" and rec.state == "delivered"
    assert rec.done_date == calendar.timegm((2026, 11, 5, 6, 30, 0, 0, 0, 0))
    # And the simulator writes exactly these bytes.
    sim = SP.deliver(7, msg_id=0x0123456789ABCDEF, dest_id="106900001234",
                     service_id="MJS0019905", msg_fmt=0, src_terminal="13800138000",
                     registered_delivery=1, content=report, udhi=False, v3=v3)
    assert sim[12:] == body


def test_receipt_stats_map_to_states() -> None:
    def rec(stat: str) -> tuple[str, str, str]:
        r = to_receipt("c", P.Report(1, stat, "", "", "", 0), 0.0, 8.0)
        return r.stat, r.state, r.err

    assert rec("DELIVRD") == ("DELIVRD", "delivered", "")
    assert rec("EXPIRED") == ("EXPIRED", "expired", "")
    assert rec("REJECTD") == ("REJECTD", "undeliverable", "")
    assert rec("ACCEPTD") == ("ACCEPTD", "", "")
    assert rec("MK:0001") == ("UNDELIV", "undeliverable", "MK:0001")
    assert rec("DB:0008") == ("UNDELIV", "undeliverable", "DB:0008")


def test_deliver_resp_widths() -> None:
    assert P.deliver_resp_pdu(9, 5, 0, v3=False) == bytes.fromhex(
        "00000015" "80000005" "00000009" "0000000000000005" "00")
    assert P.deliver_resp_pdu(9, 5, 8, v3=True) == bytes.fromhex(
        "00000018" "80000005" "00000009" "0000000000000005" "00000008")
    assert SP.parse_deliver_resp(P.deliver_resp_pdu(9, 5, 8, v3=False)[12:]) == (5, 8)


def test_result_table() -> None:
    assert S.result_kind(8) == "throttle" and S.result_name(8) == "CMPP_FLOW_CONTROL"
    assert S.result_kind(13) == "permanent"
    assert S.result_kind(3) == "retry"
    assert S.result_kind(0x1F4) == "retry" and S.result_name(0x1F4) == "CMPP_RESULT_500"
    assert S.result_kind(S.BIND_LOST) == "retry"


def test_validity_formats() -> None:
    unix = calendar.timegm((2026, 12, 7, 0, 30, 15, 0, 0, 0))
    assert times.validity(300, unix, "absolute", 8.0) == "261207083515032+"
    assert times.validity(300, unix, "relative", 8.0) == "000000000500000R"
    assert times.validity(90061, unix, "relative", 8.0) == "000001010101000R"
    assert times.validity(0, unix, "absolute", 8.0) == ""
    assert times.validity(60, unix, "absolute", -5.0) == "261206193115020-"


def test_ascii_text_one_part_and_long() -> None:
    enc = text.encode("Your code is 482913", ref=7)
    assert enc == text.Encoded(text.FMT_ASCII, [b"Your code is 482913"], False)
    long = "Order 1234 shipped {track}: " * 12
    enc = text.encode(long, ref=7)
    assert enc.msg_fmt == text.FMT_ASCII and enc.udhi
    assert len(enc.parts) == smstext.segments(long).parts
    assert all(p[:5] == bytes((5, 0, 3, 7, len(enc.parts))) for p in enc.parts)
    assert all(len(p) < 160 for p in enc.parts)
    assert b"".join(p[6:] for p in enc.parts).decode() == long


def test_chinese_text_ucs2_and_gbk() -> None:
    t = "【京东】您的订单已发货，请注意查收。回TD退订" * 4
    enc = text.encode(t, ref=200)
    assert enc.msg_fmt == text.FMT_UCS2 and len(enc.parts) == smstext.segments(t).parts
    assert all(len(p) <= 140 for p in enc.parts)
    assert b"".join(p[6:] for p in enc.parts).decode("utf-16-be") == t
    gbk = text.encode(t, ref=200, encoding="gbk")
    assert gbk.msg_fmt == text.FMT_GBK and len(gbk.parts) == len(enc.parts)
    assert b"".join(p[6:] for p in gbk.parts).decode("gbk") == t
    emoji = "好" * 60 + "😀" * 10  # GBK cannot hold it: UCS-2; pairs never split
    e = text.encode(emoji, ref=1, encoding="gbk")
    assert e.msg_fmt == text.FMT_UCS2
    assert b"".join(p[6:] for p in e.parts).decode("utf-16-be") == emoji
    assert text.encode("短信", ref=1, encoding="gbk").parts == ["短信".encode("gbk")]


def test_decode_by_msg_fmt() -> None:
    assert text.decode(b"TD", 0) == "TD"
    assert text.decode("退订".encode("gbk"), 0) == "退订"  # mislabelled GBK
    assert text.decode("退订".encode("utf-16-be"), 8) == "退订"
    assert text.decode("退订".encode("gbk"), 15) == "退订"
    assert text.decode(b"\xff\x00", 4) == "\xff\x00"


def test_numbers() -> None:
    assert text.destination("+8613800138000", True) == "13800138000"
    assert text.destination("+8613800138000", False) == "8613800138000"
    assert text.destination("+4915112345678", True) == "4915112345678"
    assert text.src_id("106900001234", "") == "106900001234"
    assert text.src_id("106900001234", "88") == "10690000123488"
    assert text.src_id("106900001234", "1069000012345") == "1069000012345"
    with pytest.raises(ValueError):
        text.src_id("106900001234", "+8613800138000")
    with pytest.raises(ValueError):
        text.src_id("106900001234", "9" * 10)


def test_simulator_reassembles_client_parts() -> None:
    t = "【京东】双11狂欢价，全场满300减50！" * 8
    enc = text.encode(t, ref=42)
    subs = [Submission("sp", i, 1000 + i, 0, "13800138000", "1069", "", enc.msg_fmt,
                       len(enc.parts), i, True, part, "", 1, 0.0, True)
            for i, part in enumerate(enc.parts, 1)]
    subs.reverse()  # arrival order does not matter, the UDH does
    [m] = reassemble(subs)
    assert m.text == t and m.msg_ids == [1000 + i for i in range(1, len(enc.parts) + 1)]
