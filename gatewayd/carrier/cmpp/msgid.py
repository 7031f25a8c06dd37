"""CMPP's 64-bit Msg_Id: its fields, and the one string form receipts are correlated by.

Bits, most significant first: month(4) day(5) hour(5) minute(6) second(6) gateway code(22)
sequence(16). SUBMIT_RESP hands the id of each part to the SP and the status report for
that part carries the same 8 octets, so any fixed rendering matches itself.

Canonical form (SubmitOutcome.smsc_ids, Receipt.smsc_id): the unsigned 64-bit value in
decimal, e.g. 12878564852733378560. Reasons: it is already ``carrier.ids.normalise_id``'s
primary form (no leading zeros, lower case), so the correlator needs nothing CMPP-specific;
it is what gocmpp and most CMPP tools log; and unlike SMSGate's "MMDDHHMMSS + gateway +
sequence" digit string it does not depend on field widths the 2.0 and 3.0 texts describe
differently. ``describe`` gives the fields for logs and support questions.
"""

from __future__ import annotations

from typing import NamedTuple


class MsgIdFields(NamedTuple):
    month: int
    day: int
    hour: int
    minute: int
    second: int
    gateway: int
    sequence: int


def pack(f: MsgIdFields) -> int:
    return ((((((f.month << 5 | f.day) << 5 | f.hour) << 6 | f.minute) << 6 | f.second)
             << 22 | f.gateway) << 16 | f.sequence)


def unpack(value: int) -> MsgIdFields:
    return MsgIdFields(
        month=value >> 60 & 0xF, day=value >> 55 & 0x1F, hour=value >> 50 & 0x1F,
        minute=value >> 44 & 0x3F, second=value >> 38 & 0x3F, gateway=value >> 16 & 0x3FFFFF,
        sequence=value & 0xFFFF,
    )


def canonical(value: int) -> str:
    """The correlation key: the unsigned value in decimal."""
    return str(value & 0xFFFFFFFFFFFFFFFF)


def describe(value: int) -> str:
    """For humans: "MM-DD hh:mm:ss gw=G seq=S"."""
    f = unpack(value)
    return (f"{f.month:02d}-{f.day:02d} {f.hour:02d}:{f.minute:02d}:{f.second:02d} "
            f"gw={f.gateway} seq={f.sequence}")
