"""Mobile-originated messages: decoding and reassembly of multipart MO.

Parts are grouped by (source, reference, total) per carrier, whatever the order they
arrive in and whichever bind of the carrier they arrive on; references come from a UDH
(8- or 16-bit, via smstext.parse_udh) or the SAR TLVs (0x020C/0x020E/0x020F). Octets are
joined before decoding so that a character split across parts survives.

Trade-off (documented decision): a part held for reassembly is acknowledged at once
(deliver_sm_resp ESME_ROK), so the SMSC does not redeliver it while we wait for its
siblings; the part that completes a message is acknowledged only after the handler took
the message. Held parts live in memory: a crash loses incomplete messages. After
``timeout_s`` (60 s by default) an incomplete message is delivered with what arrived,
missing parts replaced by U+FFFD and ``parts`` = the number of parts received.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gatewayd import smstext
from gatewayd.carrier.smpp import pdu as P

MISSING: Final = "\ufffd"


def decode_text(data: bytes, data_coding: int, default: str = "gsm7") -> str:
    """Decode short_message octets by data_coding (0 = the carrier's default alphabet)."""
    if data_coding == 0:
        if default == "gsm7":
            return smstext.decode(data, "gsm7")
        return data.decode("latin-1" if default == "latin1" else "ascii", "replace")
    if data_coding == 8:
        return smstext.decode(data, "ucs2")
    if data_coding == 1:
        return data.decode("ascii", "replace")
    if data_coding == 3:
        return data.decode("latin-1")
    if data_coding & 0xF0 == 0xF0:  # message class coding group: bit 2 = 8-bit data
        return data.decode("latin-1") if data_coding & 0x04 else smstext.decode(data, "gsm7")
    if data_coding & 0xC0 == 0 and data_coding & 0x0C == 0x08:  # general group, UCS-2
        return smstext.decode(data, "ucs2")
    return data.decode("latin-1")


@dataclass(slots=True)
class Part:
    """One piece of user data: its concatenation info (total 1 = not concatenated)."""

    reference: int
    total: int
    seq: int
    payload: bytes


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


GroupKey = tuple[str, int, int]  # (source, reference, total)


@dataclass(slots=True)
class Group:
    destination: str
    data_coding: int
    first_at: float
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class Assembled:
    source: str
    destination: str
    data_coding: int
    chunks: list[bytes | None]  # by seq; None = missing
    first_at: float = 0.0  # when the first part arrived

    def text(self, default: str) -> str:
        if all(c is not None for c in self.chunks):
            return decode_text(b"".join(c for c in self.chunks if c is not None),
                               self.data_coding, default)
        return "".join(
            MISSING if c is None else decode_text(c, self.data_coding, default)
            for c in self.chunks
        )

    @property
    def received(self) -> int:
        return sum(1 for c in self.chunks if c is not None)


class Reassembler:
    """Multipart MO groups of one carrier, completed or timed out."""

    def __init__(self, timeout_s: float = 60.0, max_groups: int = 100_000) -> None:
        self.timeout_s = timeout_s
        self.max_groups = max_groups
        self._groups: dict[GroupKey, Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(
        self, source: str, destination: str, data_coding: int, part: Part, now: float
    ) -> tuple[GroupKey, Assembled] | None:
        """Hold a part; return the message when this part completes it."""
        if part.total <= 1 or not 1 <= part.seq <= part.total:
            return (source, part.reference, 1), Assembled(
                source, destination, data_coding, [part.payload], now
            )
        key = (source, part.reference, part.total)
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= self.max_groups:
                # Bounded memory under a flood of never-completed parts: oldest goes first.
                self._groups.pop(next(iter(self._groups)))
            group = self._groups[key] = Group(destination, data_coding, now)
        group.parts[part.seq] = part.payload
        if len(group.parts) < part.total:
            return None
        del self._groups[key]
        return key, Assembled(
            source, group.destination, group.data_coding,
            [group.parts.get(i) for i in range(1, part.total + 1)], group.first_at,
        )

    def restore(self, key: GroupKey, message: Assembled) -> None:
        """Put a message's parts back (the handler failed; the SMSC redelivers the last)."""
        if key[2] <= 1:
            return
        group = Group(message.destination, message.data_coding, message.first_at)
        for i, chunk in enumerate(message.chunks, 1):
            if chunk is not None:
                group.parts[i] = chunk
        self._groups[key] = group

    def expired(self, now: float) -> list[tuple[GroupKey, Assembled]]:
        """Remove and return the groups older than timeout_s."""
        out: list[tuple[GroupKey, Assembled]] = []
        for key, group in list(self._groups.items()):
            if now - group.first_at >= self.timeout_s:
                del self._groups[key]
                out.append((key, Assembled(
                    key[0], group.destination, group.data_coding,
                    [group.parts.get(i) for i in range(1, key[2] + 1)], group.first_at,
                )))
        return out
