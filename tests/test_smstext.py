from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatewayd import smstext


def test_gsm7_single_and_extension_costs_two() -> None:
    assert smstext.segments("a" * 160) == smstext.Segmentation("gsm7", 160, 1)
    assert smstext.segments("a" * 161).parts == 2
    assert smstext.segments("€" * 80) == smstext.Segmentation("gsm7", 160, 1)
    assert smstext.segments("€" * 81).parts == 2
    # 153 a part: an escape pair is never split, so 152 + € pushes to a third part
    assert smstext.segments("a" * 152 + "€" + "a" * 153).parts == 3


def test_ucs2_chinese() -> None:
    assert smstext.segments("你" * 70) == smstext.Segmentation("ucs2", 70, 1)
    assert smstext.segments("你" * 71).parts == 2
    assert smstext.segments("你" * 134).parts == 2
    assert smstext.segments("你" * 135).parts == 3
    assert smstext.segments("😀" * 35) == smstext.Segmentation("ucs2", 70, 1)


def test_encode_parts_udh_roundtrip() -> None:
    text = "【京东】" + "您的订单已发货" * 20 + "回TD退订"
    enc = smstext.encode_parts(text, ref=0xAB)
    assert enc.udhi and enc.data_coding == 8
    joined = ""
    for i, part in enumerate(enc.parts, 1):
        parsed = smstext.parse_udh(part)
        assert parsed is not None
        ref, total, seq, payload = parsed
        assert (ref, total, seq) == (0xAB, len(enc.parts), i)
        joined += smstext.decode(payload, "ucs2")
    assert joined == text


@given(st.text(alphabet=smstext.GSM7_BASIC.replace("\x1b", "") + "".join(smstext.GSM7_EXT)))
def test_gsm7_roundtrip(text: str) -> None:
    assert smstext.decode(smstext.encode(text, "gsm7"), "gsm7") == text


@given(st.text(min_size=1, max_size=600), st.sampled_from([8, 16]))
def test_parts_match_count(text: str, bits: int) -> None:
    seg = smstext.segments(text, bits)
    enc = smstext.encode_parts(text, ref=1234, ref_bits=bits)
    assert len(enc.parts) == seg.parts
    assert all(len(p) <= 140 or enc.encoding == "gsm7" for p in enc.parts)
