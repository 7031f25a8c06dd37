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


def _chunks_by_unit(text: str, encoding: str, per_part: int) -> list[str]:
    """The character-by-character splitter (the reference for smstext._chunks)."""
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for ch in text:
        if encoding == "gsm7":
            w = 2 if ch in smstext.GSM7_EXT else 1
        else:
            w = 2 if ord(ch) > 0xFFFF else 1
        if size + w > per_part:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += w
    if cur or not chunks:
        chunks.append("".join(cur))
    return chunks


_GSM7_TEXT = st.text(alphabet=smstext.GSM7_BASIC.replace("\x1b", "") + "".join(smstext.GSM7_EXT),
                     max_size=500)


@given(st.one_of(_GSM7_TEXT.map(lambda t: (t, "gsm7")),
                 st.text(max_size=400).map(lambda t: (t, "ucs2"))),
       st.sampled_from([67, 70, 134, 153, 152, 160]))
def test_chunks_split_exactly_as_unit_by_unit(case: tuple[str, str], per: int) -> None:
    text, enc = case
    assert smstext._chunks(text, enc, per) == _chunks_by_unit(text, enc, per)  # type: ignore[arg-type]


def test_segments_remembered_per_text_and_bounded() -> None:
    smstext._SEGMENTS.clear()
    text = "【店】您的订单已发货" * 10
    first = smstext.segments(text)
    assert smstext.segments(text) is first  # the second call is a look-up
    assert smstext.segments(text, 16) == smstext._segments(text, 16)
    for i in range(smstext._SEGMENTS_MAX + 10):
        assert smstext.segments(f"code {i}") == smstext._segments(f"code {i}", 8)
    assert len(smstext._SEGMENTS) <= smstext._SEGMENTS_MAX
