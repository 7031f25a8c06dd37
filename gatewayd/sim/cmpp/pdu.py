"""CMPP PDU bytes, the ISMG's side: what the simulator parses and what it packs.

Written apart from gatewayd/carrier/cmpp/pdu.py on purpose (the simulator imports no
carrier code): the client's packer is checked against this parser and the other way
round, and both against byte-exact fixtures, so a mistake shared by both is unlikely.
Field layouts: see the client's module docstring.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct(">III")
MAX_PDU_LEN: Final = 8 * 1024
RESP: Final = 0x80000000
CONNECT: Final = 1
TERMINATE: Final = 2
SUBMIT: Final = 4
DELIVER: Final = 5
ACTIVE_TEST: Final = 8

_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


class Malformed(ValueError):
    pass


def pack(command: int, seq: int, body: bytes = b"") -> bytes:
    return HEADER.pack(12 + len(body), command, seq) + body


def _fixed(value: bytes, width: int) -> bytes:
    return value[:width].ljust(width, b"\x00")


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1")


def md5(*parts: bytes) -> bytes:
    return hashlib.md5(b"".join(parts), usedforsecurity=False).digest()


@dataclass(frozen=True, slots=True)
class Connect:
    source_addr: str
    authenticator: bytes
    version: int
    timestamp: int


def parse_connect(body: bytes) -> Connect:
    if len(body) != 27:
        raise Malformed(f"CONNECT body of {len(body)} octets, not 27")
    return Connect(_text(body[:6]), body[6:22], body[22], _U32.unpack_from(body, 23)[0])


def expected_authenticator(source_addr: str, secret: str, timestamp: int) -> bytes:
    return md5(source_addr.encode("latin-1"), bytes(9), secret.encode("utf-8"),
               f"{timestamp:010d}".encode())


def connect_resp(seq: int, status: int, auth_source: bytes, secret: str, version: int,
                 wide: bool) -> bytes:
    st = _U32.pack(status) if wide else bytes((status,))
    return pack(CONNECT | RESP, seq, st + md5(st, auth_source, secret.encode("utf-8"))
                + bytes((version,)))


@dataclass(slots=True)
class Submit:
    pk_total: int
    pk_number: int
    registered_delivery: int
    service_id: str
    fee_user_type: int
    fee_type: str
    fee_code: str
    tp_udhi: int
    msg_fmt: int
    msg_src: str
    valid_time: str
    src_id: str
    destinations: list[str]
    content: bytes
    link_id: str
    v3: bool


def parse_submit(body: bytes) -> Submit:
    """A SUBMIT of either version: the one whose layout adds up to the body's length."""
    for v3 in (True, False):
        try:
            return _parse_submit(body, v3)
        except (Malformed, IndexError, struct.error):
            continue
    raise Malformed(f"SUBMIT body of {len(body)} octets fits neither 2.0 nor 3.0")


def _parse_submit(b: bytes, v3: bool) -> Submit:
    term = 32 if v3 else 21
    p = 8
    pk_total, pk_number, regdel = b[p], b[p + 1], b[p + 2]
    p += 4  # + Msg_level
    service_id = _text(b[p : p + 10])
    p += 10
    fee_user_type = b[p]
    p += 1 + term + (1 if v3 else 0)  # Fee_terminal_Id (+ type)
    p += 1  # TP_pId
    tp_udhi, msg_fmt = b[p], b[p + 1]
    p += 2
    msg_src = _text(b[p : p + 6])
    fee_type = _text(b[p + 6 : p + 8])
    fee_code = _text(b[p + 8 : p + 14])
    valid = _text(b[p + 14 : p + 31])
    p += 14 + 17 + 17  # + At_Time
    src_id = _text(b[p : p + 21])
    p += 21
    count = b[p]
    p += 1
    dests = [_text(b[p + i * term : p + (i + 1) * term]) for i in range(count)]
    p += count * term + (1 if v3 else 0)  # + Dest_terminal_type
    n = b[p]
    content = b[p + 1 : p + 1 + n]
    p += 1 + n
    tail = 20 if v3 else 8
    if len(content) != n or p + tail != len(b) or count == 0:
        raise Malformed("layout does not add up")
    return Submit(pk_total, pk_number, regdel, service_id, fee_user_type, fee_type, fee_code,
                  tp_udhi, msg_fmt, msg_src, valid, src_id, dests, content,
                  _text(b[p:]) if v3 else "", v3)


def submit_resp(seq: int, msg_id: int, result: int, v3: bool) -> bytes:
    return pack(SUBMIT | RESP, seq,
                _U64.pack(msg_id) + (_U32.pack(result) if v3 else bytes((result,))))


# The header and the DELIVER's fields up to Msg_Length in one pack (struct's "Ns" pads
# with NULs and cuts at N, as _fixed does): Total_Length, Command_Id, Sequence_Id,
# Msg_Id, Dest_Id, Service_Id, TP_pid, TP_udhi, Msg_Fmt, Src_terminal_Id
# (+ Src_terminal_type in 3.0), Registered_Delivery, Msg_Length.
_DELIVER_HEAD: Final = {False: struct.Struct(">IIIQ21s10sBBB21sBB"),
                        True: struct.Struct(">IIIQ21s10sBBB32sBBB")}
_DELIVER_TAIL: Final = {False: bytes(8), True: bytes(20)}  # Reserve / LinkID
_REPORT: Final = {False: struct.Struct(">Q7s10s10s21sI"), True: struct.Struct(">Q7s10s10s32sI")}


def deliver(seq: int, *, msg_id: int, dest_id: str, service_id: str, msg_fmt: int,
            src_terminal: str, registered_delivery: int, content: bytes, udhi: bool,
            v3: bool) -> bytes:
    head = _DELIVER_HEAD[v3]
    tail = _DELIVER_TAIL[v3]
    n = len(content)
    fields = (head.size + n + len(tail), DELIVER, seq, msg_id, dest_id.encode(),
              service_id.encode(), 0, 1 if udhi else 0, msg_fmt, src_terminal.encode())
    if v3:
        return head.pack(*fields, 0, registered_delivery, n) + content + tail
    return head.pack(*fields, registered_delivery, n) + content + tail


def report(msg_id: int, stat: str, submit_time: str, done_time: str, dest: str,
           smsc_seq: int, v3: bool) -> bytes:
    return _REPORT[v3].pack(msg_id, stat.encode(), submit_time.encode(), done_time.encode(),
                            dest.encode(), smsc_seq)


def parse_deliver_resp(body: bytes) -> tuple[int, int]:
    if len(body) == 9:
        return _U64.unpack_from(body)[0], body[8]
    if len(body) == 12:
        return _U64.unpack_from(body)[0], _U32.unpack_from(body, 8)[0]
    raise Malformed(f"DELIVER_RESP body of {len(body)} octets")


def msg_id(month: int, day: int, hour: int, minute: int, second: int, gateway: int,
           seq: int) -> int:
    """The 64-bit Msg_Id: month(4) day(5) hour(5) minute(6) second(6) gateway(22) seq(16)."""
    v = month
    for value, bits in ((day, 5), (hour, 5), (minute, 6), (second, 6), (gateway, 22),
                        (seq, 16)):
        v = v << bits | (value & ((1 << bits) - 1))
    return v
