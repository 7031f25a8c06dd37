"""SMPP 3.4 wire format for the simulator: constants, struct-packed builders, parsers.

Hand-written with ``struct`` because the submit_sm -> submit_sm_resp -> deliver_sm path
runs tens of thousands of times a second; aiosmpplib's dataclass PDUs cost several times
more per PDU than the few slices and one ``pack`` used here.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

HEADER: Final = struct.Struct("!IIII")
_U8: Final = struct.Struct("!B")
_U16: Final = struct.Struct("!H")
_TLV_HEAD: Final = struct.Struct("!HH")
HEADER_LEN: Final = 16
# Larger than any legal PDU (message_payload carries at most 64 KB); anything bigger is
# garbage in the length field and the stream can no longer be framed.
MAX_PDU_LEN: Final = 70_000

GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
QUERY_SM: Final = 0x00000003
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
REPLACE_SM: Final = 0x00000007
CANCEL_SM: Final = 0x00000008
BIND_TRANSCEIVER: Final = 0x00000009
OUTBIND: Final = 0x0000000B
ENQUIRE_LINK: Final = 0x00000015
SUBMIT_MULTI: Final = 0x00000021
DATA_SM: Final = 0x00000103
RESP: Final = 0x80000000
SUBMIT_SM_RESP: Final = SUBMIT_SM | RESP
DELIVER_SM_RESP: Final = DELIVER_SM | RESP
UNBIND_RESP: Final = UNBIND | RESP
ENQUIRE_LINK_RESP: Final = ENQUIRE_LINK | RESP

BIND_MODES: Final = {
    BIND_RECEIVER: "receiver",
    BIND_TRANSMITTER: "transmitter",
    BIND_TRANSCEIVER: "transceiver",
}

ESME_ROK: Final = 0x00
ESME_RINVMSGLEN: Final = 0x01
ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RINVBNDSTS: Final = 0x04
ESME_RALYBND: Final = 0x05
ESME_RSYSERR: Final = 0x08
ESME_RBINDFAIL: Final = 0x0D
ESME_RINVPASWD: Final = 0x0E
ESME_RINVSYSID: Final = 0x0F
ESME_RTHROTTLED: Final = 0x58
ESME_RSUBMITFAIL: Final = 0x45
# Not a status on the wire: a submit_sm the simulator never answers (unanswered_fraction).
UNANSWERED: Final = -1

STATUS_NAMES: Final = {
    0x00: "ESME_ROK", 0x01: "ESME_RINVMSGLEN", 0x02: "ESME_RINVCMDLEN",
    0x03: "ESME_RINVCMDID", 0x04: "ESME_RINVBNDSTS", 0x05: "ESME_RALYBND",
    0x08: "ESME_RSYSERR", 0x0A: "ESME_RINVSRCADR", 0x0B: "ESME_RINVDSTADR",
    0x0D: "ESME_RBINDFAIL", 0x0E: "ESME_RINVPASWD", 0x0F: "ESME_RINVSYSID",
    0x14: "ESME_RMSGQFUL", 0x45: "ESME_RSUBMITFAIL", 0x58: "ESME_RTHROTTLED",
    0x61: "ESME_RINVSCHED", 0x62: "ESME_RINVEXPIRY", 0x64: "ESME_RX_T_APPN",
    0x65: "ESME_RX_P_APPN", 0x66: "ESME_RX_R_APPN", UNANSWERED: "UNANSWERED",
}

TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_SC_INTERFACE_VERSION: Final = 0x0210
TLV_SAR_MSG_REF_NUM: Final = 0x020C
TLV_SAR_TOTAL_SEGMENTS: Final = 0x020E
TLV_SAR_SEGMENT_SEQNUM: Final = 0x020F
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427

ESM_RECEIPT: Final = 0x04
ESM_UDHI: Final = 0x40


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"0x{status:08x}")


class MalformedPdu(ValueError):
    """A PDU body that cannot be parsed (missing NUL, truncated field)."""


def pack(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return HEADER.pack(HEADER_LEN + len(body), command_id, status, sequence) + body


def cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    """The C-octet string at pos and the position after its NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise MalformedPdu(f"missing NUL terminator after offset {pos}")
    return body[pos:end], end + 1


def parse_tlvs(body: bytes, pos: int) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    n = len(body)
    while pos + 4 <= n:
        tag, length = _TLV_HEAD.unpack_from(body, pos)
        pos += 4
        if pos + length > n:
            raise MalformedPdu(f"TLV 0x{tag:04x} overruns the PDU")
        tlvs[tag] = body[pos : pos + length]
        pos += length
    if pos != n:
        raise MalformedPdu("trailing octets after the last TLV")
    return tlvs


def tlv(tag: int, value: bytes) -> bytes:
    return _TLV_HEAD.pack(tag, len(value)) + value


def tlv_int(value: bytes) -> int:
    return int.from_bytes(value, "big")


class Bind(NamedTuple):
    system_id: str
    password: str
    system_type: str
    interface_version: int


def parse_bind(body: bytes) -> Bind:
    system_id, pos = cstring(body, 0)
    password, pos = cstring(body, pos)
    system_type, pos = cstring(body, pos)
    if pos >= len(body):
        raise MalformedPdu("bind body truncated before interface_version")
    version = body[pos]
    return Bind(
        system_id.decode("latin-1"), password.decode("latin-1"),
        system_type.decode("latin-1"), version,
    )


class ShortMessage(NamedTuple):
    """The fields of a submit_sm / deliver_sm the simulator looks at."""

    source_ton: int
    source_npi: int
    source: str
    dest_ton: int
    dest_npi: int
    destination: str
    esm_class: int
    registered_delivery: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes] | None  # None when the PDU carries no TLVs (the common case)
    validity_period: str = ""  # as sent: "" (SMSC default), relative ...R or absolute


def parse_sm(body: bytes) -> ShortMessage:
    """Parse a submit_sm (or deliver_sm) body."""
    find = body.find
    # service_type
    end = find(b"\0", 0)
    if end < 0:
        raise MalformedPdu("service_type not terminated")
    pos = end + 1
    if pos + 2 > len(body):
        raise MalformedPdu("truncated before source_addr")
    s_ton = body[pos]
    s_npi = body[pos + 1]
    pos += 2
    end = find(b"\0", pos)
    if end < 0:
        raise MalformedPdu("source_addr not terminated")
    source = body[pos:end]
    pos = end + 1
    if pos + 2 > len(body):
        raise MalformedPdu("truncated before destination_addr")
    d_ton = body[pos]
    d_npi = body[pos + 1]
    pos += 2
    end = find(b"\0", pos)
    if end < 0:
        raise MalformedPdu("destination_addr not terminated")
    destination = body[pos:end]
    pos = end + 1
    if pos + 3 > len(body):
        raise MalformedPdu("truncated before esm_class")
    esm_class = body[pos]
    pos += 3  # esm_class, protocol_id, priority_flag
    end = find(b"\0", pos)  # schedule_delivery_time
    if end < 0:
        raise MalformedPdu("schedule_delivery_time not terminated")
    start = end + 1
    end = find(b"\0", start)  # validity_period
    if end < 0:
        raise MalformedPdu("validity_period not terminated")
    validity = body[start:end].decode("latin-1") if end > start else ""
    pos = end + 1
    if pos + 5 > len(body):
        raise MalformedPdu("truncated before sm_length")
    registered = body[pos]
    data_coding = body[pos + 2]
    sm_len = body[pos + 4]
    pos += 5
    if pos + sm_len > len(body):
        raise MalformedPdu("sm_length exceeds the PDU")
    sm = body[pos : pos + sm_len]
    pos += sm_len
    tlvs = parse_tlvs(body, pos) if pos < len(body) else None
    return ShortMessage(
        s_ton, s_npi, source.decode("latin-1"), d_ton, d_npi,
        destination.decode("latin-1"), esm_class, registered, data_coding, sm, tlvs,
        validity,
    )


_ESM_TO_SMLEN: Final = struct.Struct("!BBB2sBBBBB")  # esm_class .. sm_length
_RECEIPT_TLVS: Final = struct.Struct("!HH")


def deliver_sm(
    sequence: int,
    *,
    source: bytes,
    source_ton: int,
    source_npi: int,
    destination: bytes,
    dest_ton: int,
    dest_npi: int,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    tlvs: bytes = b"",
) -> bytes:
    """A complete deliver_sm PDU (receipt or MO)."""
    body = b"".join((
        b"\0",  # service_type
        bytes((source_ton, source_npi)), source, b"\0",
        bytes((dest_ton, dest_npi)), destination, b"\0",
        # esm_class, protocol_id, priority_flag, two empty times, registered_delivery,
        # replace_if_present, data_coding, sm_default_msg_id, sm_length
        _ESM_TO_SMLEN.pack(esm_class, 0, 0, b"\0\0", 0, 0, data_coding, 0, len(short_message)),
        short_message,
        tlvs,
    ))
    return HEADER.pack(HEADER_LEN + len(body), DELIVER_SM, 0, sequence) + body


def receipt_tlvs(receipted_id: bytes, state: int) -> bytes:
    """receipted_message_id (C-string) and message_state TLVs."""
    return b"".join((
        _RECEIPT_TLVS.pack(TLV_RECEIPTED_MESSAGE_ID, len(receipted_id) + 1), receipted_id,
        b"\0", _RECEIPT_TLVS.pack(TLV_MESSAGE_STATE, 1), bytes((state,)),
    ))
