"""Hostile input from a carrier: the deliver_sm parser, receipts and MO never crash.

Property: whatever octets an SMSC (or an attacker in front of it) sends as a deliver_sm
body, ``parse_deliver_sm`` either returns a DeliverSm or raises PduError (the one
documented error: it becomes a generic_nack / deliver_sm_resp error and the bind stays
up). Everything downstream of a parsed PDU (receipt detection and parsing, MO part
splitting, text decoding in every data_coding, reassembly) raises nothing at all.

Two strategies: raw random octets (shallow: most fail in the first field), and
well-formed bodies that are then truncated, spliced or bit-flipped (deep: they reach
the TLV loop, the receipt parser and the UDH parser). Bounded for CI: a few hundred
examples each, no deadline (a 2-core CI box may be slow, not wrong).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.carrier.ids import id_candidates
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp.delivery import is_receipt, receipt_text
from gatewayd.carrier.smpp.mo import Reassembler, decode_text, split_part
from gatewayd.carrier.smpp.receipts import parse_receipt
from gatewayd.model import Receipt

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _cstr(value: bytes) -> bytes:
    return value.replace(b"\x00", b"") + b"\x00"


def deliver_sm_body(
    *, source: bytes, dest: bytes, esm_class: int, data_coding: int, sm: bytes,
    tlvs: list[tuple[int, bytes]],
) -> bytes:
    """A structurally valid deliver_sm body (the SMPP 3.4 field order)."""
    body = (
        _cstr(b"")  # service_type
        + bytes([1, 1]) + _cstr(source[:20])
        + bytes([1, 1]) + _cstr(dest[:20])
        + bytes([esm_class, 0, 0])
        + _cstr(b"") + _cstr(b"")  # schedule_delivery_time, validity_period
        + bytes([0, 0, data_coding, 0, len(sm[:254])]) + sm[:254]
    )
    for tag, value in tlvs:
        body += struct.pack(">HH", tag, len(value)) + value
    return body


_RECEIPT_TEXTS = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda i, stat, err, junk: (
            f"id:{i} sub:001 dlvrd:001 submit date:2411241030 done date:2411241031 "
            f"stat:{stat} err:{err} text:{junk}"
        ).encode("latin-1", "replace"),
        st.text(alphabet="0123456789abcdefABCDEF- x", max_size=40),
        st.sampled_from(["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "ENROUTE", "", "??"]),
        st.text(alphabet="0123456789", max_size=5),
        st.text(max_size=30),
    ),
)
_TLV_TAGS = st.sampled_from([
    P.TAG_RECEIPTED_MESSAGE_ID, P.TAG_MESSAGE_STATE, P.TAG_NETWORK_ERROR_CODE,
    P.TAG_MESSAGE_PAYLOAD, P.TAG_SAR_MSG_REF_NUM, P.TAG_SAR_TOTAL_SEGMENTS,
    P.TAG_SAR_SEGMENT_SEQNUM, 0x1403, 0xFFFF, 0,
])
_UDH = st.one_of(
    st.just(b""),
    st.builds(lambda r, t, s: bytes([5, 0, 3, r, t, s]), st.integers(0, 255),
              st.integers(0, 255), st.integers(0, 255)),
    st.builds(lambda r, t, s: bytes([6, 8, 4]) + r.to_bytes(2, "big") + bytes([t, s]),
              st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255)),
    st.binary(min_size=1, max_size=12),  # garbage that claims to be a UDH
)


@st.composite
def wellformed(draw: st.DrawFn) -> bytes:
    esm = draw(st.sampled_from([0x00, 0x04, 0x20, 0x40, 0x44, 0xFF]) | st.integers(0, 255))
    sm = draw(_UDH) + draw(_RECEIPT_TEXTS)
    tlvs = draw(st.lists(st.tuples(_TLV_TAGS, st.binary(max_size=70)), max_size=5))
    return deliver_sm_body(
        source=draw(st.binary(max_size=25)), dest=draw(st.binary(max_size=25)),
        esm_class=esm, data_coding=draw(st.integers(0, 255)), sm=sm, tlvs=tlvs,
    )


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid body, then cut, extended, or with a few octets overwritten."""
    body = bytearray(draw(wellformed()))
    for _ in range(draw(st.integers(0, 4))):
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(body)))
    return bytes(body[:cut]) + draw(st.binary(max_size=8))


def exercise_downstream(dsm: P.DeliverSm) -> None:
    """Everything the carrier does with a parsed deliver_sm; none of it may raise."""
    if is_receipt(dsm):
        r = parse_receipt("fuzz", receipt_text(dsm), dsm.tlvs, 1.0)
        if r is not None:
            assert isinstance(r, Receipt)
            assert r.smsc_id
            assert r.smsc_id in id_candidates(r.smsc_id)
            assert r.state in ("", "delivered", "undeliverable", "expired")
        return
    part = split_part(dsm)
    assembled = Reassembler(timeout_s=1.0, max_groups=4).add(
        dsm.source, dsm.destination, dsm.data_coding, part, 0.0)
    for default in ("gsm7", "latin1", "ascii"):
        assert isinstance(decode_text(part.payload, dsm.data_coding, default), str)
        if assembled is not None:
            assert isinstance(assembled[1].text(default), str)


def parse_or_pdu_error(body: bytes) -> P.DeliverSm | None:
    try:
        return P.parse_deliver_sm(7, body)
    except P.PduError as e:
        assert e.kind in ("body", "tlv")  # bounded metric label
        return None


@FUZZ
@given(st.binary(max_size=400))
def test_random_octets_parse_or_raise_pdu_error(body: bytes) -> None:
    dsm = parse_or_pdu_error(body)
    if dsm is not None:
        exercise_downstream(dsm)
    assert isinstance(P.message_id(body), str)  # submit_sm_resp body: lenient, never raises


@FUZZ
@given(wellformed())
def test_wellformed_bodies_always_parse(body: bytes) -> None:
    dsm = P.parse_deliver_sm(7, body)
    exercise_downstream(dsm)


@FUZZ
@given(mangled())
def test_mangled_bodies_parse_or_raise_pdu_error(body: bytes) -> None:
    dsm = parse_or_pdu_error(body)
    if dsm is not None:
        exercise_downstream(dsm)


@FUZZ
@given(st.text(max_size=300), st.dictionaries(_TLV_TAGS | st.integers(0, 0xFFFF),
                                               st.binary(max_size=40), max_size=6))
def test_receipt_parser_takes_any_text_and_tlvs(text: str, tlvs: dict[int, bytes]) -> None:
    r = parse_receipt("fuzz", text, tlvs, 0.0)
    assert r is None or (r.smsc_id and r.carrier == "fuzz")


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 255))
def test_mo_decoding_takes_any_octets_in_any_coding(data: bytes, coding: int) -> None:
    for default in ("gsm7", "latin1", "ascii"):
        assert isinstance(decode_text(data, coding, default), str)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 6),
                          st.binary(max_size=10)), max_size=30))
def test_reassembler_bounded_whatever_the_parts(
    parts: list[tuple[int, int, int, bytes]],
) -> None:
    """Hostile references, totals and sequence numbers never grow memory past the bound."""
    from gatewayd.carrier.smpp.mo import Part

    r = Reassembler(timeout_s=5.0, max_groups=3)
    for i, (ref, total, seq, payload) in enumerate(parts):
        done = r.add("8613800138000", "10690001", 0, Part(ref, total, seq, payload), float(i))
        if done is not None:
            assert isinstance(done[1].text("gsm7"), str)
        assert len(r) <= 3
    for _key, a in r.expired(1e9):
        assert isinstance(a.text("gsm7"), str)
    assert len(r) == 0
