"""Campaigns: what they are, how they are stored, and how recipients are uploaded.

A campaign is one HASH (``Keys.campaign(id)``, indexed in ``Keys.campaigns``): its
variants (template and weight each), tenant, status, schedule, pace, counters and
the fan-out cursor. Its lifecycle:

``draft`` (recipients may be uploaded, several times) -> ``scheduled`` (``start``
with a time) -> ``running`` (the fan-out queues recipients) -> ``done`` (every
recipient queued); ``pause`` / ``resume`` between running and ``paused``; ``cancel``
from any state but done (queued messages of a cancelled campaign are rejected at
dispatch, reason ``campaign_cancelled``).

Recipients come from an upload (JSON lines ``{"to": ..., "params": {...}, "ref": ...}``
or CSV with a header row naming ``to``, the variables and optionally ``ref``), read as
a stream and validated row by row against the variant's template (number, every
variable's type, the rendered text's SMS parts), so a bad row is reported with its
line and reason and skipped, never queued. Valid rows are appended to the campaign's
recipients stream (``Keys.campaign_recipients``) in chunks of ``CHUNK`` rows: memory
stays flat however large the upload. Or from a Redis stream of the app's own
(``source = "stream:<key>"``): one entry per recipient (``to``, ``params`` as JSON,
``ref``), until an entry with a field ``end``.

Each recipient gets its variant by a hash of the campaign id and the number (the same
recipient always gets the same copy) over the variants' weights.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any, Final, Literal, cast

import msgspec

from gatewayd.campaigns.templates import Compiled
from gatewayd.errors import MessageError
from gatewayd.smstext import segments
from gatewayd.store.connection import Redis, load_script
from gatewayd.store.keys import Keys

CampaignStatus = Literal["draft", "scheduled", "running", "paused", "done", "cancelled"]
ACTIVE: Final = ("scheduled", "running", "paused")
ID_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,40}")
VARIANT_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,16}")
NUMBER_RE: Final = re.compile(r"\+?[1-9][0-9]{5,14}")
CHUNK: Final = 1000  # recipients a stream entry
MAX_ERRORS: Final = 100  # row errors kept with the campaign


class Variant(msgspec.Struct, kw_only=True):
    name: str
    template: str
    weight: int = 1


class Campaign(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    variants: list[Variant]
    name: str = ""
    tenant: str = ""
    sender: str = ""  # SMPP source_addr for every message ("from")
    category: str = ""  # the templates' class (they must agree)
    source: str = "upload"  # or "stream:<redis key>"
    status: CampaignStatus = "draft"
    reason: str = ""  # why it was paused or cancelled
    start_at: float = 0.0  # scheduled start (Unix s); 0 = at start
    rate: float = 0.0  # recipients a second at most; 0 = as the backlog allows
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    rows: int = 0  # valid recipients uploaded
    invalid: int = 0  # rows refused (upload or fan-out)
    produced: int = 0  # recipients queued by the fan-out
    cursor: str = "0-0"  # last recipients-stream entry fully queued
    offset: int = 0  # rows of the entry after ``cursor`` already queued


_FLOAT = ("start_at", "rate", "created_at", "started_at", "finished_at")
_INT = ("rows", "invalid", "produced", "offset")
_KNOWN = frozenset(f.encode_name for f in msgspec.structs.fields(Campaign))


def full(obj: Any) -> Any:
    """Plain data with every field of every Struct (their defaults too: omit_defaults is
    for storage), for API answers and the CLI."""
    if isinstance(obj, msgspec.Struct):
        return {k: full(v) for k, v in msgspec.structs.asdict(obj).items()}
    if isinstance(obj, list):
        return [full(v) for v in obj]
    if isinstance(obj, dict):
        return {k: full(v) for k, v in obj.items()}
    return obj


def to_hash(c: Campaign) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in msgspec.structs.asdict(c).items():
        if k == "variants":
            out[k] = msgspec.json.encode(v).decode()
        else:
            out[k] = repr(v) if isinstance(v, float) else str(v)
    return out


def from_hash(raw: Mapping[str, str]) -> Campaign:
    data: dict[str, Any] = {k: v for k, v in raw.items() if k in _KNOWN}
    data["variants"] = msgspec.json.decode(raw.get("variants", "[]"))
    for k in _FLOAT:
        if k in data:
            data[k] = float(data[k] or 0)
    for k in _INT:
        if k in data:
            data[k] = int(data[k] or 0)
    return msgspec.convert(data, Campaign)


def validate(c: Campaign, templates: Mapping[str, Compiled | None]) -> str:
    """The campaign's category; ValueError naming the problem."""
    if not ID_RE.fullmatch(c.id):
        raise ValueError("id: 1-40 characters of A-Z a-z 0-9 _ -")
    if not c.variants:
        raise ValueError("variants: at least one (a template)")
    names: set[str] = set()
    category = ""
    for i, v in enumerate(c.variants):
        if not VARIANT_RE.fullmatch(v.name) or v.name in names:
            raise ValueError(f"variants[{i}].name: unique, 1-16 of A-Z a-z 0-9 _ -")
        names.add(v.name)
        if not 1 <= v.weight <= 1_000_000:
            raise ValueError(f"variants[{i}].weight: 1-1000000")
        t = templates.get(v.template)
        if t is None:
            raise ValueError(f"variants[{i}].template: unknown template {v.template!r}")
        if t.template.status != "approved":
            raise ValueError(f"variants[{i}].template: {v.template!r} is "
                             f"{t.template.status}, not approved")
        if category and t.template.category != category:
            raise ValueError("variants: every template must have the same category")
        category = t.template.category
    if len(c.tenant) > 64 or len(c.sender) > 20 or len(c.name) > 200:
        raise ValueError("tenant (64), sender (20) or name (200) too long")
    if c.rate < 0:
        raise ValueError("rate: recipients a second, >= 0 (0 = as fast as the queue allows)")
    if not (c.source == "upload" or (c.source.startswith("stream:") and len(c.source) > 7)):
        raise ValueError("source: \"upload\" or \"stream:<redis key>\"")
    return category


def variant_of(campaign_id: str, digits: str, weights: list[int]) -> int:
    """Index of the recipient's variant: deterministic per (campaign, number)."""
    if len(weights) == 1:
        return 0
    h = int.from_bytes(hashlib.blake2b(f"{campaign_id}:{digits}".encode(),
                                       digest_size=8).digest(), "big")
    x = h % sum(weights)
    for i, w in enumerate(weights):
        if x < w:
            return i
        x -= w
    return len(weights) - 1


async def get(redis: Redis, keys: Keys, campaign_id: str) -> Campaign | None:
    raw = cast(dict[str, str], await redis.hgetall(keys.campaign(campaign_id)))
    return from_hash(raw) if raw else None


async def create(redis: Redis, keys: Keys, c: Campaign,
                 templates: Mapping[str, Compiled | None], now: float | None = None) -> Campaign:
    """A new draft; ValueError when invalid, FileExistsError when the id is taken."""
    category = validate(c, templates)
    now = time.time() if now is None else now
    c = msgspec.structs.replace(c, category=category, status="draft", created_at=now,
                                rows=0, invalid=0, produced=0, cursor="0-0", offset=0)
    if not await redis.hsetnx(keys.campaign(c.id), "id", c.id):
        raise FileExistsError(c.id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.campaign(c.id), mapping=to_hash(c))  # type: ignore[arg-type]
        pipe.zadd(keys.campaigns, {c.id: now})
        await pipe.execute()
    return c


async def list_all(redis: Redis, keys: Keys, count: int = 100) -> list[Campaign]:
    ids = cast(list[str], await redis.zrevrange(keys.campaigns, 0, count - 1))
    out = []
    for i in ids:
        c = await get(redis, keys, i)
        if c is not None:
            out.append(c)
    return out


# Status changes: action -> (allowed from, to), checked and set in one script call.
_MOVES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "start": (("draft",), "scheduled"),
    "pause": (("scheduled", "running"), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("draft", "scheduled", "running", "paused"), "cancelled"),
    "finish": (("running",), "done"),
    "run": (("scheduled",), "running"),
}


async def change(redis: Redis, keys: Keys, campaign_id: str, action: str, *,
                 start_at: float = 0.0, reason: str = "", now: float | None = None
                 ) -> Campaign:
    """start / pause / resume / cancel (and the runner's run / finish). KeyError for an
    unknown id, ValueError when not allowed from its status (the message says why)."""
    now = time.time() if now is None else now
    if action not in _MOVES:
        raise ValueError(f"action: one of {', '.join(_MOVES)}")
    allowed, target = _MOVES[action]
    fields: list[str] = ["reason", reason]
    if action == "start":
        fields += ["start_at", repr(max(start_at, 0.0))]
    if action == "run":
        fields += ["started_at", repr(now)]
    if target in ("cancelled", "done"):
        fields += ["finished_at", repr(now)]
    ok, status = await load_script(redis, "campaign_move")(
        keys=[keys.campaign(campaign_id), keys.campaigns_active],
        args=[",".join(allowed), target, campaign_id, *fields])
    if not status:
        raise KeyError(campaign_id)
    if not int(ok):
        raise ValueError(f"campaign {campaign_id} is {status}; {action} needs "
                         f"{' or '.join(allowed)}")
    out = await get(redis, keys, campaign_id)
    assert out is not None
    return out


# Upload -------------------------------------------------------------------------------

class RowError(msgspec.Struct):
    line: int
    field: str
    reason: str


class UploadResult(msgspec.Struct):
    accepted: int
    rejected: int
    errors: list[RowError]  # the first MAX_ERRORS


def check_row(to: Any, params: Any, template: Compiled, link_sample: str,
              max_segments: int) -> str:
    """The number as given (validated); MessageError(field, reason) otherwise."""
    if not isinstance(to, str) or not NUMBER_RE.fullmatch(to):
        raise MessageError("to", "not an E.164 number (+ and 6-15 digits)")
    text, _ = template.render(params, (lambda _u: link_sample) if template.url_vars else None)
    parts = segments(text).parts
    if parts > max_segments:
        raise MessageError("params", f"the text needs {parts} SMS parts; the limit is "
                                     f"{max_segments}")
    return to if to.startswith("+") else "+" + to


async def _lines(body: AsyncIterable[bytes] | Iterable[bytes | str]) -> Any:
    """Decoded lines of a byte stream (or of strings), without holding it all."""
    if isinstance(body, AsyncIterable):
        buf = b""
        async for chunk in body:
            buf += chunk if isinstance(chunk, bytes) else chunk.encode()
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                yield ln.decode("utf-8", errors="replace")
        if buf:
            yield buf.decode("utf-8", errors="replace")
    else:
        for item in body:
            yield item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item


async def upload(redis: Redis, keys: Keys, c: Campaign, templates: Mapping[str, Compiled],
                 body: AsyncIterable[bytes] | Iterable[bytes | str], *,
                 fmt: Literal["jsonl", "csv"], link_sample: str, max_segments: int
                 ) -> UploadResult:
    """Validate and append recipients to a draft campaign (see the module docstring)."""
    weights = [v.weight for v in c.variants]
    compiled = [templates[v.template] for v in c.variants]
    rows: list[list[Any]] = []
    errors: list[RowError] = []
    accepted = rejected = 0
    seq = int(await redis.hincrby(keys.campaign(c.id), "seq", 0))
    header: list[str] | None = None
    line_no = 0

    async def flush() -> None:
        nonlocal rows
        if not rows:
            return
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.campaign_recipients(c.id),
                      {"n": str(len(rows)), "rows": msgspec.json.encode(rows).decode()})
            pipe.hincrby(keys.campaign(c.id), "rows", len(rows))
            pipe.hincrby(keys.campaign(c.id), "seq", len(rows))
            await pipe.execute()
        rows = []

    async for raw_line in _lines(body):
        line_no += 1
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        try:
            if fmt == "csv":
                cells = next(csv.reader(io.StringIO(line)))
                if header is None:
                    header = [h.strip() for h in cells]
                    if "to" not in header:
                        raise MessageError("to", "the CSV header row names no 'to' column")
                    continue
                if len(cells) != len(header):
                    raise MessageError("$", f"{len(cells)} cells; the header has {len(header)}")
                rec = dict(zip(header, cells, strict=True))
                to: Any = rec.pop("to")
                ref_any: Any = rec.pop("ref", "")
                params: Any = rec
            else:
                try:
                    obj = msgspec.json.decode(line)
                except msgspec.DecodeError as e:
                    raise MessageError("$", f"not JSON: {e}") from None
                if not isinstance(obj, dict):
                    raise MessageError("$", "each line is one JSON object")
                unknown = sorted(set(obj) - {"to", "params", "ref"})
                if unknown:
                    raise MessageError(unknown[0], "unknown field; use to, params, ref")
                to, params, ref_any = obj.get("to"), obj.get("params", {}), obj.get("ref", "")
            if not isinstance(ref_any, str) or len(ref_any) > 128:
                raise MessageError("ref", "a string of at most 128 characters")
            number = to if isinstance(to, str) else ""
            vi = variant_of(c.id, number.lstrip("+"), weights)
            number = check_row(to, params, compiled[vi], link_sample, max_segments)
        except MessageError as e:
            rejected += 1
            if len(errors) < MAX_ERRORS:
                errors.append(RowError(line_no, e.field, e.reason))
            continue
        seq += 1
        accepted += 1
        rows.append([seq, number, vi, params, ref_any])
        if len(rows) >= CHUNK:
            await flush()
    if fmt == "csv" and header is None and line_no:
        rejected += 1
        errors.append(RowError(1, "to", "no header row"))
    await flush()
    if rejected:
        await redis.hincrby(keys.campaign(c.id), "invalid", rejected)
        if errors:
            await redis.hset(keys.campaign(c.id), "errors",
                             msgspec.json.encode(errors[:MAX_ERRORS]).decode())
    return UploadResult(accepted, rejected, errors)


class StatusCache:
    """Campaign statuses for the dispatcher, re-read at most every ``ttl_s`` (a pause
    or cancel reaches every daemon within it)."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._by_id: dict[str, tuple[float, str]] = {}

    async def statuses(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = set(ids)  # read once: the dispatcher passes a generator
        now = time.monotonic()
        stale = sorted(i for i in wanted
                       if i not in self._by_id or now - self._by_id[i][0] >= self.ttl_s)
        if stale:
            if len(self._by_id) > 10_000:
                self._by_id.clear()
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in stale:
                    pipe.hget(self.keys.campaign(i), "status")
                for i, s in zip(stale, await pipe.execute(), strict=True):
                    self._by_id[i] = (now, s or "")
        return {i: self._by_id[i][1] for i in wanted}
