"""The simulator's knobs and counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from gatewayd.sim.smpp.receipts import STATS

_FRACTIONS = (
    "undeliverable_fraction", "early_receipt_fraction", "throttle_fraction", "error_fraction",
    "unanswered_fraction",
)
_NON_NEGATIVE = (
    "receipt_delay_s", "max_tps", "response_delay_s", "receipt_resend_s", "drop_after",
    "max_binds", "receipt_max_attempts", "held_limit", "enquire_link_s", "first_id",
)


class SimSettings(msgspec.Struct, kw_only=True):
    """Everything the simulator does differently from a perfect SMSC.

    Fractions are probabilities per submit_sm (0..1), so per part of a long message:
    ``error_fraction`` with ``error_status = 0x08`` is a per-part ESME_RSYSERR. A submit_sm
    picked by ``unanswered_fraction`` is never answered and gets no receipt (the client
    times out on it; recorded with status pdu.UNANSWERED). ``max_tps`` is one token bucket
    for the whole simulator holding one second of traffic (a client sending at the rate
    is never throttled, one bursting above it is answered ESME_RTHROTTLED).
    ``drop_after`` counts submit_sm per connection: the first N are answered, then the
    connection is closed and whatever else the client had pipelined stays unanswered.

    Every bind of one system_id is one account, whatever its mode (split transmitter /
    receiver binds, or several client configurations on one account): a receipt goes to
    the connection that submitted when it can receive and ``receipts_to`` is
    "submitter", else to the account's receivers in turn ("any": every receipt in turn,
    as SMSCs that balance over binds do).

    Receipts and MOs that cannot be delivered (no receiver bound, connection lost before
    deliver_sm_resp) are held and delivered to the next receiver that binds, up to
    ``held_limit`` (oldest dropped). A deliver_sm not answered within ``receipt_resend_s``
    is sent again with a new sequence number, at most ``receipt_max_attempts`` times.
    ``keep_submissions`` bounds ``SmscSimulator.submissions`` (oldest dropped; -1 keeps
    all) so a long-running demo does not grow without limit.
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    system_id: str = "demo"
    password: str = "demo"
    receipts: bool = True
    receipt_delay_s: float = 0.2
    receipt_stat: str = "DELIVRD"
    undeliverable_fraction: float = 0.0
    id_format: Literal["hex", "decimal", "uuid"] = "hex"
    receipt_id_format: Literal["same", "decimal", "hex"] = "same"
    first_id: int = 0  # > 0: hex/decimal ids count up from it (receipts.IdGenerator)
    receipt_dates_with_seconds: bool = False
    early_receipt_fraction: float = 0.0
    throttle_fraction: float = 0.0
    error_fraction: float = 0.0
    error_status: int = 0x45  # ESME_RSUBMITFAIL
    unanswered_fraction: float = 0.0
    receipts_to: Literal["submitter", "any"] = "submitter"
    max_tps: float = 0.0  # 0: unlimited
    response_delay_s: float = 0.0
    drop_after: int = 0  # 0: never
    max_binds: int = 0  # 0: unlimited
    tls_cert: str = ""
    tls_key: str = ""
    seed: int | None = None
    receipt_resend_s: float = 10.0
    enquire_link_s: float = 0.0  # > 0: send enquire_link to every bound ESME this often
    receipt_max_attempts: int = 3
    held_limit: int = 100_000
    keep_submissions: int = 100_000

    def __post_init__(self) -> None:
        for name in _FRACTIONS:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        for name in _NON_NEGATIVE:
            v = getattr(self, name)
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.receipt_stat not in STATS:
            raise ValueError(
                f"receipt_stat must be one of {', '.join(STATS)}, got {self.receipt_stat!r}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if not 0 <= self.error_status <= 0xFFFFFFFF:
            raise ValueError(f"error_status out of range: {self.error_status}")


@dataclass
class SimStats:
    """Counters since start. ``responses`` is keyed by status name ("ESME_ROK", ...);
    ``max_outstanding`` by bind name ("demo#1") and only grows while responses are
    delayed (response_delay_s > 0): submit_sm received but not yet answered."""

    connections: int = 0
    binds: int = 0
    bind_refused: int = 0
    unbinds: int = 0
    submit_sm: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    receipts_sent: int = 0
    receipts_resent: int = 0
    receipts_acked: int = 0
    receipts_nacked: int = 0  # deliver_sm_resp with an error status
    receipts_abandoned: int = 0  # gave up after receipt_max_attempts
    mo_sent: int = 0
    mo_acked: int = 0
    mo_nacked: int = 0  # MO deliver_sm answered with an error status (then resent)
    unacked: int = 0  # deliver_sm (receipts and MO) written, not yet answered
    held: int = 0  # deliver_sm waiting for a receiver to bind
    held_dropped: int = 0
    enquire_links: int = 0  # enquire_link received (and answered)
    enquire_links_sent: int = 0  # by the simulator (enquire_link_s > 0)
    enquire_link_resps: int = 0  # answers to those
    generic_nacks: int = 0  # generic_nack sent (unknown command, malformed body)
    garbage_closes: int = 0  # connections closed for an impossible command_length
    drops: int = 0  # connections closed by drop_after
    unanswered: int = 0  # submit_sm never answered (unanswered_fraction)
    max_outstanding: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.responses.get("ESME_ROK", 0)

    @property
    def throttled(self) -> int:
        return self.responses.get("ESME_RTHROTTLED", 0)

    @property
    def failed(self) -> int:
        """submit_sm refused with anything but ESME_ROK and ESME_RTHROTTLED."""
        return sum(self.responses.values()) - self.ok - self.throttled

    def as_dict(self) -> dict[str, int]:
        """Flat snapshot: every integer counter plus ok / throttled / failed."""
        out = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out.update(ok=self.ok, throttled=self.throttled, failed=self.failed)
        return out

    def __getitem__(self, name: str) -> int:
        # stats["throttled"] reads like the dict other code may expect.
        return self.as_dict()[name]

    def summary(self) -> str:
        return (
            f"binds={self.binds} submit_sm={self.submit_sm} ok={self.ok} "
            f"throttled={self.throttled} failed={self.failed} "
            f"receipts={self.receipts_sent}(+{self.receipts_resent} resent, "
            f"{self.receipts_acked} acked) mo={self.mo_sent} unacked={self.unacked} "
            f"held={self.held} enquire_links={self.enquire_links} drops={self.drops} "
            f"unanswered={self.unanswered} abandoned={self.receipts_abandoned}"
        )
