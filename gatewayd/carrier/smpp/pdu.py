"""SMPP 3.4 PDU bytes: headers and hot-path bodies with struct, the rest via aiosmpplib.

aiosmpplib's message classes carry str text and decode it themselves (and
``SmppMessage.parse_header`` raises on vendor command_status codes), so the hot paths
(submit_sm out, submit_sm_resp / deliver_sm in, deliver_sm_resp out) are packed and
parsed here with ``struct``; binds, enquire_link, unbind and generic_nack come from
aiosmpplib's classes, whose constants (command ids, TLV tags) are the single source.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Final

from aiosmpplib import protocol as _p
from aiosmpplib import state as _s

HEADER: Final = struct.Struct(">IIII")
HEADER_LEN: Final = 16
MAX_PDU_LEN: Final = 64 * 1024  # anything longer is a framing error, not a message

GENERIC_NACK: Final = int(_s.SmppCommand.GENERIC_NACK)
BIND_RECEIVER: Final = int(_s.SmppCommand.BIND_RECEIVER)
BIND_TRANSMITTER: Final = int(_s.SmppCommand.BIND_TRANSMITTER)
BIND_TRANSCEIVER: Final = int(_s.SmppCommand.BIND_TRANSCEIVER)
BIND_RESPS: Final = frozenset(
    {
        int(_s.SmppCommand.BIND_RECEIVER_RESP),
        int(_s.SmppCommand.BIND_TRANSMITTER_RESP),
        int(_s.SmppCommand.BIND_TRANSCEIVER_RESP),
    }
)
SUBMIT_SM: Final = int(_s.SmppCommand.SUBMIT_SM)
SUBMIT_SM_RESP: Final = int(_s.SmppCommand.SUBMIT_SM_RESP)
DELIVER_SM: Final = int(_s.SmppCommand.DELIVER_SM)
DELIVER_SM_RESP: Final = int(_s.SmppCommand.DELIVER_SM_RESP)
ENQUIRE_LINK: Final = int(_s.SmppCommand.ENQUIRE_LINK)
ENQUIRE_LINK_RESP: Final = int(_s.SmppCommand.ENQUIRE_LINK_RESP)
UNBIND: Final = int(_s.SmppCommand.UNBIND)
UNBIND_RESP: Final = int(_s.SmppCommand.UNBIND_RESP)
ALERT_NOTIFICATION: Final = int(_s.SmppCommand.ALERT_NOTIFICATION)
RESPONSE_BIT: Final = 0x80000000

TAG_RECEIPTED_MESSAGE_ID: Final = int(_s.RECEIPTED_MESSAGE_ID)
TAG_MESSAGE_STATE: Final = int(_s.MESSAGE_STATE)
TAG_NETWORK_ERROR_CODE: Final = int(_s.NETWORK_ERROR_CODE)
TAG_MESSAGE_PAYLOAD: Final = int(_s.MESSAGE_PAYLOAD)
TAG_SAR_MSG_REF_NUM: Final = int(_s.SAR_MSG_REF_NUM)
TAG_SAR_TOTAL_SEGMENTS: Final = int(_s.SAR_TOTAL_SEGMENTS)
TAG_SAR_SEGMENT_SEQNUM: Final = int(_s.SAR_SEGMENT_SEQNUM)

ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RX_T_APPN: Final = 0x64
ESME_RINVOPTPARSTREAM: Final = 0xC0

_pack_header = HEADER.pack
_BIND_CLASSES: Final = {
    "transceiver": _p.BindTransceiver,
    "transmitter": _p.BindTransmitter,
    "receiver": _p.BindReceiver,
}


class PduError(ValueError):
    """A PDU body that does not parse; ``kind`` is a bounded metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def pdu(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
    return _pack_header(HEADER_LEN + len(body), command_id, status, seq) + body


def bind_pdu(
    mode: str, seq: int, *, system_id: str, password: str, system_type: str,
    addr_ton: int = 0, addr_npi: int = 0,
) -> bytes:
    cls = _BIND_CLASSES[mode]
    msg = cls(
        sequence_num=seq, system_id=system_id, password=password, system_type=system_type,
        addr_ton=_s.TON(addr_ton), addr_npi=_s.NPI(addr_npi),
    )
    return bytes(msg.pdu())


def enquire_link_pdu(seq: int) -> bytes:
    return bytes(_p.EnquireLink(sequence_num=seq).pdu())


def unbind_pdu(seq: int) -> bytes:
    return bytes(_p.Unbind(sequence_num=seq).pdu())


def generic_nack_pdu(seq: int, status: int) -> bytes:
    # aiosmpplib's status enum cannot hold every code; the header is all there is.
    return _pack_header(HEADER_LEN, GENERIC_NACK, status, seq)


def resp_pdu(command_id: int, seq: int, status: int = 0) -> bytes:
    """A response with an empty body (enquire_link_resp, unbind_resp)."""
    return _pack_header(HEADER_LEN, command_id | RESPONSE_BIT, status, seq)


_pack_deliver_sm_resp = struct.Struct(">IIIIB").pack


def deliver_sm_resp_pdu(seq: int, status: int = 0) -> bytes:
    # message_id is unused in deliver_sm_resp and must be a single NUL.
    return _pack_deliver_sm_resp(HEADER_LEN + 1, DELIVER_SM_RESP, status, seq, 0)


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def c_str(value: str) -> bytes:
    return value.encode("ascii", "replace") + b"\x00"


def relative_validity(seconds: float) -> str:
    """SMPP relative time YYMMDDhhmmss000R (years = 365 days, months = 30)."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    years, days = divmod(days, 365)
    months, days = divmod(days, 30)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return f"{min(years, 99):02d}{months:02d}{days:02d}{hours:02d}{minutes:02d}{s:02d}000R"


def absolute_validity(unix_time: float) -> str:
    """SMPP absolute time YYMMDDhhmmsstnnp in UTC ("000+": tenths 0, offset 0)."""
    t = time.gmtime(int(unix_time))
    return time.strftime("%y%m%d%H%M%S", t) + "000+"


def submit_sm_head(
    *, service_type: str, source: str, source_ton: int, source_npi: int,
    destination: str, dest_ton: int, dest_npi: int,
) -> bytes:
    """The addressing fields, the same for every part of a message."""
    return b"".join(
        (
            c_str(service_type),
            bytes((source_ton & 0xFF, source_npi & 0xFF)),
            c_str(source),
            bytes((dest_ton & 0xFF, dest_npi & 0xFF)),
            c_str(destination),
        )
    )


def submit_sm_body(
    head: bytes, *, esm_class: int, validity: bytes, registered_delivery: int,
    data_coding: int, short_message: bytes, tlvs: bytes = b"",
) -> bytes:
    """The body after ``submit_sm_head``; validity is the c-string bytes (b"\\0" = none)."""
    return b"".join(
        (
            head,
            bytes((esm_class, 0, 0)),  # esm_class, protocol_id, priority_flag
            b"\x00",  # schedule_delivery_time: immediate
            validity,
            bytes((registered_delivery, 0, data_coding, 0, len(short_message))),
            short_message,
            tlvs,
        )
    )


@dataclass(slots=True)
class DeliverSm:
    """The fields of a deliver_sm the gateway uses; short_message as raw octets."""

    seq: int
    source: str
    destination: str
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes] = field(default_factory=dict)


def _unterminated(name: str, maxlen: int) -> PduError:
    return PduError("body", f"{name} is not NUL-terminated within {maxlen} octets")


_unpack_tlv_head = struct.Struct(">HH").unpack_from


def parse_tlvs(body: bytes, pos: int) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    n = len(body)
    while pos < n:
        if pos + 4 > n:
            raise PduError("tlv", f"{n - pos} stray octets where a TLV header was expected")
        tag, length = _unpack_tlv_head(body, pos)
        pos += 4
        if pos + length > n:
            raise PduError("tlv", f"TLV 0x{tag:04x} claims {length} octets, {n - pos} left")
        tlvs[tag] = body[pos : pos + length]
        pos += length
    return tlvs


def parse_deliver_sm(seq: int, body: bytes) -> DeliverSm:
    """Parse a deliver_sm body (after the header); PduError when truncated or garbled."""
    # One function, no helper per C-string: this runs for every receipt.
    find = body.find
    end = find(0, 0, 6)
    if end < 0:
        raise _unterminated("service_type", 5)
    pos = end + 3  # NUL, source_addr_ton, source_addr_npi
    end = find(0, pos, pos + 65)
    if end < 0:
        raise _unterminated("source_addr", 64)
    source = body[pos:end].decode("latin-1")
    pos = end + 3  # NUL, dest_addr_ton, dest_addr_npi
    end = find(0, pos, pos + 65)
    if end < 0:
        raise _unterminated("destination_addr", 64)
    destination = body[pos:end].decode("latin-1")
    pos = end + 1
    try:
        esm_class = body[pos]
        pos += 3  # esm_class, protocol_id, priority_flag
        end = find(0, pos, pos + 17)
        if end < 0:
            raise _unterminated("schedule_delivery_time", 16)
        pos = end + 1
        end = find(0, pos, pos + 17)
        if end < 0:
            raise _unterminated("validity_period", 16)
        pos = end + 3  # NUL, registered_delivery, replace_if_present_flag
        data_coding = body[pos]
        sm_length = body[pos + 2]
        pos += 3
    except IndexError as e:
        raise PduError("body", "deliver_sm body ends inside the mandatory fields") from e
    n = len(body)
    if pos + sm_length > n:
        raise PduError("body", f"short_message claims {sm_length} octets, {n - pos} left")
    short_message = body[pos : pos + sm_length]
    tlvs = parse_tlvs(body, pos + sm_length) if pos + sm_length < n else {}
    return DeliverSm(seq, source, destination, esm_class, data_coding, short_message, tlvs)


def tlv_int(value: bytes | None) -> int | None:
    if not value or len(value) > 4:
        return None
    return int.from_bytes(value, "big")


def tlv_str(value: bytes | None) -> str:
    if not value:
        return ""
    return value.split(b"\x00", 1)[0].decode("latin-1").strip()


def message_id(body: bytes) -> str:
    """The message_id of a submit_sm_resp body (lenient: no NUL, empty body)."""
    end = body.find(b"\x00")
    raw = body if end < 0 else body[:end]
    return raw.decode("latin-1")
