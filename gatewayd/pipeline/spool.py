"""A durable local spool for receipts and MO accepted while Redis is unreachable.

Without it a receipt that arrives during a Redis outage is answered ESME_RX_T_APPN and
its fate is the SMSC's patience: one that retries 3 times a second apart gave up on 349
receipts in a 10 s outage, and their messages stayed `submitted` until the receipt
timeout (72 h) although delivered. With it the inbound handler, when Redis does not
answer, appends the chunk to ``<state_dir>/spool/inbound.log`` and fsyncs it, and only
then lets the bind answer ESME_ROK: acknowledged means on disk.

Format: frames of ``length (4) | crc32 (4) | JSON {"k": "r"|"m", "i": [items]}``, one a
handler call, appended in arrival order. ``inbound.pos`` holds how far the log has been
replayed (8 bytes, fsynced after each applied frame). Replay (the daemon's housekeeping,
once Redis answers, and at start) applies the frames in order through the handler's
normal path; chunks that arrive meanwhile are appended behind them, never applied ahead
(order kept); when the replay has caught up the files are emptied. A frame cut short by
a crash mid-write (kill -9, power loss) was never acknowledged: it and anything after it
are cut off when the spool is opened. After a crash mid-replay the frames past ``pos`` are
applied again: a receipt applied twice is counted as late and changes nothing; an MO may
appear twice in the MO stream (at most the one frame being applied). A frame that cannot
be applied for any reason but Redis being away (a bug, a corrupt record) is moved to
``inbound.bad`` with a log line, so it cannot block the spool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from gatewayd.model import InboundMessage, Receipt
from gatewayd.ops import metrics

log = logging.getLogger("gatewayd.spool")

Kind = Literal["r", "m"]
_HEAD: Final = struct.Struct(">II")
_POS: Final = struct.Struct(">Q")
_MAX_FRAME: Final = 64 * 1024 * 1024


class _Frame(msgspec.Struct):
    k: str
    i: list[Any]


_enc = msgspec.json.Encoder()
_dec_frame = msgspec.json.Decoder(_Frame)
_ITEM_TYPES: Final = {"r": Receipt, "m": InboundMessage}

Apply = Callable[[Kind, list[Any]], Awaitable[None]]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.log_path = directory / "inbound.log"
        self.pos_path = directory / "inbound.pos"
        self.bad_path = directory / "inbound.bad"
        self.lock = asyncio.Lock()
        self.size = 0  # bytes in the log
        self.pos = 0  # bytes of it applied
        self._pending = 0  # frames not yet applied (a gauge)

    @property
    def active(self) -> bool:
        """Frames wait for replay: new chunks must queue behind them."""
        return self.size > self.pos

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder; cut off a torn tail; read how far replay got."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            raw = self.pos_path.read_bytes()
            self.pos = _POS.unpack(raw)[0] if len(raw) == _POS.size else 0
        except FileNotFoundError:
            self.pos = 0
        good, frames = self._scan()
        with open(self.log_path, "ab") as f:
            if f.tell() != good:
                log.warning("spool: cutting %d bytes of a frame never acknowledged",
                            f.tell() - good)
                f.truncate(good)
                os.fsync(f.fileno())
        self.size = good
        if self.pos > good:
            self.pos = good
        self._pending = frames
        metrics.SPOOL_PENDING.set(frames)
        if self.active:
            log.warning("spool: %d bytes of receipts/MO from an earlier run wait for Redis",
                        self.size - self.pos)

    def _scan(self) -> tuple[int, int]:
        """The length of the log's valid prefix, and its frames past ``pos``."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        at, frames = 0, 0
        while at + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, at)
            end = at + _HEAD.size + length
            if length > _MAX_FRAME or end > len(data) or zlib.crc32(
                    data[at + _HEAD.size:end]) != crc:
                break
            if at >= self.pos:
                frames += 1
            at = end
        return at, frames

    # -- writing ---------------------------------------------------------------------------
    async def append(self, kind: Kind, items: list[Receipt] | list[InboundMessage]) -> None:
        """Write one frame and fsync it: when this returns, the items survive a crash."""
        body = _enc.encode(_Frame(kind, list(items)))
        frame = _HEAD.pack(len(body), zlib.crc32(body)) + body
        async with self.lock:
            await asyncio.to_thread(self._write, frame)
            self.size += len(frame)
            self._pending += 1
        metrics.SPOOLED.labels("receipt" if kind == "r" else "mo", "spooled").inc(len(items))
        metrics.SPOOL_PENDING.set(self._pending)

    def _write(self, frame: bytes) -> None:
        with open(self.log_path, "ab") as f:
            start = f.tell()
            try:
                f.write(frame)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.truncate(start)  # nothing half-written stays in front of later frames
                raise

    # -- replay ----------------------------------------------------------------------------
    async def replay(self, apply: Apply, is_outage: Callable[[BaseException], bool]) -> int:
        """Apply the frames past ``pos`` in order; returns how many. Stops (leaving the
        rest) at the first failure that ``is_outage`` says is Redis being away."""
        done = 0
        while True:
            frames = await asyncio.to_thread(self._read_from, self.pos, self.size)
            for end, kind, items, raw in frames:
                try:
                    await apply(kind, items)
                except Exception as e:
                    if is_outage(e):
                        return done
                    log.exception("spool: a frame cannot be applied; moved to %s",
                                  self.bad_path)
                    await asyncio.to_thread(self._keep_bad, raw)
                    metrics.SPOOLED.labels("receipt" if kind == "r" else "mo",
                                           "bad").inc(len(items))
                else:
                    metrics.SPOOLED.labels("receipt" if kind == "r" else "mo",
                                           "replayed").inc(len(items))
                await asyncio.to_thread(self._save_pos, end)
                self.pos = end
                self._pending = max(0, self._pending - 1)
                metrics.SPOOL_PENDING.set(self._pending)
                done += 1
            async with self.lock:
                if self.pos < self.size:
                    continue  # appended meanwhile: those too, in order
                if self.size:
                    await asyncio.to_thread(self._reset)
                    self.size = self.pos = 0
                    self._pending = 0
                    metrics.SPOOL_PENDING.set(0)
                return done

    def _read_from(self, start: int, stop: int) -> list[tuple[int, Kind, list[Any], bytes]]:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        out: list[tuple[int, Kind, list[Any], bytes]] = []
        at = 0
        while at + _HEAD.size <= len(data):
            length, _crc = _HEAD.unpack_from(data, at)
            end = at + _HEAD.size + length
            raw = data[at + _HEAD.size:end]
            try:
                frame = _dec_frame.decode(raw)
                kind: Kind = "m" if frame.k == "m" else "r"
                items = msgspec.convert(frame.i, list[_ITEM_TYPES[kind]])  # type: ignore[valid-type]
            except (msgspec.DecodeError, msgspec.ValidationError):
                kind, items = "r", []
                log.error("spool: an undecodable frame at %d; moved to %s", start + at,
                          self.bad_path)
                self._keep_bad(raw)
            out.append((start + end, kind, items, raw))
            at = end
        return out

    def _save_pos(self, pos: int) -> None:
        with open(self.pos_path, "wb") as f:
            f.write(_POS.pack(pos))
            f.flush()
            os.fsync(f.fileno())

    def _keep_bad(self, raw: bytes) -> None:
        with open(self.bad_path, "ab") as f:
            f.write(raw + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _reset(self) -> None:
        with open(self.log_path, "r+b") as f:
            f.truncate(0)
            os.fsync(f.fileno())
        self._save_pos(0)
