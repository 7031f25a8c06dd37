"""Validation of incoming messages: one set of rules for the stream, HTTP and CLI paths.

Stream entries arrive as flat string fields; HTTP items as JSON objects. Both go
through ``parse_message``, which either returns a clean OutboundMessage or raises
MessageError naming the field and the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from itertools import compress
from typing import Any, Final, Protocol, cast

import msgspec
from msgspec.structs import astuple

from gatewayd import smstext
from gatewayd.campaigns.links import LinkMaker, NewLink
from gatewayd.campaigns.registry import TemplateCache
from gatewayd.campaigns.templates import CODE_RE as TEMPLATE_CODE_RE
from gatewayd.campaigns.templates import MAX_URL_VARS, Compiled
from gatewayd.config import Config
from gatewayd.errors import MessageError
from gatewayd.model import OutboundMessage
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys
from gatewayd.store.seal import FIELD as SEAL_FIELD
from gatewayd.store.seal import Seal, SealError

_NUMBER_RE: Final = re.compile(r"\+?[1-9][0-9]{5,14}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_CALLBACK_RE = re.compile(r"https?://[^\s/?#@]+[^\s]*")
_FIELDS: Final = frozenset(
    f.encode_name for f in msgspec.structs.fields(OutboundMessage)
)
# Set by gatewayd only (retries, intake, template rendering, the campaign fan-out):
# they travel sealed in one field (gatewayd.store.seal), never bare; a client that sets
# one is refused (an enqueued_at of 1 expired an OTP at once; a made-up resume record
# skipped the policies).
INTERNAL: Final = frozenset({"attempts", "losses", "resume", "enqueued_at", "campaign",
                             "variant", "links", "intake"})
CLIENT_FIELDS: Final = (_FIELDS - INTERNAL) | {"params"}
CAMPAIGN_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,40}")
VARIANT_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,16}")
_TIME_FIELDS: Final = ("not_before", "expires_at", "enqueued_at")
MAX_TEXT_CHARS: Final = 2000
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class Templates(Protocol):
    """Compiled templates by code (campaigns.registry.TemplateCache, loaded first)."""

    def get(self, code: str) -> Compiled | None: ...


def render(data: dict[str, Any], templates: Templates | None,
           link: Callable[[str], str] | None) -> None:
    """``template`` + ``params`` -> ``text`` (in place). Only approved templates render;
    the values are validated by their types (campaigns.templates)."""
    code = data.get("template")
    params = data.pop("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError as e:
            raise MessageError("params", f"not valid JSON: {e}") from None
        except RecursionError:
            raise MessageError("params", "nested too deeply", code="json_depth") from None
    if not isinstance(code, str) or not code:
        raise MessageError("template", "params need a template code")
    if templates is None:
        raise MessageError("params", "templates are rendered at intake (HTTP API, client, "
                                     "CLI, campaigns); a raw stream entry carries the text")
    if "text" in data:
        raise MessageError("text", "give either text, or template and params")
    t = templates.get(code)
    if t is None:
        raise MessageError("template", f"unknown template {code!r}")
    if t.template.status != "approved":
        raise MessageError("template", f"template {code!r} is {t.template.status}, not "
                                       "approved: only approved templates send")
    category = data.get("category")
    if category and category != t.template.category:
        raise MessageError("category", f"template {code!r} is {t.template.category}")
    data["category"] = t.template.category
    if t.url_vars and link is None:
        raise MessageError("template", "this template has links and short links are not "
                                       "configured here ([links] base_url)")
    data["text"], targets = t.render(params, link)
    if targets:
        data["links"] = len(targets)


# Random hex from os.urandom, 4,096 ids' worth at a time (uuid4() read the kernel once
# an id: ~10 % of the client's CPU a message in bench/client_intake), cut into 12-digit
# slices in C (``bytes.hex`` with a separator, then ``split``) and handed out by a list
# iterator: ``next`` on it is one C call, atomic under the GIL, so threads sharing a
# client never get the same slice, without a lock a call (two threads refilling at once
# each take a fresh buffer: a slice is never handed out twice). Emptied in a forked
# child, which would otherwise hand out its parent's next ids.
_hex12: Iterator[str] = iter(())


def _refill() -> str:
    global _hex12
    it = _hex12 = iter(os.urandom(24576).hex(" ", 6).split())
    return next(it)


def _forget_ids() -> None:
    global _hex12
    _hex12 = iter(())


os.register_at_fork(after_in_child=_forget_ids)
# The id's head for the current millisecond, made once a millisecond (a tuple swapped
# whole: threads may share it).
_ms_head: tuple[int, str] = (-1, "")


def new_id() -> str:
    """Time-ordered, unique, URL-safe: sorts by creation like a stream id (48 random
    bits a millisecond)."""
    global _ms_head
    ms = time.time_ns() // 1_000_000
    head = _ms_head
    if head[0] != ms:
        head = _ms_head = (ms, f"{ms:x}-")
    try:
        return head[1] + next(_hex12)
    except StopIteration:
        return head[1] + _refill()


def _finite(field: str, t: float) -> float:
    # NaN/inf would compare false against every deadline: a message that never expires
    # and never becomes due. Reject it at the door instead.
    if not math.isfinite(t):
        raise MessageError(field, "must be a finite time (Unix seconds or ISO 8601)")
    return t


def _to_time(field: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return _finite(field, float(value))
        except OverflowError:  # an int of 400 digits
            raise MessageError(field, "must be a finite time (Unix seconds or ISO "
                                      "8601)") from None
    if isinstance(value, str):
        v = value.strip()
        if not v:
            return 0.0
        try:
            t = float(v)
        except ValueError:
            pass
        else:
            return _finite(field, t)
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise MessageError(field, "use Unix seconds or ISO 8601 with a UTC offset") from None
        if dt.tzinfo is None:
            raise MessageError(field, "ISO 8601 time needs a UTC offset (e.g. +08:00 or Z)")
        return dt.timestamp()
    raise MessageError(field, "use Unix seconds or ISO 8601 with a UTC offset")


def _lone_surrogate(data: dict[str, Any]) -> None:
    for k, v in data.items():
        if isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
            raise MessageError(k, "not valid Unicode text (a lone surrogate)",
                               code="encoding")


def parse_message(
    raw: Mapping[str, Any] | Any,
    *,
    classes: list[str],
    max_segments: int,
    now: float | None = None,
    templates: Templates | None = None,
    link: Callable[[str], str] | None = None,
    seal: Seal | None = None,
    horizon_s: float = 0.0,
    legacy: bool = False,
) -> OutboundMessage:
    """Validate one message; raise MessageError(field, reason) at the first problem.

    ``template`` + ``params`` render through ``templates``; ``link(url)`` gives a url
    variable's short URL (and remembers the link for the caller to write). Internal
    fields are taken only sealed (``_gw``, checked with ``seal``). ``horizon_s``: how
    far ahead ``not_before`` and ``expires_at`` may be (0: any time). ``legacy``: an
    entry queued before the seal existed (``queue.unsealed_before``), whose internal
    fields are taken bare when it has no seal."""
    if type(raw) is not dict and not isinstance(raw, Mapping):  # (an ABC check: dict first)
        raise MessageError("$", "expected an object with at least 'to' and 'text'")
    internal: dict[str, Any] | None = None
    owned = False  # raw is a dict made here (no copy needed before it is changed)
    if SEAL_FIELD in raw:
        if seal is None:
            raise MessageError(SEAL_FIELD, "sealed entries are read by gatewayd only",
                               code="seal")
        try:
            internal, raw = seal.open_fields(raw)
        except (SealError, TypeError) as e:
            raise MessageError(SEAL_FIELD, str(e), code="seal") from None
        if not isinstance(internal, dict) or not INTERNAL.issuperset(internal):
            raise MessageError(SEAL_FIELD, "holds fields that are not internal", code="seal")
        owned = True
    if "json" in raw:
        # The other wire form: one field holding the whole message as a JSON object
        # (flat fields beside it, such as the dispatcher's defaults, come second).
        try:
            decoded = json.loads(raw["json"])
        except (TypeError, ValueError) as e:
            raise MessageError("json", f"not valid JSON: {e}") from None
        except RecursionError:
            raise MessageError("json", "nested too deeply", code="json_depth") from None
        if not isinstance(decoded, Mapping):
            raise MessageError("json", "must hold a JSON object")
        raw = {**{k: v for k, v in raw.items() if k != "json"}, **decoded}
        owned = True
    if legacy and internal is None and not INTERNAL.isdisjoint(raw):
        internal = {k: v for k, v in raw.items() if k in INTERNAL}
        raw = {k: v for k, v in raw.items() if k not in INTERNAL}
    if not CLIENT_FIELDS.issuperset(raw):
        for k in sorted(k for k in raw if k in INTERNAL):
            raise MessageError(k, "set by gatewayd only, never by a client",
                               code="internal_field")
        unknown = sorted(k for k in raw if k not in CLIENT_FIELDS)
        raise MessageError(unknown[0], "unknown field; known fields: "
                                       f"{', '.join(sorted(CLIENT_FIELDS))}")
    data: dict[str, Any] = cast(dict[str, Any], raw) if owned else dict(raw)
    if internal:
        data.update(internal)
    if "params" in data:
        render(data, templates, link)
    for v in data.values():
        # JSON's \ud800 escapes decode to lone surrogates (here, or in params rendered
        # into the text), which no Redis write can encode: one such value failed its
        # whole batch's pipeline.
        if isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
            _lone_surrogate(data)
    for f in _TIME_FIELDS:
        if f in data:
            data[f] = _to_time(f, data[f])
    if horizon_s:
        limit = (time.time() if now is None else now) + horizon_s
        for f in ("not_before", "expires_at"):
            if f in data and data[f] > limit:
                raise MessageError(f, f"more than {horizon_s:.0f} s ahead (the limit is "
                                      "queue.schedule_horizon_s)")
    try:
        msg = msgspec.convert(data, OutboundMessage, strict=False)
    except msgspec.ValidationError as e:
        text = str(e)
        m = re.search(r"`\$\.([^`]*)`", text)
        if m:
            field = m.group(1)
        else:
            named = re.search(r"`(\w+)`", text)
            field = named.group(1) if named else "$"
        reason = re.sub(r" - at `[^`]*`", "", text)
        raise MessageError(field, reason) from None
    if not _NUMBER_RE.fullmatch(msg.to):
        raise MessageError("to", "not an E.164 number (+ and 6-15 digits, e.g. +8613800138000)")
    if not msg.text:
        raise MessageError("text", "empty")
    if len(msg.text) > MAX_TEXT_CHARS:
        raise MessageError("text", f"longer than {MAX_TEXT_CHARS} characters")
    parts = smstext.segments(msg.text).parts
    if parts > max_segments:
        raise MessageError("text", f"needs {parts} SMS parts; the limit is {max_segments}")
    if msg.category not in classes:
        raise MessageError("category", f"unknown class {msg.category!r}; one of {classes}")
    if msg.id and not _ID_RE.fullmatch(msg.id):
        raise MessageError("id", "1-64 characters of A-Z a-z 0-9 . _ : -")
    if len(msg.sender) > 20:
        raise MessageError("from", "at most 20 characters (SMPP source_addr)")
    if len(msg.idempotency_key) > 128:
        raise MessageError("idempotency_key", "at most 128 characters")
    if len(msg.ref) > 128 or len(msg.tenant) > 64:
        raise MessageError("ref" if len(msg.ref) > 128 else "tenant", "too long")
    if msg.callback_url and (len(msg.callback_url) > 512
                             or not _CALLBACK_RE.fullmatch(msg.callback_url)):
        raise MessageError("callback_url", "an http:// or https:// URL of at most 512 "
                           "characters, no spaces")
    if msg.attempts < 0 or msg.losses < 0:
        raise MessageError("attempts" if msg.attempts < 0 else "losses", "must not be negative")
    if msg.resume:
        try:
            Resume.decode(msg.resume)
        except ValueError as e:
            raise MessageError("resume", str(e)) from None
    if msg.template and not TEMPLATE_CODE_RE.fullmatch(msg.template):
        raise MessageError("template", "1-64 characters of A-Z a-z 0-9 . _ -")
    if msg.campaign and not CAMPAIGN_RE.fullmatch(msg.campaign):
        raise MessageError("campaign", "1-40 characters of A-Z a-z 0-9 _ -")
    if msg.variant and not VARIANT_RE.fullmatch(msg.variant):
        raise MessageError("variant", "1-16 characters of A-Z a-z 0-9 _ -")
    if not 0 <= msg.links <= 10:
        raise MessageError("links", "0-10")
    if not msg.id:
        msg.id = new_id()
    if not msg.enqueued_at:
        msg.enqueued_at = time.time() if now is None else now
    return msg


# The fields of a plain client item (no times, templates or internal fields): what
# ``parse_plain`` takes, all of them str.
PLAIN_FIELDS: Final = frozenset({"id", "to", "text", "category", "from", "tenant", "ref",
                                 "callback_url", "idempotency_key", "carrier"})
# A lone surrogate (refused) or a character outside the BMP (two UCS-2 units: the
# short-text rule below does not hold): such items take parse_message.
_NOT_PLAIN_TEXT: Final = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def parse_plain(raw: Any, classes: frozenset[str] | set[str] | list[str], max_segments: int,
                now: float) -> OutboundMessage | None:
    """``parse_message(raw, ...)`` for a plain item (a dict of str values of
    PLAIN_FIELDS), made without its general steps (the copy, the field loops, msgspec's
    conversion), or None: not plain, or refused. The caller then calls parse_message,
    which accepts or refuses it with its exact error (this only ever accepts what
    parse_message accepts, as it would: tests/test_parse_plain.py compares the two).
    ``classes``: a set for a look-up by hash."""
    if type(raw) is not dict or not PLAIN_FIELDS.issuperset(raw):
        return None
    try:
        joined = "".join(raw.values())  # (and a TypeError when a value is not a str)
    except TypeError:
        return None
    if not joined.isascii() and _NOT_PLAIN_TEXT.search(joined):
        return None
    get = raw.get
    to = get("to")
    text = get("text")
    if to is None or text is None or not text or not _NUMBER_RE.fullmatch(to):
        return None
    # No character outside the BMP (above): in UCS-2 a text of n characters takes one
    # part up to 70 and ceil(n / 67) beyond, and in GSM-7 (two septets at most a
    # character, an escape never split from its character) no more; the exact count
    # only when that bound is past the limit.
    n = len(text)
    bound = 1 if n <= 70 else (n + 66) // 67
    if bound > max_segments and (n > MAX_TEXT_CHARS or max_segments < 1
                                 or smstext.segments(text).parts > max_segments):
        return None
    if n > MAX_TEXT_CHARS:
        return None
    category = get("category", "transactional")
    if category not in classes:
        return None
    msg_id = get("id", "")
    if msg_id and not _ID_RE.fullmatch(msg_id):
        return None
    sender = get("from", "")
    tenant = get("tenant", "")
    ref = get("ref", "")
    callback_url = get("callback_url", "")
    idempotency_key = get("idempotency_key", "")
    if (len(sender) > 20 or len(idempotency_key) > 128 or len(ref) > 128
            or len(tenant) > 64):
        return None
    if callback_url and (len(callback_url) > 512
                         or not _CALLBACK_RE.fullmatch(callback_url)):
        return None
    return OutboundMessage(id=msg_id or new_id(), to=to, text=text, category=category,
                           sender=sender, tenant=tenant, ref=ref, callback_url=callback_url,
                           idempotency_key=idempotency_key, carrier=get("carrier", ""),
                           enqueued_at=now)


class Resume(msgspec.Struct, frozen=True):
    """Where a partly accepted long message stands (the ``resume`` field, JSON): its
    carrier, concatenation reference and accepted parts (part index -> SMSC id). Its
    retry goes to that carrier with that reference and sends only the other parts."""

    c: str
    r: int
    p: dict[int, str]

    def encode(self) -> str:
        return _resume_enc.encode(self).decode()

    @staticmethod
    def decode(raw: str) -> Resume:
        try:
            res = _resume_dec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ValueError(f"not a resume record: {e}") from None
        if not 0 <= res.r <= 0xFFFF or not res.p or any(
                not 0 <= k < smstext.MAX_PARTS for k in res.p):
            raise ValueError("not a resume record: reference or part out of range")
        return res


_resume_enc = msgspec.json.Encoder()
_resume_dec = msgspec.json.Decoder(Resume)


_WIRE: Final = tuple((name, "from" if name == "sender" else name, name in INTERNAL)
                     for name in OutboundMessage.__struct_fields__)


def to_fields(msg: OutboundMessage, seal: Seal | None = None) -> dict[str, str]:
    """Flat stream fields for XADD (defaults omitted): the client fields, and with
    ``seal`` the internal ones sealed in ``_gw`` (without, they are left out: what a
    client may XADD itself)."""
    out: dict[str, str] = {}
    internal: dict[str, Any] = {}
    # Per field: attribute, wire name, internal (made once: this runs for every
    # message queued; asdict() and a comparison with three defaults cost twice as much).
    for name, field, inside in _WIRE:
        value = getattr(msg, name)
        if not value:  # the defaults: "", 0, 0.0 (every field is a str, int or float)
            continue
        if inside:
            internal[name] = value
        elif type(value) is str:
            out[field] = value
        else:
            out[field] = repr(value) if isinstance(value, float) else str(value)
    if internal and seal is not None:
        out[SEAL_FIELD] = seal.seal(out, internal)
    return out


def to_flat(msg: OutboundMessage, seal: Seal | None = None) -> list[str]:
    """``to_fields`` as [field, value, ...], the same fields in the same order with the
    same values and seal: what lua/enqueue_many.lua passes to XADD as it is (a dict
    flattened afterwards cost the client ~5 % of its instructions a message)."""
    out: list[str] = []
    internal: dict[str, Any] = {}
    # The set fields only, picked in C (compress: the values' truth, as ``not value``
    # in to_fields): a loop over all ~20 fields with a getattr each was ~half of this.
    values = astuple(msg)
    for (name, field, inside), value in zip(compress(_WIRE, values),
                                            compress(values, values), strict=True):
        if inside:
            internal[name] = value
        elif type(value) is str:
            out += (field, value)
        else:
            out += (field, repr(value) if isinstance(value, float) else str(value))
    if internal and seal is not None:
        out += (SEAL_FIELD, seal.seal_flat(out, internal))
    return out


class TemplateIntake:
    """Templates and short links for one intake path (HTTP API, client, CLI): load the
    templates a batch names and reserve its link codes (``prepare``, async), then parse
    item by item; each parsed message comes with the links to write beside it."""

    def __init__(self, redis: Redis, keys: Keys, cfg: Config) -> None:
        self.templates = TemplateCache(redis, keys)
        lk = cfg.links
        self.links = (LinkMaker(redis, keys, base_url=lk.base_url,
                                random_chars=lk.random_chars)
                      if lk.enabled and lk.base_url else None)
        self.link_ttl_s = int(lk.ttl_s)
        q = cfg.queue
        self.classes, self.max_segments = list(q.classes), q.max_segments
        self.class_set = frozenset(self.classes)
        self.horizon_s = q.horizon_s

    @staticmethod
    def needs_prepare(items: list[Any]) -> bool:
        """Whether ``prepare`` has work (an item with params): the HTTP path skips the
        await a request otherwise (dict first: isinstance(Mapping) is an ABC check)."""
        return any((type(i) is dict or isinstance(i, Mapping)) and "params" in i
                   for i in items)

    async def prepare(self, items: list[Any]) -> None:
        codes = [str(i.get("template", "")) for i in items
                 if isinstance(i, Mapping) and "params" in i]
        if codes:
            await self.templates.load(codes)
            if self.links is not None:
                await self.links.reserve(MAX_URL_VARS * len(codes))

    def parse(self, item: Any, now: float) -> tuple[OutboundMessage, list[NewLink]]:
        msg = parse_plain(item, self.class_set, self.max_segments, now)
        if msg is not None:  # a plain item (the usual one): no template, no links
            return msg, []
        pending: list[NewLink] = []
        maker = self.links

        def link(url: str) -> str:
            assert maker is not None
            code = maker.take()
            pending.append(NewLink(code, url))
            return maker.url(code)

        msg = parse_message(item, classes=self.classes, max_segments=self.max_segments,
                            now=now, templates=self.templates,
                            link=link if maker is not None else None,
                            horizon_s=self.horizon_s)
        return msg, pending
