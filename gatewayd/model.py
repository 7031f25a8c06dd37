"""Wire types shared by every layer: what upstream pushes, what we report back.

Queue entries and events are *flat* Redis stream entries (field -> string value) so
that any language, or redis-cli, can produce and read them without a JSON library.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

# Final states: a message that reaches one of these never changes state again
# (a late receipt for an already final message is counted, not applied).
FINAL_STATES: Final = frozenset(
    {"delivered", "undeliverable", "expired", "rejected", "failed"}
)


class State(enum.StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"


class OutboundMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One SMS job as upstream enqueues it (one stream entry, flat fields).

    ``id`` is ours; upstream may set it (unique, <= 64 chars) or leave it empty, in
    which case the gateway assigns one on first read. Times are Unix seconds (float).
    """

    id: str = ""
    to: str
    text: str
    category: str = "transactional"
    # Source address override (SMPP source_addr); wire name "from".
    sender: str = msgspec.field(default="", name="from")
    tenant: str = ""
    ref: str = ""  # upstream's own reference, echoed in every event
    # Webhooks for this message also go here (gatewayd.webhooks; only under one of its
    # tenant's webhooks.callback_prefixes).
    callback_url: str = ""
    idempotency_key: str = ""
    carrier: str = ""  # force a carrier by name (skips prefix routing)
    not_before: float = 0.0
    expires_at: float = 0.0
    enqueued_at: float = 0.0
    attempts: int = 0  # submit attempts that ended in a retryable failure
    # Templates and campaigns (gatewayd.campaigns): the approved template the text was
    # rendered from at intake, the campaign and A/B variant that queued it, and how many
    # short links the text carries (the cooling-off policy counts messages with links).
    template: str = ""
    campaign: str = ""
    variant: str = ""
    links: int = 0
    # Set by gatewayd on its own retries, not by upstream:
    losses: int = 0  # submits lost with their bind (no attempt used; queue.max_bind_losses)
    # A long message some of whose parts the SMSC accepted: carrier, reference and those
    # parts (pipeline/intake.Resume, JSON), so the retry sends only the others.
    resume: str = ""
    # Which gatewayd intake queued it (http, client, cli...; QueueStore.enqueue), for
    # gatewayd_messages_enqueued_total: the daemon that first reads it counts it (the
    # client's and CLI's processes are never scraped) and clears it, so re-queued
    # retries and deferrals carry none.
    intake: str = ""


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One state change, as written to the events stream (flat fields)."""

    id: str
    state: str
    at: float
    category: str = ""
    reason: str = ""
    carrier: str = ""
    carrier_id: str = ""  # the SMSC's message id (first part for multipart)
    segments: int = 0
    ref: str = ""
    tenant: str = ""
    to: str = ""  # masked (138****8000): events are read by many systems
    until: float = 0.0  # for deferred: when the message becomes due again
    err: str = ""  # carrier error code from a receipt or a failing submit_sm_resp


class Receipt(msgspec.Struct, kw_only=True):
    """A delivery receipt as the carrier layer parsed it (not yet correlated)."""

    carrier: str
    smsc_id: str  # normalised (see carrier.ids.normalise_id)
    stat: str  # DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, UNKNOWN, ACCEPTD, ENROUTE
    state: str  # our state: delivered | undeliverable | expired | "" (not final yet)
    err: str = ""
    submit_date: float = 0.0
    done_date: float = 0.0
    received_at: float = 0.0
    # The carrier writes the id the same way in the submit response and in the receipt
    # (CMPP: the same 8 octets, rendered by one function): it is looked up as it is,
    # not under the other bases carrier.ids.receipt_candidates tries for SMSCs that mix
    # hex and decimal (one correlation key instead of three).
    exact_id: bool = False


class InboundMessage(msgspec.Struct, kw_only=True):
    """A mobile-originated message (reassembled when it came in parts)."""

    carrier: str
    source: str  # the subscriber
    destination: str  # our short code / long number
    text: str
    received_at: float
    parts: int = 1
    # The carrier's own id of the MO, where its protocol has one (CMPP Msg_Id): a
    # redelivery repeats it, a new message from the same person with the same text
    # does not. SMPP gives none ("").
    smsc_id: str = ""


def mask_number(number: str) -> str:
    """Mask a phone number for logs and events: +8613800138000 -> +86138****8000."""
    if len(number) <= 7:
        return "*" * len(number)
    return number[:-8] + "****" + number[-4:] if len(number) > 8 else number[:3] + "****"
