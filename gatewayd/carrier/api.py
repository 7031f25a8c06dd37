"""The carrier layer's contract with the rest of gatewayd (no Redis, no policies here)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gatewayd.config import Config
from gatewayd.model import InboundMessage, Receipt

FailureKind = Literal["", "retry", "permanent"]
BindProtocol = Literal["smpp", "cmpp"]


@dataclass(slots=True)
class SubmitRequest:
    msg_id: str
    destination: str  # E.164, with or without "+"
    text: str
    source: str = ""  # overrides the carrier's source_addr when not empty
    carrier: str = ""  # force this carrier (skips prefix routing)
    # Unix time after which the message is worthless (an OTP's life): sent to the SMSC
    # as the validity period in the carrier's format; 0 = the SMSC's default.
    expires_at: float = 0.0
    # Resuming a long message some of whose parts the SMSC accepted before: the same
    # concatenation reference, and the parts already accepted (part index -> SMSC id),
    # which are not sent again. ref -1: a new reference.
    ref: int = -1
    done_parts: dict[int, str] | None = None


@dataclass(slots=True)
class SubmitOutcome:
    msg_id: str
    carrier: str  # the carrier that answered; "" when none could take it
    ok: bool
    # One per submitted PDU (= receipt expected), in part order, normalised. On a failure
    # with some parts accepted: "" where a part was not (see ``partial``); else empty.
    smsc_ids: list[str] = field(default_factory=list)
    segments: int = 0  # billing count; with message_payload one PDU carries several
    ref: int = -1  # the concatenation reference of a multipart message
    status: int = 0  # command_status of the (first) failing part
    # The protocol's name: "ESME_RINVDSTADR", "0x00000401" (SMPP vendor codes),
    # "CMPP_FLOW_CONTROL", "CMPP_RESULT_77" (CMPP vendor codes)
    status_name: str = ""
    kind: FailureKind = ""  # "retry": try again later; "permanent": end as failed
    reason: str = ""
    # The carrier wants us slower or could not take it now (throttled, flow control,
    # never written, no bound carrier): retried without using an attempt, whatever the
    # protocol's name for it.
    backpressure: bool = False

    @property
    def partial(self) -> bool:
        """Failed, but some parts were accepted: a retry must send only the others."""
        return not self.ok and any(self.smsc_ids)


@dataclass(slots=True)
class Submitted:
    """What ``CarrierPool.submit`` returns: an outcome per request (None for those still
    out), and for those a queue that receives their outcomes as each is known, in
    chunks of (request index, outcome) pairs, then None."""

    outcomes: list[SubmitOutcome | None]
    later: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None] | None = None


@dataclass(slots=True)
class BindStatus:
    carrier: str
    index: int
    # The wire protocol and its version: ("smpp", "3.4"), ("cmpp", "2.0" | "3.0"). The
    # rest of gatewayd does not care; operators do (which ISMG/SMSC a bind talks to).
    protocol: BindProtocol
    version: str
    # "connecting" | "bound" | "throttled" | "unbinding" | "refused" | "closed"
    state: str
    mode: str
    window: int
    in_flight: int
    tps_limit: float
    submitted: int
    reconnects: int
    last_error: str = ""

    def public(self) -> dict[str, str | int]:
        """What an unauthenticated probe (/readyz) may show: no error text (it can name
        hosts and accounts), no counters."""
        return {"carrier": self.carrier, "bind": self.index, "protocol": self.protocol,
                "version": self.version, "state": self.state}


class DeliveryHandler(Protocol):
    """What the carrier layer calls for deliver_sm it receives.

    The bind answers deliver_sm_resp only after the coroutine returns, so a receipt is
    acknowledged to the SMSC once it is recorded; if it raises, the bind answers
    ESME_RX_T_APPN and the SMSC delivers it again.
    """

    async def on_receipts(self, receipts: list[Receipt]) -> None: ...

    async def on_inbound(self, messages: list[InboundMessage]) -> None: ...


class RateGate(Protocol):
    """The send rate of a carrier's SMSC account, shared by every bind (and, kept in
    Redis, by every process), learned from the SMSC's throttling (carrier/throttle.py)."""

    async def acquire(self, carrier: str, n: int, urgent: bool = False) -> None:
        """Wait until ``n`` tokens of the carrier's account are ours. ``urgent`` (codes):
        served before bulk waiters, never queued behind them."""

    async def throttled(self, carrier: str, accepted: int, throttled: int) -> None:
        """A window of answers from the carrier's account, some of them throttled."""

    def rate(self, carrier: str) -> float:
        """The account's current rate limit (learned), for gauges."""

    def set_cap(self, carrier: str, tps: float) -> None:
        """The configured tps of the carrier's account changed live (an operator's
        override): the learned rate stays under it; one that sat at the old cap moves to
        the new one at once (else it grows towards it by probing)."""

    def learn_carriers(self, cfg: Config) -> None:
        """The carriers of a reloaded config: a new SMSC account gets its own rate at its
        tps; a known one keeps its learned rate (the pool sets its cap with set_cap)."""
