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
  bind > throttled or never written; carrier/smpp/status.outcome_rank).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gatewayd.carrier.api import SubmitOutcome, SubmitRequest
from gatewayd.carrier.ids import normalise_id
from gatewayd.carrier.smpp import status as S


class Waiter:
    """The parts of one submit batch: results by slot, one future for all of them, and
    an event set at every result (for the stragglers' task, which finishes each message
    on its own)."""

    __slots__ = ("changed", "future", "remaining", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = n
        self.results: list[tuple[int, str] | None] = [None] * n
        self.changed = asyncio.Event()
        if n == 0:
            self.future.set_result(None)

    def resolve(self, slot: int, status: int, message_id: str) -> None:
        if self.results[slot] is not None:
            return
        self.results[slot] = (status, message_id)
        self.remaining -= 1
        self.changed.set()
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


@dataclass(slots=True)
class Planned:
    """One message of a batch: where its parts went and what they are."""

    index: int  # in the batch's requests
    carrier: str
    bind: object  # the bind it was put on (opaque here: the pool's business)
    slots: list[int]  # per part: its slot, or -1 for a part accepted by an earlier attempt
    bodies: list[bytes]  # per part: the PDU body (resends send the same bytes)
    segments: int
    ref: int


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
        elif S.status_kind(r[0]) == "permanent":
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
    ids: list[str] = []
    worst: int | None = None
    accepted = 0
    for k, s in enumerate(p.slots):
        if s < 0:
            ids.append(done[k] if done is not None else "")
            accepted += 1
            continue
        r = results[s]
        status, mid = r if r is not None else (S.NOT_SENT, "")
        if status == 0:
            ids.append(normalise_id(mid))
            accepted += 1
        else:
            ids.append("")
            if worst is None or S.outcome_rank(status) > S.outcome_rank(worst):
                worst = status
    if worst is None:
        return SubmitOutcome(msg_id=req.msg_id, carrier=p.carrier, ok=True, smsc_ids=ids,
                             segments=p.segments, ref=p.ref)
    kind = S.status_kind(worst)
    name = S.status_name(worst)
    parts = len(p.slots)
    return SubmitOutcome(
        msg_id=req.msg_id, carrier=p.carrier, ok=False, smsc_ids=ids if accepted else [],
        segments=p.segments, ref=p.ref, status=max(worst, 0), status_name=name,
        kind="permanent" if kind == "permanent" else "retry",
        reason=f"{name} ({parts - accepted} of {parts} parts failed)" if parts > 1 else name,
    )
