"""The carrier layer's contract with the rest of gatewayd (no Redis, no policies here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from gatewayd.model import InboundMessage, Receipt

FailureKind = Literal["", "retry", "permanent"]


@dataclass(slots=True)
class SubmitRequest:
    msg_id: str
    destination: str  # E.164, with or without "+"
    text: str
    source: str = ""  # overrides the carrier's source_addr when not empty
    carrier: str = ""  # force this carrier (skips prefix routing)
    validity_s: float = 0.0  # relative validity period; 0 = the SMSC's default


@dataclass(slots=True)
class SubmitOutcome:
    msg_id: str
    carrier: str  # the carrier that answered; "" when none could take it
    ok: bool
    smsc_ids: list[str] = field(default_factory=list)  # one per part, normalised, in order
    segments: int = 0
    status: int = 0  # command_status of the (first) failing part
    status_name: str = ""  # "ESME_RINVDSTADR", or "0x00000401" for vendor codes
    kind: FailureKind = ""  # "retry": try again later; "permanent": end as failed
    reason: str = ""


@dataclass(slots=True)
class BindStatus:
    carrier: str
    index: int
    # "connecting" | "bound" | "throttled" | "unbinding" | "refused" | "closed"
    state: str
    mode: str
    window: int
    in_flight: int
    tps_limit: float
    submitted: int
    reconnects: int
    last_error: str = ""


class DeliveryHandler(Protocol):
    """What the carrier layer calls for deliver_sm it receives.

    The bind answers deliver_sm_resp only after the coroutine returns, so a receipt is
    acknowledged to the SMSC once it is recorded; if it raises, the bind answers
    ESME_RX_T_APPN and the SMSC delivers it again.
    """

    async def on_receipts(self, receipts: list[Receipt]) -> None: ...

    async def on_inbound(self, messages: list[InboundMessage]) -> None: ...


class RateGate(Protocol):
    """An account-wide rate limit shared with other processes (e.g. a Redis bucket)."""

    async def acquire(self, carrier: str, n: int) -> None: ...
