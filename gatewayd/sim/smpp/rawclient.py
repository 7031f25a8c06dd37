"""A bare-bones SMPP ESME over asyncio streams, for tests and smoke checks.

Deliberately independent of the simulator's own codec (sim/smpp/pdu.py): it packs and parses
with its own struct calls, so a test driving the simulator with it checks the wire
format rather than one piece of code against itself.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass, field
from typing import Final

_HDR: Final = struct.Struct(">IIII")

BIND_RX: Final = 0x01
BIND_TX: Final = 0x02
BIND_TRX: Final = 0x09
SUBMIT: Final = 0x04
DELIVER: Final = 0x05
UNBIND: Final = 0x06
ENQUIRE: Final = 0x15
NACK: Final = 0x80000000
R: Final = 0x80000000

_MODES: Final = {"receiver": BIND_RX, "transmitter": BIND_TX, "transceiver": BIND_TRX}


@dataclass
class Pdu:
    command_id: int
    status: int
    sequence: int
    body: bytes

    def cstring(self, index: int = 0) -> str:
        """The index-th NUL-terminated string of the body."""
        return self.body.split(b"\0")[index].decode("latin-1")


@dataclass
class Deliver:
    """A parsed deliver_sm (receipt or MO)."""

    sequence: int
    source: str
    destination: str
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_receipt(self) -> bool:
        return bool(self.esm_class & 0x04)


def parse_deliver(p: Pdu) -> Deliver:
    b = p.body
    i = b.index(b"\0") + 1 + 2  # service_type, source ton/npi
    j = b.index(b"\0", i)
    source = b[i:j].decode("latin-1")
    i = j + 1 + 2
    j = b.index(b"\0", i)
    destination = b[i:j].decode("latin-1")
    i = j + 1
    esm_class = b[i]
    i += 3
    i = b.index(b"\0", i) + 1  # schedule_delivery_time
    i = b.index(b"\0", i) + 1  # validity_period
    data_coding = b[i + 2]
    sm_len = b[i + 4]
    i += 5
    sm = b[i : i + sm_len]
    i += sm_len
    tlvs: dict[int, bytes] = {}
    while i + 4 <= len(b):
        tag, ln = struct.unpack_from(">HH", b, i)
        tlvs[tag] = b[i + 4 : i + 4 + ln]
        i += 4 + ln
    return Deliver(p.sequence, source, destination, esm_class, data_coding, sm, tlvs)


def submit_body(
    destination: str,
    short_message: bytes,
    *,
    source: str = "10690",
    registered_delivery: int = 1,
    data_coding: int = 0,
    esm_class: int = 0,
    tlvs: bytes = b"",
) -> bytes:
    return (
        b"\0" + bytes((5, 0)) + source.encode() + b"\0"
        + bytes((1, 1)) + destination.encode() + b"\0"
        + bytes((esm_class, 0, 0)) + b"\0\0"
        + bytes((registered_delivery, 0, data_coding, 0, len(short_message)))
        + short_message + tlvs
    )


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


class RawClient:
    """Send PDUs, read PDUs. With auto_ack, deliver_sm are answered on arrival
    (deliver_sm_resp ESME_ROK) and still handed to the reader."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_ack: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.auto_ack = auto_ack
        self.seq = 0
        self._buffer: list[Pdu] = []
        self._arrived = asyncio.Event()
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, auto_ack: bool = True
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        return cls(reader, writer, auto_ack)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def send_nowait(self, command_id: int, body: bytes = b"", *, seq: int | None = None,
                    status: int = 0) -> int:
        s = self.next_seq() if seq is None else seq
        self.writer.write(_HDR.pack(16 + len(body), command_id, status, s) + body)
        return s

    async def send(self, command_id: int, body: bytes = b"", *, seq: int | None = None,
                   status: int = 0) -> int:
        s = self.send_nowait(command_id, body, seq=seq, status=status)
        await self.writer.drain()
        return s

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next(self, *command_ids: int, timeout_s: float = 5.0) -> Pdu:
        """The first buffered/arriving PDU with one of command_ids (any when none given);
        PDUs of other kinds stay buffered for later calls."""
        async with asyncio.timeout(timeout_s):
            while True:
                for i, p in enumerate(self._buffer):
                    if not command_ids or p.command_id in command_ids:
                        return self._buffer.pop(i)
                if self.closed:
                    raise ConnectionError("connection closed by the SMSC")
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not self.closed:
                self._arrived.clear()
                await self._arrived.wait()

    async def bind(self, mode: str = "transceiver", system_id: str = "demo",
                   password: str = "demo") -> Pdu:
        cmd = _MODES[mode]
        body = (system_id.encode() + b"\0" + password.encode() + b"\0" + b"\0"
                + bytes((0x34, 0, 0)) + b"\0")
        seq = await self.send(cmd, body)
        resp = await self.next(cmd | R, NACK)
        assert resp.sequence == seq
        return resp

    async def submit(
        self, destination: str, short_message: bytes | str, *, source: str = "10690",
        registered_delivery: int = 1, data_coding: int = 0, esm_class: int = 0,
        tlvs: bytes = b"",
    ) -> int:
        data = short_message.encode() if isinstance(short_message, str) else short_message
        return await self.send(SUBMIT, submit_body(
            destination, data, source=source, registered_delivery=registered_delivery,
            data_coding=data_coding, esm_class=esm_class, tlvs=tlvs,
        ))

    async def delivers(self, n: int, timeout_s: float = 5.0) -> list[Deliver]:
        return [parse_deliver(await self.next(DELIVER, timeout_s=timeout_s)) for _ in range(n)]

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, ConnectionError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(16)
                length, cmd, status, seq = _HDR.unpack(head)
                body = await self.reader.readexactly(length - 16) if length > 16 else b""
                if cmd == DELIVER and self.auto_ack:
                    self.writer.write(_HDR.pack(17, DELIVER | R, 0, seq) + b"\0")
                self._buffer.append(Pdu(cmd, status, seq, body))
                self._arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed = True
            self._arrived.set()
