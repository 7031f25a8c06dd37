"""SMPP mobile-originated messages: a deliver_sm's user data as a reassembly Part.

References come from a UDH (8- or 16-bit, via smstext.parse_udh) or the SAR TLVs
(0x020C/0x020E/0x020F); holding, joining and decoding the parts is protocol-neutral
(carrier/reassembly.py, re-exported here).
"""

from __future__ import annotations

from gatewayd import smstext
from gatewayd.carrier.reassembly import (
    MISSING,
    Assembled,
    Group,
    GroupKey,
    Part,
    Reassembler,
    decode_text,
)
from gatewayd.carrier.smpp import pdu as P

__all__ = ["MISSING", "Assembled", "Group", "GroupKey", "Part", "Reassembler", "decode_text",
           "split_part"]


def split_part(dsm: P.DeliverSm) -> Part:
    """The user data of a deliver_sm and its concatenation info, from UDH or SAR TLVs."""
    data = dsm.short_message or dsm.tlvs.get(P.TAG_MESSAGE_PAYLOAD, b"")
    if dsm.esm_class & 0x40:
        parsed = smstext.parse_udh(data)
        if parsed is not None:
            ref, total, seq, payload = parsed
            return Part(ref, total, seq, payload)
        if data and data[0] + 1 <= len(data):
            return Part(0, 1, 1, data[data[0] + 1 :])  # a UDH without concatenation IE
    ref_v = P.tlv_int(dsm.tlvs.get(P.TAG_SAR_MSG_REF_NUM))
    total_v = P.tlv_int(dsm.tlvs.get(P.TAG_SAR_TOTAL_SEGMENTS))
    seq_v = P.tlv_int(dsm.tlvs.get(P.TAG_SAR_SEGMENT_SEQNUM))
    if ref_v is not None and total_v is not None and seq_v is not None:
        return Part(ref_v, total_v, seq_v, data)
    return Part(0, 1, 1, data)
