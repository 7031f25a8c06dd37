"""What the simulator records of each submit_sm, and how it puts multipart texts together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gatewayd import smstext
from gatewayd.sim.smpp import pdu

# GSM-7 without escapes maps octet -> character one to one, so a str.translate table
# (built from smstext.decode itself, hence identical results) decodes in C.
_GSM_TABLE: Final = {i: smstext.decode(bytes((i,)), "gsm7") for i in range(256) if i != 0x1B}


def decode_text(data: bytes, data_coding: int) -> str:
    """Decode short_message octets (without UDH) as data_coding says.

    0 (SMSC default) is taken as unpacked GSM-7, 8 as UCS-2, 1 as ASCII, 3 as Latin-1;
    binary codings (2, 4) come back as hex so that a test can still compare them.
    """
    if data_coding == 8:
        return smstext.decode(data, "ucs2")
    if data_coding == 0:
        if b"\x1b" in data:
            return smstext.decode(data, "gsm7")
        return data.decode("latin-1").translate(_GSM_TABLE)
    if data_coding == 1:
        return data.decode("ascii", errors="replace")
    if data_coding == 3:
        return data.decode("latin-1")
    if data_coding in (2, 4):
        return data.hex()
    return smstext.decode(data, "gsm7")


@dataclass(slots=True)
class Submission:
    """One submit_sm as received (duplicates included).

    ``text`` is the decoded text of this PDU alone (for a part: the part's text, without
    UDH); ``udh`` is (ref, total, seq) from a concatenation UDH, ``sar`` the same from the
    SAR TLVs; ``payload`` is True when the text came in message_payload (0x0424).
    ``message_id`` is the id given in submit_sm_resp, "" when the submit was refused
    (``status`` then says why; UNANSWERED when the simulator never answered it).
    ``received_at`` is Unix time; ``validity_period`` the field as sent ("" = none).
    """

    system_id: str
    sequence: int
    message_id: str
    source: str
    destination: str
    data_coding: int
    esm_class: int
    short_message: bytes
    text: str
    udh: tuple[int, int, int] | None
    sar: tuple[int, int, int] | None
    payload: bool
    registered_delivery: int
    received_at: float
    status: int = 0
    validity_period: str = ""

    @property
    def part(self) -> tuple[int, int, int] | None:
        """(ref, total, seq) of a multipart message's part, from UDH or SAR."""
        return self.udh if self.udh is not None else self.sar


def submission_from(
    sm: pdu.ShortMessage, *, system_id: str, sequence: int, message_id: str,
    received_at: float, status: int,
) -> Submission:
    data = sm.short_message
    payload = False
    sar: tuple[int, int, int] | None = None
    tlvs = sm.tlvs
    if tlvs:
        mp = tlvs.get(pdu.TLV_MESSAGE_PAYLOAD)
        if mp is not None and not data:
            data = mp
            payload = True
        ref = tlvs.get(pdu.TLV_SAR_MSG_REF_NUM)
        total = tlvs.get(pdu.TLV_SAR_TOTAL_SEGMENTS)
        seq = tlvs.get(pdu.TLV_SAR_SEGMENT_SEQNUM)
        if ref is not None and total is not None and seq is not None:
            sar = (pdu.tlv_int(ref), pdu.tlv_int(total), pdu.tlv_int(seq))
    udh: tuple[int, int, int] | None = None
    body = data
    if sm.esm_class & pdu.ESM_UDHI:
        parsed = smstext.parse_udh(data)
        if parsed is not None:
            udh = parsed[:3]
            body = parsed[3]
        elif data:
            # A UDH without a concatenation IE (e.g. a port address): skip it whole.
            body = data[1 + data[0] :]
    return Submission(
        system_id=system_id, sequence=sequence, message_id=message_id, source=sm.source,
        destination=sm.destination, data_coding=sm.data_coding, esm_class=sm.esm_class,
        short_message=sm.short_message, text=decode_text(body, sm.data_coding), udh=udh,
        sar=sar, payload=payload, registered_delivery=sm.registered_delivery,
        received_at=received_at, status=status, validity_period=sm.validity_period,
    )


@dataclass(slots=True)
class Message:
    """A complete message: a single submit_sm, or every part of a multipart one.

    ``message_ids`` are the SMSC ids of the parts in part order; ``copies`` counts how
    many times a part was received more than once (client retries after a timeout).
    """

    system_id: str
    source: str
    destination: str
    text: str
    message_ids: list[str]
    parts: int = 1
    ref: int | None = None
    copies: int = 0
    received_at: float = 0.0


@dataclass(slots=True)
class _Pending:
    first: Submission
    total: int
    parts: dict[int, Submission] = field(default_factory=dict)
    copies: int = 0


def reassemble(submissions: list[Submission]) -> list[Message]:
    """Complete messages in the order their last part arrived; refused submits are left out.

    Parts are grouped by (system_id, source, destination, ref, total); incomplete
    multipart messages are not returned. A part received again (same seq) counts as a
    copy; the first copy's text is used.
    """
    out: list[Message] = []
    pending: dict[tuple[str, str, str, int, int], _Pending] = {}
    for s in submissions:
        if s.status != 0:
            continue
        part = s.part
        if part is None or part[1] <= 1:
            out.append(Message(
                s.system_id, s.source, s.destination, s.text, [s.message_id],
                received_at=s.received_at,
            ))
            continue
        ref, total, seq = part
        key = (s.system_id, s.source, s.destination, ref, total)
        p = pending.get(key)
        if p is None:
            p = pending[key] = _Pending(s, total)
        if seq in p.parts:
            p.copies += 1
            continue
        p.parts[seq] = s
        if len(p.parts) == total:
            del pending[key]
            ordered = [p.parts[i] for i in sorted(p.parts)]
            out.append(Message(
                s.system_id, s.source, s.destination, "".join(x.text for x in ordered),
                [x.message_id for x in ordered], parts=total, ref=ref, copies=p.copies,
                received_at=s.received_at,
            ))
    return out
