"""CMPP 2.0 / 3.0 PDU bytes, the SP (client) side: what we pack and what we parse.

Every PDU: a 12-octet big-endian header Total_Length(4) Command_Id(4) Sequence_Id(4),
responses with bit 0x80000000 set. Octet strings are fixed width, NUL padded. The
layouts (checked against the 2.0 and 3.0 specifications and gocmpp's byte-exact tests):

  CONNECT       Source_Addr(6) AuthenticatorSource(16) Version(1) Timestamp(4)
  CONNECT_RESP  Status(1 | 3.0: 4) AuthenticatorISMG(16) Version(1)
  SUBMIT 2.0    Msg_Id(8) Pk_total Pk_number Registered_Delivery Msg_level Service_Id(10)
                Fee_UserType Fee_terminal_Id(21) TP_pId TP_udhi Msg_Fmt Msg_src(6)
                FeeType(2) FeeCode(6) ValId_Time(17) At_Time(17) Src_Id(21) DestUsr_tl
                Dest_terminal_Id(21 each) Msg_Length Msg_Content Reserve(8)
  SUBMIT 3.0    as 2.0 but Fee_terminal_Id(32) + Fee_terminal_type(1), Dest_terminal_Id(32
                each) + Dest_terminal_type(1), and LinkID(20) instead of Reserve(8)
  SUBMIT_RESP   Msg_Id(8) Result(1 | 3.0: 4)
  DELIVER 2.0   Msg_Id(8) Dest_Id(21) Service_Id(10) TP_pid TP_udhi Msg_Fmt
                Src_terminal_Id(21) Registered_Delivery Msg_Length Msg_Content Reserved(8)
  DELIVER 3.0   ... Src_terminal_Id(32) Src_terminal_type(1) ... LinkID(20) at the end
  DELIVER_RESP  Msg_Id(8) Result(1 | 3.0: 4)
  report        (Msg_Content of a DELIVER with Registered_Delivery = 1) Msg_Id(8) Stat(7)
                Submit_time(10) Done_time(10) Dest_terminal_Id(21 | 3.0: 32) SMSC_sequence(4)
  ACTIVE_TEST / TERMINATE / TERMINATE_RESP: no body; ACTIVE_TEST_RESP: Reserved(1)

Where the version only changes a width, the parsers go by the body's length rather than
by the version we asked for: ISMGs that answer a 3.0 CONNECT with a 2.0-sized response
(or the other way round) exist, and the length says which it is.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct(">III")
HEADER_LEN: Final = 12
# A SUBMIT to 100 destinations in 3.0 is ~3.5 kB; anything beyond 8 kB is a framing error.
MAX_PDU_LEN: Final = 8 * 1024
RESP: Final = 0x80000000

CONNECT: Final = 0x00000001
TERMINATE: Final = 0x00000002
SUBMIT: Final = 0x00000004
DELIVER: Final = 0x00000005
QUERY: Final = 0x00000006
CANCEL: Final = 0x00000007
ACTIVE_TEST: Final = 0x00000008
CONNECT_RESP: Final = CONNECT | RESP
TERMINATE_RESP: Final = TERMINATE | RESP
SUBMIT_RESP: Final = SUBMIT | RESP
DELIVER_RESP: Final = DELIVER | RESP
ACTIVE_TEST_RESP: Final = ACTIVE_TEST | RESP

V20: Final = 0x20
V30: Final = 0x30
VERSIONS: Final = {"2.0": V20, "3.0": V30}

_pack_header = HEADER.pack
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


class PduError(ValueError):
    """A PDU whose body does not have the fields its command needs."""


def pdu(command: int, seq: int, body: bytes = b"") -> bytes:
    return _pack_header(HEADER_LEN + len(body), command, seq) + body


def octets(value: str | bytes, width: int) -> bytes:
    """A fixed-width octet string: ASCII, NUL padded; too long is a caller's error."""
    raw = value.encode("ascii") if isinstance(value, str) else value
    if len(raw) > width:
        raise ValueError(f"{raw!r} is longer than {width} octets")
    return raw.ljust(width, b"\x00")


def text_field(raw: bytes) -> str:
    """An octet string field as text: up to the first NUL, surrounding blanks removed."""
    return raw.partition(b"\x00")[0].decode("latin-1").strip()


# -- CONNECT ------------------------------------------------------------------------------
def authenticator_source(source_addr: str, secret: str, timestamp: str) -> bytes:
    """MD5(Source_Addr + 9 zero octets + shared secret + timestamp "MMDDHHMMSS")."""
    return hashlib.md5(
        source_addr.encode("ascii") + b"\x00" * 9 + secret.encode("utf-8")
        + timestamp.encode("ascii"),
        usedforsecurity=False,
    ).digest()


def authenticator_ismg(status_octets: bytes, auth_source: bytes, secret: str) -> bytes:
    """MD5(Status as on the wire + AuthenticatorSource + shared secret)."""
    return hashlib.md5(status_octets + auth_source + secret.encode("utf-8"),
                       usedforsecurity=False).digest()


def connect_pdu(
    seq: int, source_addr: str, secret: str, version: int, timestamp: str
) -> tuple[bytes, bytes]:
    """The CONNECT PDU and its AuthenticatorSource (needed to check the answer)."""
    auth = authenticator_source(source_addr, secret, timestamp)
    body = octets(source_addr, 6) + auth + bytes((version,)) + _U32.pack(int(timestamp))
    return pdu(CONNECT, seq, body), auth


@dataclass(frozen=True, slots=True)
class ConnectResp:
    status: int
    status_octets: bytes  # as on the wire: the AuthenticatorISMG is computed over these
    authenticator: bytes
    version: int


def parse_connect_resp(body: bytes) -> ConnectResp:
    if len(body) == 18:
        cut = 1
    elif len(body) == 21:
        cut = 4
    else:
        raise PduError(f"CONNECT_RESP body of {len(body)} octets (18 or 21 expected)")
    status_octets = body[:cut]
    return ConnectResp(int.from_bytes(status_octets, "big"), status_octets,
                       body[cut : cut + 16], body[cut + 16])


# -- SUBMIT ---------------------------------------------------------------------------------
class SubmitTemplate:
    """SUBMIT bodies of one carrier: the fields fixed by its settings are packed once."""

    def __init__(
        self, *, version: int, registered_delivery: int, msg_level: int, service_id: str,
        fee_user_type: int, fee_terminal_id: str, tp_pid: int, msg_src: str, fee_type: str,
        fee_code: str, link_id: str = "",
    ) -> None:
        self.v3 = version == V30
        self.dest_width = 32 if self.v3 else 21
        self._regdel = bytes((registered_delivery, msg_level)) + octets(service_id, 10)
        fee_terminal = octets(fee_terminal_id, 32 if self.v3 else 21)
        self._fee = bytes((fee_user_type,)) + fee_terminal + (b"\x00" if self.v3 else b"")
        self._tp_pid = bytes((tp_pid,))
        self._src = octets(msg_src, 6) + octets(fee_type, 2) + octets(fee_code, 6)
        self._tail = octets(link_id, 20) if self.v3 else b"\x00" * 8
        # Everything before Msg_Content in one struct.pack (a join of 17 pieces and three
        # octets() calls a part before): Msg_Id (0), Pk_total, Pk_number, the settings'
        # fields up to TP_pId, TP_udhi, Msg_Fmt, Msg_src + FeeType + FeeCode,
        # ValId_Time, At_Time (empty), Src_Id, DestUsr_tl, Dest_terminal_Id
        # (+ Dest_terminal_type in 3.0), Msg_Length. "Ns" pads with NULs as octets() does;
        # body() checks the lengths octets() checked.
        self._fixed = self._regdel + self._fee + self._tp_pid
        self._head = struct.Struct(
            f">8xBB{len(self._fixed)}sBB{len(self._src)}s17s17x21sB{self.dest_width}s"
            f"{'x' if self.v3 else ''}B")

    def body(
        self, *, pk_total: int, pk_number: int, udhi: bool, msg_fmt: int, valid: str,
        src_id: str, destination: str, content: bytes,
    ) -> bytes:
        n = len(content)
        if n > 255:
            raise ValueError(f"Msg_Content of {n} octets (at most 255)")
        dest, src, val = destination.encode("ascii"), src_id.encode("ascii"), valid.encode("ascii")
        if len(dest) > self.dest_width or len(src) > 21 or len(val) > 17:
            raise ValueError(f"Dest_terminal_Id {destination!r}, Src_Id {src_id!r} or "
                             f"ValId_Time {valid!r} is longer than its field")
        return self._head.pack(pk_total, pk_number, self._fixed, 1 if udhi else 0, msg_fmt,
                               self._src, val, src, 1, dest, n) + content + self._tail


def parse_submit_resp(body: bytes) -> tuple[int, int]:
    """(Msg_Id, Result); a 9-octet body is 2.0's 1-octet Result, 12 octets 3.0's."""
    n = len(body)
    if n == 9:
        return _U64.unpack_from(body)[0], body[8]
    if n == 12:
        return _U64.unpack_from(body)[0], _U32.unpack_from(body, 8)[0]
    raise PduError(f"SUBMIT_RESP body of {n} octets (9 or 12 expected)")


# -- DELIVER ------------------------------------------------------------------------------
# Not frozen: a frozen dataclass's __init__ costs ~3x (object.__setattr__ per field),
# and one is built per DELIVER on the receipt path. Treated as read-only all the same.
@dataclass(slots=True)
class Deliver:
    msg_id: int  # the ISMG's id of this DELIVER (echoed in DELIVER_RESP)
    dest_id: str  # our access number (+ extension) the subscriber wrote to
    service_id: str
    tp_pid: int
    tp_udhi: int
    msg_fmt: int
    source: str  # Src_terminal_Id: the subscriber (MO) or the handset the report is for
    registered_delivery: int  # 1: Msg_Content is a status report
    content: bytes
    v3: bool


_DELIVER_HEAD: Final = struct.Struct(">Q21s10sBBB")  # up to Src_terminal_Id
# (body length without content, offset of Msg_Length, source width, trailer)
_DELIVER_LAYOUT: Final = {False: (73, 64, 21, 8), True: (97, 76, 32, 20)}


def _deliver_layout(body: bytes, v3: bool) -> bool:
    """Whether a DELIVER body has 3.0's layout: ``v3``'s is tried first, then the other."""
    for layout in (v3, not v3):
        fixed, at, _, _ = _DELIVER_LAYOUT[layout]
        if len(body) > at and len(body) == fixed + body[at]:
            return layout
    raise PduError(f"DELIVER body of {len(body)} octets fits neither 2.0 nor 3.0")


def deliver_frame(body: bytes, v3: bool) -> tuple[int, int, bytes]:
    """(Msg_Id, Registered_Delivery, Msg_Content) of a DELIVER body, its text fields left
    alone: a status report needs no more (one arrives per part sent)."""
    at = _DELIVER_LAYOUT[_deliver_layout(body, v3)][1]
    return _U64.unpack_from(body)[0], body[at - 1], body[at + 1 : at + 1 + body[at]]


def parse_deliver(body: bytes, v3: bool) -> Deliver:
    """A DELIVER body; the layout of ``v3`` is tried first, then the other one."""
    layout = _deliver_layout(body, v3)
    _, at, src_width, _ = _DELIVER_LAYOUT[layout]
    mid, dest, service, tp_pid, tp_udhi, msg_fmt = _DELIVER_HEAD.unpack_from(body)
    n = body[at]
    return Deliver(
        msg_id=mid, dest_id=text_field(dest), service_id=text_field(service), tp_pid=tp_pid,
        tp_udhi=tp_udhi, msg_fmt=msg_fmt, source=text_field(body[42 : 42 + src_width]),
        registered_delivery=body[at - 1], content=bytes(body[at + 1 : at + 1 + n]), v3=layout,
    )


# Not frozen: a frozen dataclass's __init__ costs ~3x (object.__setattr__ per field),
# and one is built per DELIVER on the receipt path. Treated as read-only all the same.
@dataclass(slots=True)
class Report:
    msg_id: int  # the Msg_Id SUBMIT_RESP gave the part this report is about
    stat: str
    submit_time: str  # YYMMDDHHMM, the ISMG's local time
    done_time: str
    destination: str
    smsc_sequence: int


_REPORT_2: Final = struct.Struct(">Q7s10s10s21sI")
_REPORT_3: Final = struct.Struct(">Q7s10s10s32sI")


def parse_report(content: bytes) -> Report:
    """The status report carried in a DELIVER's Msg_Content (60 octets in 2.0, 71 in 3.0)."""
    n = len(content)
    if n < 60:
        raise PduError(f"status report of {n} octets (60 or 71 expected)")
    mid, stat, submit, done, dest, smsc_seq = (_REPORT_3 if n >= 71 else _REPORT_2).unpack_from(
        content)
    return Report(mid, text_field(stat), text_field(submit), text_field(done),
                  text_field(dest), smsc_seq)


def deliver_resp_pdu(seq: int, msg_id: int, result: int, v3: bool) -> bytes:
    res = _U32.pack(result) if v3 else bytes((min(result, 255),))
    return pdu(DELIVER_RESP, seq, _U64.pack(msg_id) + res)


# -- link ---------------------------------------------------------------------------------
def active_test_resp_pdu(seq: int) -> bytes:
    return pdu(ACTIVE_TEST_RESP, seq, b"\x00")
