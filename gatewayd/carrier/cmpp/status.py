"""CMPP result codes: CONNECT_RESP Status and SUBMIT_RESP Result, and what each means.

Kinds are those of carrier/smpp/status.py, so the pool treats both protocols alike:
ok, throttle (8 = flow control: the message is retried later and the bind slows down,
exactly as for ESME_RTHROTTLED), retry (temporary), permanent (this message can never
succeed as it is). Codes outside the specification's table (ISMG vendors add their own)
are retry, bounded by queue.max_attempts, for the reason the SMPP table gives. Names are
prefixed CMPP_ so an event's status_name says which protocol produced it.

The pseudo statuses (no answer, connection lost, never written) have the SMPP table's
values so a batch spanning both protocols can share one Waiter.
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["ok", "retry", "permanent", "throttle"]

TIMEOUT: Final = -1  # no SUBMIT_RESP within response_timeout_s
BIND_LOST: Final = -2  # the connection dropped while the SUBMIT was outstanding
NOT_SENT: Final = -3  # the bind went down (or stopped) before the part was written
BAD_RESPONSE: Final = -4  # a SUBMIT_RESP too garbled to read: the ISMG may have taken it

FLOW_CONTROL: Final = 8

# SUBMIT_RESP Result, CMPP 2.0 and 3.0 (the same table; 3.0 widens it to 4 octets).
RESULTS: Final[dict[int, tuple[str, Kind]]] = {
    0: ("CMPP_OK", "ok"),
    1: ("CMPP_INVALID_STRUCTURE", "permanent"),
    2: ("CMPP_INVALID_COMMAND", "permanent"),
    3: ("CMPP_DUPLICATE_SEQUENCE", "retry"),  # a sequence clash: the next try gets a new one
    4: ("CMPP_INVALID_LENGTH", "permanent"),
    5: ("CMPP_INVALID_FEE_CODE", "permanent"),
    6: ("CMPP_TOO_LONG", "permanent"),
    7: ("CMPP_INVALID_SERVICE_ID", "permanent"),
    FLOW_CONTROL: ("CMPP_FLOW_CONTROL", "throttle"),
    9: ("CMPP_FEE_TERMINAL_NOT_SERVED", "permanent"),
    10: ("CMPP_INVALID_SRC_ID", "permanent"),
    11: ("CMPP_INVALID_MSG_SRC", "permanent"),
    12: ("CMPP_INVALID_FEE_TERMINAL", "permanent"),
    13: ("CMPP_INVALID_DEST_TERMINAL", "permanent"),
    TIMEOUT: ("RESPONSE_TIMEOUT", "retry"),
    BIND_LOST: ("BIND_LOST", "retry"),
    NOT_SENT: ("NOT_SENT", "retry"),
    BAD_RESPONSE: ("BAD_RESPONSE", "retry"),
}

# CONNECT_RESP Status. 2 and 3 are the account's fault and 4 the configured version's:
# retried only after auth_retry_s. 1 (structure) and 5+ get the usual reconnect back-off.
CONNECT_STATUS: Final = {
    0: "CMPP_OK",
    1: "CMPP_INVALID_STRUCTURE",
    2: "CMPP_INVALID_SOURCE_ADDR",
    3: "CMPP_AUTH_FAILED",
    4: "CMPP_VERSION_TOO_HIGH",
}
CONNECT_REFUSED: Final = frozenset({2, 3, 4})

# DELIVER_RESP Result we send: 0 taken; 8 (flow control) when our handler failed, which
# ISMGs treat as "deliver it again later"; 1 for a DELIVER we cannot parse.
DELIVER_OK: Final = 0
DELIVER_RETRY: Final = 8
DELIVER_MALFORMED: Final = 1

UNKNOWN_KIND: Final[Kind] = "retry"


def result_name(result: int) -> str:
    known = RESULTS.get(result)
    return known[0] if known is not None else f"CMPP_RESULT_{result}"


def result_kind(result: int) -> Kind:
    known = RESULTS.get(result)
    return known[1] if known is not None else UNKNOWN_KIND


def connect_status_name(status: int) -> str:
    return CONNECT_STATUS.get(status, f"CMPP_CONNECT_STATUS_{status}")


_SEVERITY: Final[dict[Kind, int]] = {"ok": 0, "throttle": 1, "retry": 2, "permanent": 3}


def severity(result: int) -> int:
    return _SEVERITY[result_kind(result)]
