"""CMPP status reports -> model.Receipt.

A report is final: the ISMG sends one per part when the part reached its end. Stat
DELIVRD -> delivered; EXPIRED -> expired; ACCEPTD / ENROUTE (not final in SMPP terms,
rarely sent over CMPP) -> "" so the message waits for a final report or the receipt
timeout; the other standard words (UNDELIV, REJECTD, DELETED, UNKNOWN) and every carrier
code (China Mobile's "MK:0001", "MA:0054", "DB:0008", "ID:0076" ...: an error class and
number) -> undeliverable. A carrier code is kept whole in ``err`` and ``stat`` becomes
UNDELIV, so events name the reason and stat stays one of the standard words.
"""

from __future__ import annotations

from typing import Final

from gatewayd.carrier.cmpp import msgid, times
from gatewayd.carrier.cmpp.pdu import Report
from gatewayd.model import Receipt

STATE_OF_STAT: Final = {
    "DELIVRD": "delivered", "EXPIRED": "expired", "UNDELIV": "undeliverable",
    "REJECTD": "undeliverable", "DELETED": "undeliverable", "UNKNOWN": "undeliverable",
    "ACCEPTD": "", "ENROUTE": "",
}


def to_receipt(carrier: str, report: Report, received_at: float, utc_offset_h: float) -> Receipt:
    raw = report.stat.strip().upper()
    if raw in STATE_OF_STAT:
        stat, err = raw, ""
    else:
        stat, err = "UNDELIV", report.stat.strip()
    return Receipt(
        carrier=carrier,
        smsc_id=msgid.canonical(report.msg_id),
        stat=stat,
        state=STATE_OF_STAT[stat],
        err=err,
        submit_date=times.report_time(report.submit_time, utc_offset_h),
        done_date=times.report_time(report.done_time, utc_offset_h),
        received_at=received_at,
        exact_id=True,  # SUBMIT_RESP's Msg_Id went through msgid.canonical too
    )
