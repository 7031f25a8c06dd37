"""A small, deliberately independent SMSC for the carrier tests' protocol edges.

Written from the SMPP 3.4 text, not from gatewayd.carrier.smpp.pdu, so that a shared
misreading of the spec cannot make both sides agree. It records every submit_sm, counts
the most submit_sm ever outstanding, and has knobs for the faults the tests need.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from gatewayd.config import CarrierConfig, Config, RoutingConfig
from gatewayd.model import InboundMessage, Receipt

HDR = struct.Struct(">IIII")


def cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end], end + 1


@dataclass
class Submitted:
    system_id: str
    source: str
    source_ton: int
    destination: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    validity: str
    short_message: bytes
    tlvs: dict[int, bytes]
    message_id: str = ""
    status: int = 0


def parse_submit(body: bytes, system_id: str) -> Submitted:
    pos = 0
    _, pos = cstr(body, pos)  # service_type
    source_ton, _npi = body[pos], body[pos + 1]
    source, pos = cstr(body, pos + 2)
    dest, pos = cstr(body, pos + 2)
    esm = body[pos]
    _, pos = cstr(body, pos + 3)  # schedule
    validity, pos = cstr(body, pos)
    regdel = body[pos]
    dc = body[pos + 2]
    sm_len = body[pos + 4]
    pos += 5
    sm = body[pos : pos + sm_len]
    pos += sm_len
    tlvs: dict[int, bytes] = {}
    while pos + 4 <= len(body):
        tag, ln = struct.unpack_from(">HH", body, pos)
        tlvs[tag] = body[pos + 4 : pos + 4 + ln]
        pos += 4 + ln
    return Submitted(system_id, source.decode(), source_ton, dest.decode(), esm, dc, regdel,
                     validity.decode(), sm, tlvs)


def deliver_sm_body(
    *, source: str, destination: str, esm_class: int = 0, data_coding: int = 0,
    short_message: bytes = b"", tlvs: dict[int, bytes] | None = None,
) -> bytes:
    body = (
        b"\x00" + bytes((1, 1)) + source.encode() + b"\x00" + bytes((5, 0))
        + destination.encode() + b"\x00" + bytes((esm_class, 0, 0)) + b"\x00\x00"
        + bytes((0, 0, data_coding, 0, len(short_message))) + short_message
    )
    for tag, value in (tlvs or {}).items():
        body += struct.pack(">HH", tag, len(value)) + value
    return body


def reassemble(subs: list[Submitted]) -> dict[tuple[str, int], list[Submitted]]:
    """Group UDH-concatenated submissions by (destination, reference)."""
    groups: dict[tuple[str, int], list[Submitted]] = {}
    for s in subs:
        if s.esm_class & 0x40:
            iei = s.short_message[1]
            ref = (s.short_message[3] << 8 | s.short_message[4]) if iei == 8 else s.short_message[3]
            groups.setdefault((s.destination, ref), []).append(s)
    for parts in groups.values():
        parts.sort(key=lambda p: p.short_message[p.short_message[0]])  # seq: the UDH's last byte
    return groups


def payload_of(s: Submitted) -> bytes:
    if s.esm_class & 0x40:
        return s.short_message[s.short_message[0] + 1 :]
    return s.short_message or s.tlvs.get(0x0424, b"")


def text_of(parts: list[Submitted]) -> str:
    data = b"".join(payload_of(p) for p in parts)
    if parts[0].data_coding == 8:
        return data.decode("utf-16-be")
    return gsm_decode(data)


_GSM = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
            0x3E: "]", 0x40: "|", 0x65: "€"}


def gsm_decode(data: bytes) -> str:
    out, esc = [], False
    for b in data:
        if esc:
            out.append(_GSM_EXT[b])
            esc = False
        elif b == 0x1B:
            esc = True
        else:
            out.append(_GSM[b])
    return "".join(out)


@dataclass
class Conn:
    writer: asyncio.StreamWriter
    system_id: str = ""
    bound: bool = False
    outstanding: int = 0
    submits: int = 0
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, cmd: int, status: int, seq: int, body: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(HDR.pack(16 + len(body), cmd, status, seq) + body)

    def deliver(self, body: bytes) -> int:
        seq = next(self.seq)
        self.send(0x00000005, 0, seq, body)
        return seq


class PySmsc:
    def __init__(self, *, system_id: str = "gw", password: str = "secret") -> None:
        self.system_id = system_id
        self.password = password
        self.server: asyncio.Server | None = None
        self.port = 0
        self.conns: list[Conn] = []
        self.submitted: list[Submitted] = []
        self.bind_attempts = 0
        self.binds_ok = 0
        self.max_outstanding = 0
        self.deliver_resps: list[tuple[int, int]] = []  # (seq, status), every connection
        self.generic_nacks: list[tuple[int, int]] = []  # (status, seq)
        self.enquire_links = 0
        self.responses: list[tuple[int, int, int]] = []  # other responses: (cmd, status, seq)
        self.unbinds = 0
        # knobs
        self.resp_delay_s = 0.0
        self.id_format: Callable[[int], str] = lambda n: f"{n:08X}"
        self.status_for: Callable[[Submitted], int] = lambda s: 0
        self.drop_after: int | None = None  # close the connection after N submits (no resp)
        self.answer_enquire_link = True
        self.auto_receipt: Callable[[Submitted], bytes | None] | None = None
        self._ids = itertools.count(0x1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self.events: asyncio.Queue[str] = asyncio.Queue()

    async def start(self, ssl: object = None) -> int:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=ssl  # type: ignore[arg-type]
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for c in self.conns:
            c.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    def bound_conns(self) -> list[Conn]:
        return [c for c in self.conns if c.bound and not c.writer.is_closing()]

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer)
        self.conns.append(conn)
        try:
            while True:
                head = await reader.readexactly(16)
                length, cmd, status, seq = HDR.unpack(head)
                body = await reader.readexactly(length - 16)
                self._handle(conn, cmd, status, seq, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            conn.bound = False
            writer.close()
            await self.events.put("closed")

    def _handle(self, conn: Conn, cmd: int, status: int, seq: int, body: bytes) -> None:
        if cmd in (0x1, 0x2, 0x9):
            self.bind_attempts += 1
            sid, pos = cstr(body, 0)
            pwd, pos = cstr(body, pos)
            if sid.decode() != self.system_id or pwd.decode() != self.password:
                conn.send(cmd | 0x80000000, 0x0E, seq, b"\x00")
                return
            conn.system_id = sid.decode()
            conn.bound = True
            self.binds_ok += 1
            conn.send(cmd | 0x80000000, 0, seq, b"smsc\x00")
            self.events.put_nowait("bound")
        elif cmd == 0x4:
            sub = parse_submit(body, conn.system_id)
            conn.submits += 1
            if self.drop_after is not None and conn.submits > self.drop_after:
                conn.writer.close()
                return
            conn.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, conn.outstanding)
            self.submitted.append(sub)
            if self.resp_delay_s:
                self._spawn(self._respond_later(conn, seq, sub))
            else:
                self._respond(conn, seq, sub)
        elif cmd == 0x15:
            self.enquire_links += 1
            if self.answer_enquire_link:
                conn.send(0x80000015, 0, seq)
        elif cmd == 0x6:
            self.unbinds += 1
            conn.send(0x80000006, 0, seq)
        elif cmd == 0x80000005:
            self.deliver_resps.append((seq, status))
            self.events.put_nowait("deliver_resp")
        elif cmd == 0x80000000:
            self.generic_nacks.append((status, seq))
            self.events.put_nowait("nack")
        elif cmd & 0x80000000:
            self.responses.append((cmd, status, seq))
        else:
            conn.send(0x80000000, 0x03, seq)

    async def _respond_later(self, conn: Conn, seq: int, sub: Submitted) -> None:
        await asyncio.sleep(self.resp_delay_s)
        self._respond(conn, seq, sub)

    def _respond(self, conn: Conn, seq: int, sub: Submitted) -> None:
        conn.outstanding -= 1
        status = self.status_for(sub)
        sub.status = status
        if status:
            conn.send(0x80000004, status, seq, b"\x00")
            return
        sub.message_id = self.id_format(next(self._ids))
        conn.send(0x80000004, 0, seq, sub.message_id.encode() + b"\x00")
        if self.auto_receipt is not None:
            body = self.auto_receipt(sub)
            if body is not None:
                conn.deliver(body)

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
        await wait_until(pred, timeout_s)


class Recorder:
    """A DeliveryHandler that records what it gets; ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.inbound: list[InboundMessage] = []
        self.fail = False

    async def on_receipts(self, receipts: list[Receipt]) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.receipts.extend(receipts)

    async def on_inbound(self, messages: list[InboundMessage]) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.inbound.extend(messages)


def carrier(name: str, port: int, **kw: object) -> CarrierConfig:
    base: dict[str, object] = {
        "name": name, "host": "127.0.0.1", "port": port, "system_id": "gw",
        "password": "secret", "tps": 100_000.0, "window": 50, "enquire_link_s": 5.0,
        "response_timeout_s": 2.0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
        "auth_retry_s": 0.5,
    }
    base.update(kw)
    return CarrierConfig(**base)  # type: ignore[arg-type]


def config(*carriers: CarrierConfig, **routing: object) -> Config:
    return Config(carrier=list(carriers), routing=RoutingConfig(**routing))  # type: ignore[arg-type]


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition (the things the tests wait for have no event of their own)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)
