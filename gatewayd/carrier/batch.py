"""One submit batch, whatever the protocol: results by part, outcomes, partial resends.

A batch's PDUs share one ``Waiter``: each part is a *slot*, resolved by the session that
carried it (the SMSC's answer, a response timeout, the bind lost, never written). A
message's outcome is known once all its slots are resolved:

* every part accepted: ok, one SMSC id per part;
* some parts accepted, the others refused for a reason that may pass (throttled,
  temporary error, no answer, bind lost, never written): ``needs_resend``: only those
  parts go again, the same bytes (so the same concatenation reference and part numbers),
  and the handset never gets an accepted part twice. What still fails after the resends
  is reported with the accepted parts' ids (``SubmitOutcome.partial``), so the retry
  sends only the rest (``SubmitRequest.done_parts``);
* otherwise a failure, of the worst part's kind (permanent > refused > lost with the
  bind > throttled or never written; the protocol's StatusTable.rank).

Result codes are the protocol's own (SMPP command_status, CMPP Result): each message
carries its engine's ``StatusTable``, so one batch may span carriers of both protocols.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.carrier.api import SubmitOutcome, SubmitRequest
from gatewayd.carrier.ids import normalise_id
from gatewayd.carrier.protocols import NOT_SENT, Link, StatusTable, Waiter

__all__ = ["Planned", "Waiter", "failed_slots", "needs_resend", "outcome", "resolved"]


@dataclass(slots=True)
class Planned:
    """One message of a batch: where its parts went and what they are."""

    index: int  # in the batch's requests
    carrier: str
    bind: Link  # the link it was put on
    slots: list[int]  # per part: its slot, or -1 for a part accepted by an earlier attempt
    bodies: list[bytes]  # per part: the PDU body (resends send the same bytes)
    segments: int
    ref: int
    statuses: StatusTable  # the carrier's protocol's result codes


def resolved(p: Planned, results: list[tuple[int, str] | None]) -> bool:
    return all(s < 0 or results[s] is not None for s in p.slots)


def needs_resend(p: Planned, results: list[tuple[int, str] | None]) -> bool:
    """Some parts accepted and every other one failed for a reason that may pass."""
    if len(p.slots) < 2:
        return False
    accepted = failed = False
    for s in p.slots:
        if s < 0:
            accepted = True
            continue
        r = results[s]
        if r is None:
            return False  # not answered yet
        if r[0] == 0:
            accepted = True
        elif p.statuses.kind(r[0]) == "permanent":
            return False
        else:
            failed = True
    return accepted and failed


def failed_slots(p: Planned, results: list[tuple[int, str] | None]) -> list[int]:
    """Part indexes (not slots) of the parts to send again."""
    out: list[int] = []
    for k, s in enumerate(p.slots):
        if s >= 0:
            r = results[s]
            if r is None or r[0] != 0:
                out.append(k)
    return out


def outcome(req: SubmitRequest, p: Planned, results: list[tuple[int, str] | None]
            ) -> SubmitOutcome:
    done = req.done_parts
    st = p.statuses
    ids: list[str] = []
    worst: int | None = None
    accepted = 0
    for k, s in enumerate(p.slots):
        if s < 0:
            ids.append(done[k] if done is not None else "")
            accepted += 1
            continue
        r = results[s]
        status, mid = r if r is not None else (NOT_SENT, "")
        if status == 0:
            ids.append(normalise_id(mid))
            accepted += 1
        else:
            ids.append("")
            if worst is None or st.rank(status) > st.rank(worst):
                worst = status
    if worst is None:
        return SubmitOutcome(msg_id=req.msg_id, carrier=p.carrier, ok=True, smsc_ids=ids,
                             segments=p.segments, ref=p.ref)
    kind = st.kind(worst)
    name = st.name(worst)
    parts = len(p.slots)
    return SubmitOutcome(
        msg_id=req.msg_id, carrier=p.carrier, ok=False, smsc_ids=ids if accepted else [],
        segments=p.segments, ref=p.ref, status=max(worst, 0), status_name=name,
        kind="permanent" if kind == "permanent" else "retry",
        backpressure=kind == "throttle" or worst == NOT_SENT,
        reason=f"{name} ({parts - accepted} of {parts} parts failed)" if parts > 1 else name,
    )
