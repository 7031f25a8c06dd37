"""Short links: per-message codes, their records, and clicks.

A code is the base62 digits of a counter (``Keys.link_seq``, reserved in blocks with
INCRBY) followed by ``random_chars`` characters from ``secrets`` (URL-safe alphabet, 6
bits each). The counter makes codes unique without a look-up (two codes of the same
length have counters of the same length at the same place); the random part makes
them unguessable: for any counter value one suffix in 64**random_chars is valid
(7 characters: one in 4.4e12 a guess).

A link is one STRING (``Keys.link(code)``, kept ``links.ttl_s``) holding its fields
packed, separated by \x1f: target, message id, funnel key, variant, campaign,
template, the recipient as key names carry it (``Keys.recipient``: its digits, or in
privacy mode its token, so the record holds no number then), created, and in privacy
mode the masked number for the click event (one SET EX a link: the fan-out writes one
per recipient). Its first request makes ``Keys.link_counts(code)`` (same hash tag, same
TTL): ``clicks``, ``first`` (time of the first click) and ``previews``.

Link previews (a carrier's or a phone's scanner fetching the page to draw a card) are
told apart from people: a HEAD request, or a GET whose User-Agent matches one of
``links.preview_agents``. They are counted (``previews``) but are not clicks: no
``clicked`` event, no funnel click, no reset of the cooling-off streak.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio.client import Pipeline

from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

_B62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CODE_RE: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z_\-]{1,40}")

# Link-preview fetchers seen in the field (matched case-insensitively, as substrings).
DEFAULT_PREVIEW_AGENTS: Final = (
    "facebookexternalhit", "facebot", "twitterbot", "slackbot", "slack-imgproxy",
    "whatsapp", "telegrambot", "skypeuripreview", "linkedinbot", "discordbot",
    "googlebot", "bingbot", "bingpreview", "applebot", "yandexbot", "baiduspider",
    "bytespider", "petalbot", "google-pagerenderer", "embedly", "pinterest", "redditbot",
    "vkshare", "line-poker", "kakaotalk-scrap", "snapchat", "viber", "preview",
    "python-requests", "curl/", "wget/", "go-http-client", "okhttp",
)


_B62_PAIRS: Final = [a + b for a in _B62 for b in _B62]  # two digits a look-up


def b62(n: int) -> str:
    if n < 62:
        return _B62[n]
    out = []
    while n >= 3844:
        n, r = divmod(n, 3844)
        out.append(_B62_PAIRS[r])
    out.append(_B62_PAIRS[n] if n >= 62 else _B62[n])
    return "".join(reversed(out))


class LinkMaker:
    """Hands out codes from reserved counter blocks: ``await reserve(n)`` first, then
    ``take()`` n times (sync: the renderer calls it)."""

    def __init__(self, redis: Redis, keys: Keys, *, base_url: str, random_chars: int = 7,
                 block: int = 1000) -> None:
        self.redis = redis
        self.keys = keys
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.random_chars = random_chars
        self.block = block
        self._next = 0
        self._end = 0  # exclusive
        self._random = ""
        self._rpos = 0
        self._high = (-1, "")  # (seq // 3844, its b62): a block's codes share it

    @property
    def available(self) -> int:
        return self._end - self._next

    async def reserve(self, n: int) -> None:
        if self.available >= n:
            return
        size = max(n, self.block)
        end = int(await self.redis.incrby(self.keys.link_seq, size)) + 1
        self._next, self._end = end - size, end

    def take(self) -> str:
        if self._next >= self._end:
            raise RuntimeError("LinkMaker.take() without reserve()")
        seq = self._next
        self._next += 1
        k, i = self.random_chars, self._rpos
        if i + k > len(self._random):
            # 6 random bits a character: 3 bytes make 4 (one urandom call a few hundred)
            self._random, i = secrets.token_urlsafe(192 * k), 0
        self._rpos = i + k
        if seq < 3844:
            return b62(seq) + self._random[i:i + k]
        # b62(seq) is b62(seq // 3844) and two digits: the head made once in 3,844 codes.
        high, low = divmod(seq, 3844)
        if high != self._high[0]:
            self._high = (high, b62(high))
        return self._high[1] + _B62_PAIRS[low] + self._random[i:i + k]

    def url(self, code: str) -> str:
        return self.base_url + code

    def sample(self) -> str:
        """A short URL as long as the ones being made now (for length checks)."""
        return self.url(b62(max(self._next, 1_000_000)) + "x" * self.random_chars)


@dataclass(slots=True)
class NewLink:
    """A link to write with its message (intake), see ``write``."""

    code: str
    target: str


FIELDS: Final = ("u", "m", "f", "v", "c", "t", "d", "at", "to")


def link_fields(target: str, msg_id: str, funnel_key: str, variant: str, campaign: str,
                template: str, recipient: str, at: str, masked: str = "") -> dict[str, str]:
    """``recipient``: ``Keys.recipient(digits)``; ``masked``: the masked number, given
    only in privacy mode (else the event masks ``recipient``, the digits)."""
    out = {"u": target, "m": msg_id, "f": funnel_key, "v": variant, "c": campaign,
           "t": template, "d": recipient, "at": at}
    if masked:
        out["to"] = masked
    return out


def pack(fields: dict[str, str]) -> str:
    """The stored form (no field holds \x1f: URLs are checked for control characters);
    the last field only when set."""
    values = [fields.get(k, "") for k in FIELDS]
    if not values[-1]:
        values.pop()
    return "\x1f".join(values)


def unpack(value: str) -> dict[str, str]:
    return dict(zip(FIELDS, value.split("\x1f"), strict=False))


def write(pipe: Pipeline, keys: Keys, code: str, fields: dict[str, str], ttl_s: int) -> None:
    pipe.set(keys.link(code), pack(fields), ex=ttl_s)


async def read(redis: Redis, keys: Keys, code: str) -> dict[str, str] | None:
    """A link's fields and counts (None: unknown or expired)."""
    value = await redis.get(keys.link(code))
    if value is None:
        return None
    counts = await redis.hgetall(keys.link_counts(code))
    return {**unpack(str(value)), **{str(k): str(v) for k, v in counts.items()}}


class PreviewDetector:
    def __init__(self, agents: Iterable[str] = DEFAULT_PREVIEW_AGENTS) -> None:
        words = [re.escape(a.lower()) for a in agents if a.strip()]
        self._re = re.compile("|".join(words)) if words else None

    def is_preview(self, method: str, user_agent: str) -> bool:
        if method == "HEAD":
            return True
        if not user_agent:
            return True  # no browser sends none; scanners often do
        return bool(self._re is not None and self._re.search(user_agent.lower()))


@dataclass(slots=True)
class Click:
    """What click.lua answered for one request (target "" = unknown or expired code)."""

    code: str
    target: str
    preview: bool
    msg_id: str = ""
    funnel_key: str = ""
    variant: str = ""
    campaign: str = ""
    template: str = ""
    recipient: str = ""  # Keys.recipient: the digits, or in privacy mode a token
    masked: str = ""  # the masked number (privacy mode; else made from the digits)
    first: bool = False
    clicks: int = 0


def parse_click(code: str, preview: bool, reply: Any) -> Click:
    if not reply:
        return Click(code, "", preview)
    packed, first, clicks = reply
    u, m, f, v, c, t, d, _at, masked, *_rest = (*str(packed).split("\x1f"),
                                                *("",) * 9)
    return Click(code, u, preview, m, f, v, c, t, d, masked, int(first) == 1, int(clicks))
