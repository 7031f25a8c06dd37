"""The ISMG simulator's knobs and counters (the SMPP simulator's fault modes, in CMPP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

STATS: tuple[str, ...] = ("DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN",
                          "REJECTD")
_FRACTIONS = ("undeliverable_fraction", "flow_control_fraction", "error_fraction",
              "unanswered_fraction")
_NON_NEGATIVE = ("receipt_delay_s", "max_tps", "response_delay_s", "drop_after", "max_binds",
                 "receipt_resend_s", "receipt_max_attempts", "active_test_s", "held_limit")


class IsmgSettings(msgspec.Struct, kw_only=True):
    """Everything the simulated ISMG does differently from a perfect one.

    Authentication: a CONNECT must name ``sp_id`` and carry the AuthenticatorSource of
    ``secret`` (Status 3 otherwise); ``version`` "any" answers in the client's version,
    "2.0"/"3.0" accept only that one (Status 4 for a higher one). ``bad_ismg_auth`` signs
    CONNECT_RESP with a wrong AuthenticatorISMG (an impostor, for the client's check).

    Faults per SUBMIT (probabilities 0..1): flow_control_fraction answers Result 8,
    error_fraction answers ``error_result``, unanswered_fraction never answers. max_tps
    is one token bucket for the simulator (Result 8 above it). drop_after closes a
    connection after its Nth SUBMIT (what it had pipelined stays unanswered).

    Reports: receipt_delay_s after the SUBMIT, Stat ``receipt_stat`` (undeliverable_fraction
    of them UNDELIV, or ``failure_stat`` such as "MK:0001"); one report per part. A
    DELIVER not answered with Result 0 within receipt_resend_s is sent again, at most
    receipt_max_attempts times; with no connection up reports and MO are held (held_limit).
    active_test_s > 0: the simulator sends ACTIVE_TEST to every client this often;
    answer_active_test False leaves the client's ACTIVE_TEST unanswered (a dead link).
    """

    host: str = "127.0.0.1"
    port: int = 0
    sp_id: str = "901234"
    secret: str = "secret"
    version: Literal["any", "2.0", "3.0"] = "any"
    bad_ismg_auth: bool = False
    gateway_id: int = 0x2A0F1  # the 22-bit gateway code in Msg_Ids
    receipts: bool = True
    receipt_delay_s: float = 0.1
    receipt_stat: str = "DELIVRD"
    undeliverable_fraction: float = 0.0
    failure_stat: str = "UNDELIV"
    flow_control_fraction: float = 0.0
    error_fraction: float = 0.0
    error_result: int = 13  # Dest_terminal_Id error
    unanswered_fraction: float = 0.0
    max_tps: float = 0.0
    response_delay_s: float = 0.0
    drop_after: int = 0
    max_binds: int = 0
    receipt_resend_s: float = 10.0
    receipt_max_attempts: int = 3
    active_test_s: float = 0.0
    answer_active_test: bool = True  # False: a link that looks up but is dead
    held_limit: int = 100_000
    keep_submissions: int = 100_000
    utc_offset_h: float = 8.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in _FRACTIONS:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.receipt_stat not in STATS:
            raise ValueError(f"receipt_stat must be one of {', '.join(STATS)}")
        if len(self.failure_stat) > 7 or len(self.sp_id) > 6:
            raise ValueError("failure_stat: at most 7 characters; sp_id: at most 6")
        if not 0 <= self.gateway_id < 1 << 22:
            raise ValueError("gateway_id: 22 bits")


@dataclass
class IsmgStats:
    connections: int = 0
    connects: int = 0
    connect_refused: int = 0
    terminates: int = 0  # TERMINATE received from clients
    submits: int = 0
    results: dict[int, int] = field(default_factory=dict)  # Result -> count
    unanswered: int = 0
    receipts_sent: int = 0
    receipts_resent: int = 0
    receipts_acked: int = 0
    receipts_refused: int = 0  # DELIVER_RESP with a non-zero Result
    receipts_abandoned: int = 0
    mo_sent: int = 0
    mo_acked: int = 0
    held: int = 0
    active_tests: int = 0  # received (and answered)
    active_tests_sent: int = 0
    active_test_resps: int = 0
    malformed: int = 0
    garbage_closes: int = 0
    drops: int = 0
    max_outstanding: int = 0  # most SUBMITs of one connection awaiting a (delayed) answer

    @property
    def ok(self) -> int:
        return self.results.get(0, 0)

    @property
    def flow_controlled(self) -> int:
        return self.results.get(8, 0)

    def summary(self) -> str:
        return (f"connects={self.connects} submits={self.submits} ok={self.ok} "
                f"flow_control={self.flow_controlled} reports={self.receipts_sent}"
                f"(+{self.receipts_resent} resent, {self.receipts_acked} acked) "
                f"mo={self.mo_sent} held={self.held} active_tests={self.active_tests} "
                f"drops={self.drops}")
