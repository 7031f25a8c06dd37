"""SMPP command_status table: what each status means for the message that got it.

Kinds:
  ok         accepted
  throttle   the SMSC wants us slower (ESME_RTHROTTLED, ESME_RMSGQFUL): the message is
             retried later *and* the bind lowers its rate; never a failure of the message
  retry      temporary: the message is tried again later (the dispatcher applies the
             back-off and the attempt limit, queue.retry_backoff_s / queue.max_attempts)
  permanent  the message can never succeed as it is: it ends as failed with the status name

Unknown codes, including the vendor range 0x400-0x4FF, are *retry*: we cannot tell what
they mean, a retry is bounded by queue.max_attempts, and ending a message as failed on a
code that may well be temporary (vendors use that range for "balance low", "route busy")
loses it for good. A status never affects the bind itself (only bind_resp does).
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["ok", "retry", "permanent", "throttle"]

# Pseudo statuses for outcomes that never came from the SMSC (negative: no clash).
TIMEOUT: Final = -1  # no submit_sm_resp within response_timeout_s
BIND_LOST: Final = -2  # connection dropped while the submit_sm was outstanding
NOT_SENT: Final = -3  # bind went down (or pool stopped) before the part was written

STATUS: Final[dict[int, tuple[str, Kind]]] = {
    0x00: ("ESME_ROK", "ok"),
    0x01: ("ESME_RINVMSGLEN", "permanent"),
    0x02: ("ESME_RINVCMDLEN", "permanent"),
    0x03: ("ESME_RINVCMDID", "permanent"),
    0x04: ("ESME_RINVBNDSTS", "retry"),  # not bound (yet/any more): another bind may take it
    0x05: ("ESME_RALYBND", "retry"),
    0x06: ("ESME_RINVPRTFLG", "permanent"),
    0x07: ("ESME_RINVREGDLVFLG", "permanent"),
    0x08: ("ESME_RSYSERR", "retry"),
    0x0A: ("ESME_RINVSRCADR", "permanent"),
    0x0B: ("ESME_RINVDSTADR", "permanent"),
    0x0C: ("ESME_RINVMSGID", "permanent"),
    0x0D: ("ESME_RBINDFAIL", "retry"),
    0x0E: ("ESME_RINVPASWD", "retry"),
    0x0F: ("ESME_RINVSYSID", "retry"),
    0x11: ("ESME_RCANCELFAIL", "permanent"),
    0x13: ("ESME_RREPLACEFAIL", "permanent"),
    0x14: ("ESME_RMSGQFUL", "throttle"),
    0x15: ("ESME_RINVSERTYP", "permanent"),
    0x33: ("ESME_RINVNUMDESTS", "permanent"),
    0x34: ("ESME_RINVDLNAME", "permanent"),
    0x40: ("ESME_RINVDESTFLAG", "permanent"),
    0x42: ("ESME_RINVSUBREP", "permanent"),
    0x43: ("ESME_RINVESMCLASS", "permanent"),
    0x44: ("ESME_RCNTSUBDL", "permanent"),
    0x45: ("ESME_RSUBMITFAIL", "retry"),  # generic "submit failed": usually transient
    0x48: ("ESME_RINVSRCTON", "permanent"),
    0x49: ("ESME_RINVSRCNPI", "permanent"),
    0x50: ("ESME_RINVDSTTON", "permanent"),
    0x51: ("ESME_RINVDSTNPI", "permanent"),
    0x53: ("ESME_RINVSYSTYP", "permanent"),
    0x54: ("ESME_RINVREPFLAG", "permanent"),
    0x55: ("ESME_RINVNUMMSGS", "permanent"),
    0x58: ("ESME_RTHROTTLED", "throttle"),
    0x61: ("ESME_RINVSCHED", "permanent"),
    0x62: ("ESME_RINVEXPIRY", "permanent"),
    0x63: ("ESME_RINVDFTMSGID", "permanent"),
    0x64: ("ESME_RX_T_APPN", "retry"),
    0x65: ("ESME_RX_P_APPN", "permanent"),
    0x66: ("ESME_RX_R_APPN", "permanent"),  # the SMSC rejected it on purpose (e.g. content)
    0x67: ("ESME_RQUERYFAIL", "retry"),
    0xC0: ("ESME_RINVOPTPARSTREAM", "permanent"),
    0xC1: ("ESME_ROPTPARNOTALLWD", "permanent"),
    0xC2: ("ESME_RINVPARLEN", "permanent"),
    0xC3: ("ESME_RMISSINGOPTPARAM", "permanent"),
    0xC4: ("ESME_RINVOPTPARAMVAL", "permanent"),
    0xFE: ("ESME_RDELIVERYFAILURE", "retry"),
    0xFF: ("ESME_RUNKNOWNERR", "retry"),
    TIMEOUT: ("RESPONSE_TIMEOUT", "retry"),
    BIND_LOST: ("BIND_LOST", "retry"),
    NOT_SENT: ("NOT_SENT", "retry"),
}

# A bind_resp with one of these means "your credentials/account are wrong": retry slowly.
BIND_REFUSED: Final = frozenset({0x05, 0x0D, 0x0E, 0x0F})

UNKNOWN_KIND: Final[Kind] = "retry"


def status_name(status: int) -> str:
    """ESME_R... for known codes, else the code as 0x%08x (vendor codes)."""
    known = STATUS.get(status)
    if known is not None:
        return known[0]
    return f"0x{status & 0xFFFFFFFF:08x}"


def status_kind(status: int) -> Kind:
    known = STATUS.get(status)
    return known[1] if known is not None else UNKNOWN_KIND


# Ranking used when parts of one message fail differently: report the worst.
_SEVERITY: Final[dict[Kind, int]] = {"ok": 0, "throttle": 1, "retry": 2, "permanent": 3}


def severity(status: int) -> int:
    return _SEVERITY[status_kind(status)]


def outcome_rank(status: int) -> int:
    """Which failing part names a multipart message's failure: a permanent refusal, then
    a temporary one (or no answer: both use an attempt), then a bind lost with the part
    in flight (uses none, see queue.max_bind_losses), then throttled or never written
    (back-pressure: retried without an attempt)."""
    kind = status_kind(status)
    if kind == "permanent":
        return 4
    if kind == "throttle" or status == NOT_SENT:
        return 1
    if status == BIND_LOST:
        return 2
    return 3
