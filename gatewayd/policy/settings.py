"""The policy file (policies/policy.toml): schema, built-in defaults and loading.

Loading is total: the whole file and every file it names (keyword lists, opt-out
words) are read, parsed and validated into new objects, or a ConfigError is raised
naming the file, the line and key, and what to do. Nothing is applied half-way, so a
reload that fails leaves the running policy untouched.

Per-category settings start from built-in defaults for the well-known classes
(``otp``, ``transactional``, ``marketing``; any other class starts from the
transactional defaults) and the file overrides key by key, so ``[category.marketing]``
with only ``send_window = "09:00-20:00"`` keeps every other marketing default.
Relative paths in the file resolve against the file's own folder.
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from gatewayd.errors import ConfigError
from gatewayd.policy import pinyin
from gatewayd.policy import replies as replies_mod
from gatewayd.policy.normalize import for_matching, reply_word
from gatewayd.policy.replies import ReplyRules

Scope = Literal["global", "signature", "sender"]


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class Cap(_Strict, frozen=True):
    limit: int  # at most this many messages ...
    window_s: float  # ... in any sliding window of this many seconds


class CategorySettings(_Strict, frozen=True):
    # Where the 【signature】 must be: "either" end, "start", "end", or "off" (not checked).
    signature: Literal["either", "start", "end", "off"] = "either"
    max_segments: int = 5
    forbidden_chars: str | None = None  # None: [content].forbidden_chars
    # Opt-out hint: "off"; "append" [content].append_hint when missing; "reject" when missing.
    optout_hint: Literal["off", "append", "reject"] = "off"
    suppress_optout: bool = False  # reject messages to opted-out numbers
    send_window: str = ""  # "08:00-21:00" recipient-local; "" = any time
    spread_s: float = 1800.0  # deferrals to the window's opening spread over this
    caps: list[Cap] = msgspec.field(default_factory=list)
    cap_scope: Literal["recipient", "signature", "sender"] = "recipient"
    on_cap: Literal["reject", "defer"] = "reject"
    duplicate_window_s: float = 30.0  # same text to the same number; 0 = off


class ContentSettings(_Strict, frozen=True):
    forbidden_chars: str = "★▲"
    optout_hints: list[str] = msgspec.field(
        default_factory=lambda: ["回TD退订", "拒收请回复R", "回T退订", "退订回T", "回N退订"]
    )
    append_hint: str = " 回TD退订"
    udh_ref_bits: Literal[8, 16] = 8  # how carriers split long texts (segment counting)


class OptoutSettings(_Strict, frozen=True):
    scope: Scope = "global"  # how the optout check matches: see gatewayd.policy.optout
    words_file: str = ""
    words: list[str] = msgspec.field(default_factory=list)
    # How MO replies are read (gatewayd.policy.replies); None = the built-in list.
    optin_words: list[str] | None = None
    fillers: list[str] | None = None
    phrases: list[str] | None = None
    phrase_exceptions: list[str] | None = None
    negations: list[str] | None = None
    negation_exceptions: list[str] | None = None
    max_reply_chars: int = 40
    negation_gap: int = 2
    # Categories a recipient may opt out of one by one (API/CLI "category"); None = every
    # class except "otp" (a code the recipient just asked for must arrive).
    categories: list[str] | None = None
    # Consent records (every opt-out and opt-in, with its source) are kept this long.
    consent_retention_days: int = 730


class TimezoneSettings(_Strict, frozen=True):
    default: str | list[str] = "Asia/Shanghai"
    # Values are a zone name or a list of them; checked entry by entry (error messages
    # then name the prefix).
    prefixes: dict[str, Any] = msgspec.field(default_factory=dict)


class KeywordListSettings(_Strict, frozen=True):
    name: str
    file: str
    action: Literal["block", "review"] = "block"
    categories: list[str] = msgspec.field(default_factory=list)  # empty: every category
    # Allowed phrases: a hit lying wholly inside one of these is not a hit (any term of
    # the list); per-term exceptions are written in the file: "term ! exception ! ...".
    exceptions: list[str] = msgspec.field(default_factory=list)
    exceptions_file: str = ""
    # Also match each Chinese term spelled in toneless pinyin ("赌博" -> "dubo"), when
    # the spelling has at least pinyin_min_letters letters. Off: short pinyin collides.
    pinyin: bool = False
    pinyin_min_letters: int = 4


class TenantRate(_Strict, frozen=True):
    rate: float  # messages a second
    burst: float = 0.0  # bucket size; 0 = max(1, rate)


class CoolingSettings(_Strict, frozen=True):
    """Cooling-off (gatewayd.policy.cooling): a number that ignored ``after`` marketing
    messages with links in a row gets none for ``days`` days after the last of them."""

    enabled: bool = False
    after: int = 3  # K unclicked messages with links in a row
    days: float = 7.0  # D
    action: Literal["defer", "reject"] = "defer"
    categories: list[str] = msgspec.field(default_factory=lambda: ["marketing"])


class PolicyFile(_Strict, frozen=True):
    content: ContentSettings = msgspec.field(default_factory=ContentSettings)
    optout: OptoutSettings = msgspec.field(default_factory=OptoutSettings)
    timezones: TimezoneSettings = msgspec.field(default_factory=TimezoneSettings)
    category: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    keywords: list[KeywordListSettings] = msgspec.field(default_factory=list)
    tenants: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    cooling: CoolingSettings = msgspec.field(default_factory=CoolingSettings)


# Built-in defaults --------------------------------------------------------------------

# Field practice (shared/DOMAIN.md): codes 1/min, 5/h, 10/day per number; marketing at
# most once a day and 3 a week, 08:00-21:00 local, with an opt-out hint.
CATEGORY_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "otp": {
        "max_segments": 2,
        "caps": [{"limit": 1, "window_s": 60}, {"limit": 5, "window_s": 3600},
                 {"limit": 10, "window_s": 86400}],
        "on_cap": "reject",
    },
    "transactional": {
        "max_segments": 5,
        "caps": [{"limit": 30, "window_s": 3600}, {"limit": 100, "window_s": 86400}],
        "on_cap": "defer",
    },
    "marketing": {
        "max_segments": 5,
        "optout_hint": "append",
        "suppress_optout": True,
        "send_window": "08:00-21:00",
        "caps": [{"limit": 1, "window_s": 86400}, {"limit": 3, "window_s": 604800}],
        "on_cap": "defer",
    },
}

DEFAULT_OPTOUT_WORDS: Final = (
    "TD", "T", "N", "R", "退订", "取消", "退订TD", "STOP", "UNSUBSCRIBE", "END", "QUIT",
    "STOPALL", "REVOKE", "OPTOUT", "CANCEL",
)

# Country code (or longer prefix) -> zones. A prefix whose country spans several zones
# lists the ones that matter: a window is open only when it is open in every listed
# zone (conservative: nobody is woken up). Longest prefix wins, so operators can refine
# by area code, e.g. "1808" = "Pacific/Honolulu".
DEFAULT_ZONES: Final[dict[str, str | list[str]]] = {
    "86": "Asia/Shanghai", "852": "Asia/Hong_Kong", "853": "Asia/Macau",
    "886": "Asia/Taipei", "81": "Asia/Tokyo", "82": "Asia/Seoul", "65": "Asia/Singapore",
    "60": "Asia/Kuala_Lumpur", "66": "Asia/Bangkok", "84": "Asia/Ho_Chi_Minh",
    "63": "Asia/Manila", "62": ["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"],
    "91": "Asia/Kolkata", "971": "Asia/Dubai", "44": "Europe/London",
    "49": "Europe/Berlin", "33": "Europe/Paris", "34": "Europe/Madrid", "39": "Europe/Rome",
    "31": "Europe/Amsterdam", "7": "Europe/Moscow",
    "1": ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"],
    "1808": "Pacific/Honolulu", "1907": "America/Anchorage",
    "61": ["Australia/Sydney", "Australia/Perth"], "64": "Pacific/Auckland",
    "55": "America/Sao_Paulo", "52": "America/Mexico_City",
}

_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,32}")
_WINDOW_RE: Final = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


# Loaded form ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeywordList:
    name: str
    action: Literal["block", "review"]
    categories: frozenset[str]  # empty: every category
    terms: tuple[str, ...]  # as written in the file (reasons quote these)
    source: str
    # Per term (aligned with terms): its own exceptions; then the list-wide ones.
    term_exceptions: tuple[tuple[str, ...], ...] = ()
    exceptions: tuple[str, ...] = ()
    pinyin: bool = False
    pinyin_min_letters: int = 4

    def exceptions_of(self, index: int) -> tuple[str, ...]:
        own = self.term_exceptions[index] if self.term_exceptions else ()
        return own + self.exceptions


@dataclass(frozen=True, slots=True)
class SendWindow:
    start_min: int  # minutes after local midnight, inclusive
    end_min: int  # exclusive; may be <= start_min for a window across midnight

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-" \
               f"{self.end_min // 60:02d}:{self.end_min % 60:02d}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the engine needs, validated; built by ``load_policy``."""

    source: str
    classes: tuple[str, ...]
    content: ContentSettings
    categories: dict[str, CategorySettings]
    windows: dict[str, SendWindow | None]
    keyword_lists: tuple[KeywordList, ...]
    optout_scope: Scope
    optout_words: frozenset[str]  # normalised (letters and digits), for reports
    replies: ReplyRules
    optout_categories: frozenset[str]  # recipients may opt out of these one by one
    consent_retention_s: float
    default_zones: tuple[zoneinfo.ZoneInfo, ...]
    zones: dict[str, tuple[zoneinfo.ZoneInfo, ...]]
    tenants: dict[str, tuple[float, float]] = field(default_factory=dict)  # rate, burst
    cooling: CoolingSettings = field(default_factory=CoolingSettings)


def parse_window(value: str) -> SendWindow | None:
    """"08:00-21:00" -> SendWindow; "" or a 24-hour window -> None (any time)."""
    if not value.strip():
        return None
    m = _WINDOW_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r}: use \"HH:MM-HH:MM\", e.g. \"08:00-21:00\", or \"\"")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"{value!r}: not a time of day")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if (start, end) == (0, 1440):
        return None
    if start == end % 1440:
        raise ValueError(f"{value!r}: empty window; use \"\" to allow any time")
    return SendWindow(start, end % 1440)


# Locating a key in the file, for error messages ----------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_HEADER_RE: Final = re.compile(rf"^\s*(\[\[?)\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]")
_ASSIGN_RE: Final = re.compile(rf"^\s*({_KEY_PART})\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(_KEY_PART, dotted)]


def locate(text: str, path: list[str | int]) -> int | None:
    """1-based line of the key at ``path`` (e.g. ["category", "otp", "caps", 0]), best effort."""
    names = [p for p in path if isinstance(p, str)]
    best: tuple[int, int] | None = None  # (matched path length, line)
    counts: dict[str, int] = {}
    table: list[str | int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        h = _HEADER_RE.match(line)
        if h:
            parts: list[str | int] = list(_parts(h.group(2)))
            if h.group(1) == "[[":
                joined = ".".join(str(p) for p in parts)
                idx = counts.get(joined, 0)
                counts[joined] = idx + 1
                parts.append(idx)
            table = parts
            if path[: len(table)] == table and (best is None or len(table) > best[0]):
                best = (len(table), lineno)
            continue
        a = _ASSIGN_RE.match(line)
        if a and path[: len(table)] == table:
            key = a.group(1).strip("\"'")
            full = [*table, key]
            if path[: len(full)] == full and (best is None or len(full) > best[0]):
                best = (len(full), lineno)
    if best is None and names:
        return None
    return best[1] if best else None


class _Errors:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def at(self, path: list[str | int], what: str) -> ConfigError:
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        line = locate(self.text, path) if self.text else None
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {key or '(top level)'}: {what}")


def _msgspec_path(message: str) -> list[str | int]:
    m = re.search(r"`\$([^`]*)`", message)
    if not m:
        return []
    out: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", m.group(1)):
        out.append(int(index) if index else name)
    return out


def _convert(value: Any, typ: Any, errs: _Errors, base: list[str | int]) -> Any:
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as e:
        msg = str(e)
        path = base + _msgspec_path(msg)
        unknown = re.search(r"unknown field `([^`]*)`", msg)
        missing = re.search(r"missing required field `([^`]*)`", msg)
        if unknown:
            raise errs.at([*path, unknown.group(1)],
                          "unknown key (typo?); see policies/README.md") from e
        if missing:
            raise errs.at([*path, missing.group(1)], "required key is missing; add it") from e
        detail = re.sub(r"\s*-\s*at\s*`[^`]*`", "", msg).strip()
        raise errs.at(path, detail) from e


def _read_list(path: Path, errs: _Errors, key: list[str | int]) -> list[tuple[int, str]]:
    """Lines of a word/term file: one a line, UTF-8, '#' comments and blanks ignored."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise errs.at(key, f"cannot read {path}: {e.strerror}; fix the path "
                           "(relative paths resolve against the policy file's folder)") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start}); save it as UTF-8") from e
    out: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((lineno, s))
    return out


def _zones(value: Any, errs: _Errors, key: list[str | int]) -> tuple[zoneinfo.ZoneInfo, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise errs.at(key, "use a zone name or a list of them, e.g. \"Asia/Shanghai\"")
    if not names:
        raise errs.at(key, "needs at least one zone name, e.g. \"Asia/Shanghai\"")
    out = []
    for name in names:
        try:
            out.append(zoneinfo.ZoneInfo(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise errs.at(key, f"unknown time zone {name!r}; use an IANA name such as "
                               "\"Asia/Shanghai\" (if none is found, install the tzdata "
                               "package)") from e
    return tuple(out)


def load_policy(path: str | Path | None, classes: list[str]) -> Policy:
    """Read, validate and resolve a policy file; None or "" = built-in defaults only."""
    if path:
        p = Path(path)
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"{p}: cannot read policy file: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 (byte {e.start}); save it as UTF-8") from e
        source, base_dir = str(p), p.resolve().parent
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            line = re.search(r"line (\d+)", str(e))
            where = f"{p}:{line.group(1)}" if line else str(p)
            raise ConfigError(f"{where}: not valid TOML: {e}") from e
    else:
        text, source, base_dir, raw = "", "<built-in policy>", Path.cwd(), {}
    errs = _Errors(source, text)
    pf: PolicyFile = _convert(raw, PolicyFile, errs, [])
    return _resolve(pf, classes, errs, base_dir)


def _resolve(pf: PolicyFile, classes: list[str], errs: _Errors, base_dir: Path) -> Policy:
    known = set(classes)
    categories: dict[str, CategorySettings] = {}
    windows: dict[str, SendWindow | None] = {}
    for name in pf.category:
        if name not in known:
            raise errs.at(["category", name],
                          f"not a queue class; classes are {sorted(known)} (queue.classes)")
    for name in classes:
        merged = dict(CATEGORY_DEFAULTS.get(name, CATEGORY_DEFAULTS["transactional"]))
        merged.update(pf.category.get(name, {}))
        base: list[str | int] = ["category", name]
        cs: CategorySettings = _convert(merged, CategorySettings, errs, base)
        if not 1 <= cs.max_segments <= 255:
            raise errs.at([*base, "max_segments"], "must be 1-255")
        if cs.spread_s < 0:
            raise errs.at([*base, "spread_s"], "must be >= 0")
        if cs.duplicate_window_s < 0:
            raise errs.at([*base, "duplicate_window_s"], "must be >= 0 (0 = off)")
        if len(cs.caps) > 8:
            raise errs.at([*base, "caps"], "at most 8 windows")
        for i, cap in enumerate(cs.caps):
            if cap.limit < 1:
                raise errs.at([*base, "caps", i], "limit must be at least 1")
            if cap.window_s <= 0:
                raise errs.at([*base, "caps", i], "window_s must be greater than 0")
        try:
            windows[name] = parse_window(cs.send_window)
        except ValueError as e:
            raise errs.at([*base, "send_window"], str(e)) from e
        categories[name] = cs

    if not pf.content.append_hint.strip():
        for name, cs in categories.items():
            if cs.optout_hint == "append":
                raise errs.at(["content", "append_hint"],
                              f"empty, but category {name} appends it; set a hint text")
    for i, hint in enumerate(pf.content.optout_hints):
        if not for_matching(hint):
            raise errs.at(["content", "optout_hints", i], "has no letters or digits")
    if any(cs.optout_hint != "off" for cs in categories.values()):
        if not pf.content.optout_hints:
            raise errs.at(["content", "optout_hints"], "empty, but a category checks hints")
        appended = for_matching(pf.content.append_hint)
        if not any(for_matching(h) in appended for h in pf.content.optout_hints):
            raise errs.at(["content", "append_hint"],
                          "must contain one of content.optout_hints, or it would be "
                          "appended again on every retry")

    lists: list[KeywordList] = []
    seen: set[str] = set()
    for i, kl in enumerate(pf.keywords):
        key: list[str | int] = ["keywords", i]
        if not _NAME_RE.fullmatch(kl.name):
            raise errs.at([*key, "name"], f"{kl.name!r}: use 1-32 characters of a-z 0-9 _ -")
        if kl.name in seen:
            raise errs.at([*key, "name"], f"list {kl.name!r} is defined twice")
        seen.add(kl.name)
        for c in kl.categories:
            if c not in known:
                raise errs.at([*key, "categories"], f"{c!r} is not a queue class")
        lists.append(_keyword_list(kl, errs, key, base_dir))

    words = list(DEFAULT_OPTOUT_WORDS) if not (pf.optout.words or pf.optout.words_file) else []
    words += pf.optout.words
    if pf.optout.words_file:
        fpath = _path(base_dir, pf.optout.words_file)
        for lineno, w in _read_list(fpath, errs, ["optout", "words_file"]):
            if not reply_word(w):
                raise ConfigError(f"{fpath}:{lineno}: {w!r} is empty once normalised")
            words.append(w)
    for i, w in enumerate(pf.optout.words):
        if not reply_word(w):
            raise errs.at(["optout", "words", i], "empty once normalised")
    replies = _reply_rules(pf.optout, words, errs)
    pref = pf.optout.categories
    if pref is None:
        pref = [c for c in classes if c != "otp"]
    for i, c in enumerate(pref):
        if c not in known:
            raise errs.at(["optout", "categories", i], f"{c!r} is not a queue class; "
                          f"classes are {sorted(known)} (queue.classes)")
    if not 1 <= pf.optout.consent_retention_days <= 36_500:
        raise errs.at(["optout", "consent_retention_days"],
                      "must be 1-36500 days (consent records are usually kept >= 730)")

    default_zones = _zones(pf.timezones.default, errs, ["timezones", "default"])
    table = dict(DEFAULT_ZONES)
    table.update(pf.timezones.prefixes)
    zones: dict[str, tuple[zoneinfo.ZoneInfo, ...]] = {}
    for prefix, value in table.items():
        if not re.fullmatch(r"\d{1,6}", prefix):
            raise errs.at(["timezones", "prefixes", prefix],
                          "prefixes are 1-6 digits without '+', e.g. \"86\"")
        zones[prefix] = _zones(value, errs, ["timezones", "prefixes", prefix])

    tenants: dict[str, tuple[float, float]] = {}
    for name, raw_rate in pf.tenants.items():
        key = ["tenants", name]
        tr: TenantRate = _convert(raw_rate, TenantRate, errs, key)
        if not tr.rate > 0:
            raise errs.at([*key, "rate"], "must be greater than 0 (messages a second)")
        burst = tr.burst or max(1.0, tr.rate)
        if burst < 1:
            raise errs.at([*key, "burst"], "must be at least 1 (or 0 for max(1, rate))")
        tenants[name] = (tr.rate, burst)

    return Policy(
        source=errs.source,
        classes=tuple(classes),
        content=pf.content,
        categories=categories,
        windows=windows,
        keyword_lists=tuple(lists),
        optout_scope=pf.optout.scope,
        optout_words=frozenset(for_matching(w) for w in words),
        replies=replies,
        optout_categories=frozenset(pref),
        consent_retention_s=pf.optout.consent_retention_days * 86400.0,
        default_zones=default_zones,
        zones=zones,
        tenants=tenants,
        cooling=_cooling(pf.cooling, known, errs),
    )


def _cooling(c: CoolingSettings, known: set[str], errs: _Errors) -> CoolingSettings:
    if not 1 <= c.after <= 100:
        raise errs.at(["cooling", "after"], "must be 1-100 (messages in a row)")
    if not 0 < c.days <= 365:
        raise errs.at(["cooling", "days"], "must be greater than 0 and at most 365")
    for cat in c.categories if c.enabled else ():
        if cat not in known:
            raise errs.at(["cooling", "categories"], f"{cat!r} is not a queue class")
    return c


def _reply_rules(o: OptoutSettings, words: list[str], errs: _Errors) -> ReplyRules:
    lists: dict[str, tuple[str, ...]] = {}
    for name, given, default in (
        ("optin_words", o.optin_words, replies_mod.DEFAULT_OPTIN_WORDS),
        ("fillers", o.fillers, replies_mod.DEFAULT_FILLERS),
        ("phrases", o.phrases, replies_mod.DEFAULT_PHRASES),
        ("phrase_exceptions", o.phrase_exceptions, replies_mod.DEFAULT_PHRASE_EXCEPTIONS),
        ("negations", o.negations, replies_mod.DEFAULT_NEGATIONS),
        ("negation_exceptions", o.negation_exceptions,
         replies_mod.DEFAULT_NEGATION_EXCEPTIONS),
    ):
        items = tuple(given) if given is not None else default
        for i, item in enumerate(items):
            if not replies_mod.tokens(item):
                raise errs.at(["optout", name, i], f"{item!r} is empty once normalised")
        lists[name] = items
    if not 1 <= o.max_reply_chars <= 500:
        raise errs.at(["optout", "max_reply_chars"], "must be 1-500")
    if not 0 <= o.negation_gap <= 10:
        raise errs.at(["optout", "negation_gap"], "must be 0-10 (tokens)")
    both = {for_matching(w) for w in words} & {for_matching(w) for w in lists["optin_words"]}
    if both:
        raise errs.at(["optout", "optin_words"], f"{sorted(both)[0]!r} is also an opt-out "
                      "word; a reply cannot mean both")
    return ReplyRules(words=tuple(words), max_reply_chars=o.max_reply_chars,
                      negation_gap=o.negation_gap, **lists)


def _keyword_list(kl: KeywordListSettings, errs: _Errors, key: list[str | int],
                  base_dir: Path) -> KeywordList:
    """One [[keywords]] entry with its file(s): terms, per-term and list exceptions."""
    fpath = _path(base_dir, kl.file)
    terms: list[str] = []
    own: list[tuple[str, ...]] = []
    for lineno, line in _read_list(fpath, errs, [*key, "file"]):
        # "term ! exception ! exception": '!' is punctuation, which matching drops, so
        # no term loses anything by giving it this meaning.
        term, *excs = (part.strip() for part in line.split("!"))
        where = f"{fpath}:{lineno}"
        if not for_matching(term):
            raise ConfigError(f"{where}: {term!r} has no letters or digits once "
                              "normalised (symbols are content.forbidden_chars); remove it")
        for exc in excs:
            if for_matching(term) not in for_matching(exc):
                raise ConfigError(f"{where}: exception {exc!r} does not contain {term!r} "
                                  "(once normalised), so it could never release a match; "
                                  "write the longer allowed phrase, e.g. 套现 ! 配套现金")
        terms.append(term)
        own.append(tuple(excs))
    shared: list[tuple[str, str]] = [(e, f"{errs.source}: keywords[{key[1]}].exceptions")
                                     for e in kl.exceptions]
    if kl.exceptions_file:
        epath = _path(base_dir, kl.exceptions_file)
        shared += [(e, f"{epath}:{n}")
                   for n, e in _read_list(epath, errs, [*key, "exceptions_file"])]
    if not 1 <= kl.pinyin_min_letters <= 32:
        raise errs.at([*key, "pinyin_min_letters"], "must be 1-32")
    normalised_terms = [for_matching(t) for t in terms]
    if kl.pinyin:
        normalised_terms += [v for t in terms for v in pinyin.variants(t, kl.pinyin_min_letters)]
    for exc, where in shared:
        ne = for_matching(exc)
        if not any(t in ne for t in normalised_terms):
            raise ConfigError(f"{where}: exception {exc!r} contains no term of list "
                              f"{kl.name!r} (once normalised), so it could never release a "
                              "match; remove it or add the term")
    return KeywordList(kl.name, kl.action, frozenset(kl.categories), tuple(terms),
                       str(fpath), term_exceptions=tuple(own),
                       exceptions=tuple(e for e, _ in shared), pinyin=kl.pinyin,
                       pinyin_min_letters=kl.pinyin_min_letters)


def _path(base_dir: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base_dir / p
