"""The fast receipt-path parsers give exactly what the parsers they replaced gave.

``parse_receipt`` matches the standard layout in one call, ``parse_fields`` splits ASCII
texts at their colons, ``parse_date`` caches, ``parse_deliver_sm`` has no helper per
C-string, ``id_candidates`` / ``receipt_candidates`` skip a form that cannot differ. The
oracles below are the previous implementations (commit fb878f7), kept verbatim;
hypothesis feeds both receipt texts made of keys in every spelling, case and separator,
values that look like keys, noise, ids in both bases, and hostile deliver_sm bodies.
"""

from __future__ import annotations

import calendar
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.carrier.ids import id_candidates, normalise_id, receipt_candidates
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import receipts as R
from gatewayd.carrier.smpp.receipts import (
    MESSAGE_STATES,
    STATE_OF_STAT,
    canonical_stat,
    parse_date,
    parse_fields,
    parse_receipt,
)
from gatewayd.model import Receipt
from tests.test_fuzz_inbound import mangled, wellformed

# -- the oracle: the previous implementation --------------------------------------------------


def oracle_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    last_key = ""
    last_start = 0
    for m in R._KEY_RE.finditer(text):
        key = m.group(1).lower().replace(" ", "_")
        if key in ("submitdate", "donedate"):
            key = key[:-4] + "_date"
        if key in out or key == last_key:
            continue
        if last_key:
            out[last_key] = text[last_start : m.start()].strip()
        last_key, last_start = key, m.end()
        out[key] = ""
    if last_key:
        out[last_key] = text[last_start:].strip()
    return out


def oracle_date(value: str) -> float:
    digits = value.strip()[:12]
    if len(digits) not in (10, 12) or not digits.isdigit():
        return 0.0
    try:
        year = 2000 + int(digits[0:2])
        month, day = int(digits[2:4]), int(digits[4:6])
        hour, minute = int(digits[6:8]), int(digits[8:10])
        second = int(digits[10:12]) if len(digits) == 12 else 0
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60
                and second < 61):
            return 0.0
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, OverflowError):
        return 0.0


def oracle_receipt(
    carrier: str, text: str, tlvs: dict[int, bytes], received_at: float
) -> Receipt | None:
    fields = oracle_fields(text)
    raw_id = P.tlv_str(tlvs.get(P.TAG_RECEIPTED_MESSAGE_ID)) or fields.get("id", "")
    smsc_id = normalise_id(raw_id.split()[0] if raw_id.split() else "")
    if not smsc_id:
        return None
    state_value = P.tlv_int(tlvs.get(P.TAG_MESSAGE_STATE))
    stat = MESSAGE_STATES.get(state_value, "") if state_value is not None else ""
    if not stat:
        stat = canonical_stat(fields.get("stat", "").split(" ", 1)[0])
    err = fields.get("err", "").split(" ", 1)[0]
    if not err:
        nec = tlvs.get(P.TAG_NETWORK_ERROR_CODE)
        if nec and len(nec) == 3:
            err = str(int.from_bytes(nec[1:], "big"))
    return Receipt(
        carrier=carrier, smsc_id=smsc_id, stat=stat, state=STATE_OF_STAT.get(stat, ""),
        err=err, submit_date=oracle_date(fields.get("submit_date", "")),
        done_date=oracle_date(fields.get("done_date", "")), received_at=received_at,
    )


# -- texts ------------------------------------------------------------------------------------

KEYS = ["id", "sub", "dlvrd", "submit date", "submit_date", "submitdate", "submit  date",
        "done date", "done_date", "donedate", "stat", "err", "text", "date", "xid", "sub-id"]
CASES = [str.lower, str.upper, str.title, lambda s: s]
SEPARATORS = [" ", "  ", "\t", "\n", "\x1c", "\r\n", "", ":", " : ", "\x0b"]
VALUES = st.one_of(
    st.sampled_from(["", "0A1B", "2587", "DELIVRD", "undeliv", "EXPIRED", "000", "0ff",
                     "2411241030", "241124103059", "9999999999", "id:5", "stat:EXPIRED",
                     "a b", " x ", "Your code is 1234", "x stat:UNDELIV", "1 err:7",
                     "2 Done Date:2411241030", "y\ttext:z"]),
    st.text(alphabet=string.printable, max_size=12),
)


@st.composite
def receipt_texts(draw: st.DrawFn) -> str:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        key = draw(st.sampled_from(CASES))(draw(st.sampled_from(KEYS)))
        out.append(draw(st.sampled_from(SEPARATORS)) + key + draw(st.sampled_from(
            [":", ":", " :", "\t:", "", "::"])) + draw(VALUES))
    text = "".join(out)
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "x", "\u00e9"])) + text.lstrip()
    return text


def standard(rid: str, stat: str, err: str, submit: str, done: str, tail: str,
             sub: str = "001", dlvrd: str = "001") -> str:
    return (f"id:{rid} sub:{sub} dlvrd:{dlvrd} submit date:{submit} done date:{done} "
            f"stat:{stat} err:{err} text:{tail}")


STANDARD = st.builds(
    standard, VALUES, VALUES, VALUES, VALUES, VALUES, st.text(max_size=25), VALUES, VALUES,
) | st.builds(
    lambda t, case: case(t), st.builds(standard, VALUES, VALUES, VALUES, VALUES, VALUES,
                                       st.just("")),
    st.sampled_from(CASES),
)
TLVS = st.dictionaries(
    st.sampled_from([P.TAG_RECEIPTED_MESSAGE_ID, P.TAG_MESSAGE_STATE, P.TAG_NETWORK_ERROR_CODE,
                     0x1403]),
    st.one_of(st.binary(max_size=6), st.sampled_from([b"0A1B\x00", b"\x02", b"\x05",
                                                       b"\x03\x00\x01", b" \x00"])),
    max_size=3,
)
MANY = settings(max_examples=1500, deadline=None)


@MANY
@given(receipt_texts())
def test_parse_fields_is_the_regular_expression_on_any_ascii_mix(text: str) -> None:
    assert parse_fields(text) == oracle_fields(text)


@MANY
@given(st.text(max_size=120))
def test_parse_fields_is_the_regular_expression_on_any_text(text: str) -> None:
    assert parse_fields(text) == oracle_fields(text)


@MANY
@given(st.one_of(receipt_texts(), STANDARD, st.text(max_size=80)), TLVS)
def test_parse_receipt_is_the_previous_parser(text: str, tlvs: dict[int, bytes]) -> None:
    assert parse_receipt("c", text, tlvs, 7.0) == oracle_receipt("c", text, tlvs, 7.0)


def test_standard_layout_and_its_variants() -> None:
    text = standard("0A1B", "DELIVRD", "000", "2411241030", "241124103059", "hi id:9 err:7")
    for t in (text, text.upper(), text.replace("submit date", "submit_date"),
              text.split(" text:")[0]):
        r = parse_receipt("c", t, {}, 1.0)
        assert r == oracle_receipt("c", t, {}, 1.0)
        assert r is not None and (r.smsc_id, r.state, r.err) == ("a1b", "delivered", "000")
        assert r.done_date == calendar.timegm((2024, 11, 24, 10, 30, 59, 0, 0, 0))


@given(st.text(max_size=20))
def test_parse_date_cached_or_not_is_the_same(value: str) -> None:
    first = parse_date(value)
    assert first == parse_date(value) == oracle_date(value)


def test_date_cache_is_bounded() -> None:
    for i in range(2 * R._DATE_CACHE_MAX):
        assert parse_date(f"24{i % 12 + 1:02d}01{i % 24:02d}{i % 60:02d}") > 0
    assert len(R._DATE_CACHE) <= R._DATE_CACHE_MAX
    parse_date("2" * 10_000)
    assert "2" * 10_000 not in R._DATE_CACHE


# -- ids --------------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")
_DEC = frozenset("0123456789")


def oracle_id_candidates(raw: str) -> list[str]:
    primary = normalise_id(raw)
    if not primary:
        return []
    out = [primary]
    chars = set(primary)
    if chars <= _DEC and len(primary) <= 40:
        dec = str(int(primary, 10))
        if dec not in out:
            out.append(dec)
    if chars <= _HEX and len(primary) <= 32:
        from_hex = str(int(primary, 16))
        if from_hex not in out:
            out.append(from_hex)
    return out


def oracle_receipt_candidates(raw: str) -> list[str]:
    out = oracle_id_candidates(raw)
    if out and len(out[0]) <= 40 and set(out[0]) <= _DEC:
        as_hex = format(int(out[0], 10), "x")
        if as_hex not in out:
            out.append(as_hex)
    return out


IDS = st.one_of(
    st.text(max_size=45),
    st.text("0123456789", max_size=45),
    st.text("0123456789abcdefABCDEF \x00", max_size=40),
    st.integers(0, 2**160).map(str),
    st.integers(0, 2**140).map(lambda v: f"{v:X}"),
    st.sampled_from(["\u00b2", "\u0663", "\uff11", "0x1f", "1_000", "+7", " 0 ", "\x000"]),
)


@MANY
@given(IDS)
def test_id_candidates_are_the_previous_ones(raw: str) -> None:
    assert id_candidates(raw) == oracle_id_candidates(raw)
    assert receipt_candidates(raw) == oracle_receipt_candidates(raw)


# -- deliver_sm bodies ------------------------------------------------------------------------


def _oracle_c_string(body: bytes, pos: int, maxlen: int, name: str) -> tuple[str, int]:
    end = body.find(b"\x00", pos, pos + maxlen + 1)
    if end < 0:
        raise P.PduError("body", f"{name} is not NUL-terminated within {maxlen} octets")
    return body[pos:end].decode("latin-1"), end + 1


def oracle_deliver_sm(seq: int, body: bytes) -> P.DeliverSm:
    try:
        _, pos = _oracle_c_string(body, 0, 5, "service_type")
        pos += 2
        source, pos = _oracle_c_string(body, pos, 64, "source_addr")
        pos += 2
        destination, pos = _oracle_c_string(body, pos, 64, "destination_addr")
        esm_class = body[pos]
        pos += 3
        _, pos = _oracle_c_string(body, pos, 16, "schedule_delivery_time")
        _, pos = _oracle_c_string(body, pos, 16, "validity_period")
        pos += 2
        data_coding = body[pos]
        sm_length = body[pos + 2]
        pos += 3
    except IndexError as e:
        raise P.PduError("body", "deliver_sm body ends inside the mandatory fields") from e
    if pos + sm_length > len(body):
        raise P.PduError("body", "short_message too long")
    short_message = body[pos : pos + sm_length]
    tlvs = P.parse_tlvs(body, pos + sm_length)
    return P.DeliverSm(seq, source, destination, esm_class, data_coding, short_message, tlvs)


def outcome(parse: object, body: bytes) -> object:
    try:
        return parse(7, body)  # type: ignore[operator]
    except P.PduError as e:
        return ("PduError", e.kind)


@MANY
@given(st.one_of(wellformed(), mangled(), st.binary(max_size=300)))
def test_parse_deliver_sm_is_the_previous_parser(body: bytes) -> None:
    assert outcome(P.parse_deliver_sm, body) == outcome(oracle_deliver_sm, body)


def test_deliver_sm_resp_bytes() -> None:
    assert P.deliver_sm_resp_pdu(0x01020304, 0x64) == (
        b"\x00\x00\x00\x11\x80\x00\x00\x05\x00\x00\x00\x64\x01\x02\x03\x04\x00")


def body_with(service_type: bytes = b"", source: bytes = b"1", destination: bytes = b"2",
              schedule: bytes = b"", validity: bytes = b"") -> bytes:
    return (service_type + b"\x00\x01\x01" + source + b"\x00\x01\x01" + destination
            + b"\x00\x04\x00\x00" + schedule + b"\x00" + validity + b"\x00"
            + bytes((0, 0, 0, 0, 2)) + b"hi")


@pytest.mark.parametrize(("field", "limit"), [
    ("service_type", 5), ("source", 64), ("destination", 64), ("schedule", 16),
    ("validity", 16),
])
def test_c_string_limits(field: str, limit: int) -> None:
    fits = body_with(**{field: b"7" * limit})
    too_long = body_with(**{field: b"7" * (limit + 1)})
    assert P.parse_deliver_sm(7, fits).short_message == b"hi"
    assert outcome(P.parse_deliver_sm, too_long) == ("PduError", "body")
    for body in (fits, too_long):
        assert outcome(P.parse_deliver_sm, body) == outcome(oracle_deliver_sm, body)
