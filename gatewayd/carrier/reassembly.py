"""Multipart MO, any protocol: parts held, joined, decoded; incomplete ones timed out.

Parts are grouped by (source, reference, total) per carrier, whatever the order they
arrive in and whichever bind of the carrier they arrive on; each protocol's deliveries
cut a ``Part`` from its own PDU (SMPP: UDH or SAR TLVs, carrier/smpp/mo.split_part;
CMPP: TP_udhi + UDH, carrier/cmpp/delivery.split_part). Octets are joined before
decoding so that a character split across parts survives.

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

MISSING: Final = "\ufffd"


def decode_text(data: bytes, data_coding: int, default: str = "gsm7") -> str:
    """Decode user data by its data coding scheme (SMPP data_coding; CMPP's Msg_Fmt uses
    the same values). 0 = the carrier's default alphabet."""
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
