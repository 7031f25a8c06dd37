"""Message templates: a signature, a category and a body with typed variables.

Body syntax: fixed text with ``{name:type}`` variables (``{{`` and ``}}`` are literal
braces). Types:

=================  ===============================================================
``digits``         1-12 ASCII digits; ``digits6`` exactly 6; ``digits4-8`` 4 to 8
``text``           up to 20 characters; ``text<=10`` up to 10. No URL, no line
                   breaks or control characters, no 【】 (a second signature)
``decimal``        an amount: ``-?\\d{1,12}(\\.\\d{1,4})?``
``url``            an http(s) URL; replaced by a per-message short link when
                   ``[links]`` is configured (the only place a URL may appear)
=================  ===============================================================

The rendered text is ``【signature】`` + the body with its variables filled in. The
fixed text is judged once, when the template is approved (content and keyword checks
of the policy, with every variable empty); the values are validated per message here
(type, length, no URL outside ``url`` variables) and the whole rendered text passes
the policy checks at dispatch like any other message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from gatewayd.errors import MessageError

Status = Literal["pending", "approved", "rejected"]
STATUSES: Final = ("pending", "approved", "rejected")

CODE_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_VAR_RE: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_TYPE_RE: Final = re.compile(
    r"(?P<digits>digits)(?:(?P<dlo>\d{1,2})(?:-(?P<dhi>\d{1,2}))?)?"
    r"|(?P<text>text)(?:<=(?P<tmax>\d{1,3}))?"
    r"|(?P<decimal>decimal)|(?P<url>url)"
)
_DECIMAL_RE: Final = re.compile(r"-?\d{1,12}(?:\.\d{1,4})?")
_URL_VALUE_RE: Final = re.compile(r"https?://[^\s/$.?#\x00-\x1f\x7f][^\s\x00-\x1f\x7f]{0,1000}",
                                  re.IGNORECASE)
# What counts as a URL inside a text variable (or the fixed text): a scheme, www., or a
# host name ending in a common top-level domain followed by a path or the end of a word
# (t.cn/A6x, jd.com, bit.ly/x). "J.Smith" or "3.5" are not URLs.
_TLDS: Final = ("com|cn|net|org|io|co|me|ly|cc|top|xyz|vip|info|biz|tk|ml|ga|cf|gq|shop|"
                "site|online|club|app|link|tv|hk|tw|us|uk|ru|de|jp|kr|in|la|to|gl|gd|is|"
                "im|sh|ws|mobi|pro|live|store|tech|ink|fun|icu|cyou|work|ltd|wang|xin")
URL_IN_TEXT: Final = re.compile(
    rf"(?i)(?:https?://|www\.|\b[a-z0-9](?:[a-z0-9-]{{0,62}}[a-z0-9])?\.(?:{_TLDS})(?![a-z0-9-]))")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\u2028\u2029【】]")
MAX_BODY: Final = 500
MAX_VARS: Final = 10
MAX_URL_VARS: Final = 3
SIGNATURE_RE: Final = re.compile(r"[^【】\[\]\s]{2,20}")


@dataclass(frozen=True, slots=True)
class Var:
    """One typed variable of a body."""

    name: str
    kind: Literal["digits", "text", "decimal", "url"]
    lo: int = 0  # digits: min length
    hi: int = 0  # digits: max length; text: max characters

    def check(self, raw: Any) -> str:
        """The value as it goes into the text, or MessageError(params.<name>)."""
        field = f"params.{self.name}"
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise MessageError(field, "must be a string or a number")
        value = raw if isinstance(raw, str) else (
            str(raw) if isinstance(raw, int) else repr(raw))
        if self.kind == "digits":
            if not (value.isascii() and value.isdigit()) or not self.lo <= len(value) <= self.hi:
                want = f"{self.lo}" if self.lo == self.hi else f"{self.lo}-{self.hi}"
                raise MessageError(field, f"must be {want} digits")
        elif self.kind == "decimal":
            if not _DECIMAL_RE.fullmatch(value):
                raise MessageError(field, "must be a decimal number like 129.90")
        elif self.kind == "url":
            if len(value) > 1000 or not _URL_VALUE_RE.fullmatch(value):
                raise MessageError(field, "must be an http(s) URL of at most 1000 characters")
        else:
            if _CONTROL.search(value):
                raise MessageError(field, "no line breaks, control characters or 【】")
            if URL_IN_TEXT.search(value):
                raise MessageError(field, "no URL in a text variable; links go in a "
                                          "{name:url} variable (shortened and tracked)")
            if len(value) > self.hi:
                raise MessageError(field, f"at most {self.hi} characters")
        return value

    @property
    def spec(self) -> str:
        if self.kind == "digits":
            return f"digits{self.lo}" if self.lo == self.hi else f"digits{self.lo}-{self.hi}"
        if self.kind == "text":
            return f"text<={self.hi}"
        return self.kind


def parse_body(body: str) -> list[str | Var]:
    """Literal pieces and variables, in order; ValueError naming the problem."""
    out: list[str | Var] = []
    names: set[str] = set()
    pos = 0
    literal: list[str] = []
    for m in _VAR_RE.finditer(body):
        literal.append(body[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            literal.append(tok[0])
            continue
        if tok in ("{", "}"):
            raise ValueError(f"unbalanced {tok!r} at character {m.start()}; write {tok}{tok} "
                             "for a literal brace")
        name, sep, kind = (m.group(1) or "").partition(":")
        name, kind = name.strip(), kind.strip()
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"variable {m.group(0)!r}: name must be a-z 0-9 _ (1-32)")
        if not sep:
            raise ValueError(f"variable {m.group(0)!r} needs a type: "
                             "{name:digits4-8}, {name:text<=10}, {name:decimal}, {name:url}")
        if name in names:
            raise ValueError(f"variable {name!r} appears twice")
        names.add(name)
        tm = _TYPE_RE.fullmatch(kind)
        if tm is None:
            raise ValueError(f"variable {name!r}: unknown type {kind!r}; use digits, digitsN, "
                             "digitsA-B, text, text<=N, decimal or url")
        if tm.group("digits"):
            lo = int(tm.group("dlo") or 1)
            hi = int(tm.group("dhi") or (tm.group("dlo") or 12))
            if not 1 <= lo <= hi <= 20:
                raise ValueError(f"variable {name!r}: digits lengths must be 1 <= A <= B <= 20")
            var = Var(name, "digits", lo, hi)
        elif tm.group("text"):
            hi = int(tm.group("tmax") or 20)
            if not 1 <= hi <= 200:
                raise ValueError(f"variable {name!r}: text<=N with N 1-200")
            var = Var(name, "text", 0, hi)
        elif tm.group("decimal"):
            var = Var(name, "decimal")
        else:
            var = Var(name, "url")
        if literal:
            out.append("".join(literal))
            literal = []
        out.append(var)
    literal.append(body[pos:])
    tail = "".join(literal)
    if tail:
        out.append(tail)
    return out


class Template(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One template as the registry stores it (see campaigns.registry)."""

    code: str
    signature: str
    category: str
    body: str
    name: str = ""
    status: Status = "pending"
    reason: str = ""  # why it was rejected (a check's reason, or the operator's)
    created_at: float = 0.0
    updated_at: float = 0.0
    approved_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Compiled:
    """A template ready to render (built once per template version)."""

    template: Template
    pieces: tuple[str | Var, ...]
    variables: tuple[Var, ...]
    url_vars: int
    prefix: str  # 【signature】
    # For render_checked_before: the text's parts with "" where a variable goes (adjacent
    # fixed pieces joined), and each variable's (index there, name, is a url).
    plan: tuple[tuple[str, ...], tuple[tuple[int, str, bool], ...]] = field(
        default=((), ()), compare=False, repr=False)

    def __post_init__(self) -> None:
        parts: list[str] = [self.prefix]
        slots: list[tuple[int, str, bool]] = []
        for p in self.pieces:
            if isinstance(p, str):
                if slots and slots[-1][0] == len(parts) - 1:  # after a variable
                    parts.append(p)
                else:
                    parts[-1] += p
            else:
                slots.append((len(parts), p.name, p.kind == "url"))
                parts.append("")
        object.__setattr__(self, "plan", (tuple(parts), tuple(slots)))

    @property
    def code(self) -> str:
        return self.template.code

    def fixed_text(self, link_sample: str = "") -> str:
        """The text with every variable empty (url variables: ``link_sample``): what the
        approval's content and keyword checks judge."""
        parts = [self.prefix]
        for p in self.pieces:
            if isinstance(p, str):
                parts.append(p)
            elif p.kind == "url":
                parts.append(link_sample)
        return "".join(parts)

    def render(self, params: Mapping[str, Any],
               link: Callable[[str], str] | None = None) -> tuple[str, list[str]]:
        """(text, link targets in order). ``link(url)`` gives the text a url variable
        becomes (the short URL); None leaves the URL as given. MessageError names the
        offending ``params.<name>``."""
        if not isinstance(params, Mapping):
            raise MessageError("params", "must be an object of variable -> value")
        out = [self.prefix]
        targets: list[str] = []
        for p in self.pieces:
            if isinstance(p, str):
                out.append(p)
                continue
            if p.name not in params:
                raise MessageError(f"params.{p.name}", f"missing ({p.spec})")
            value = p.check(params[p.name])
            if p.kind == "url":
                targets.append(value)
                out.append(link(value) if link is not None else value)
            else:
                out.append(value)
        if len(params) > len(self.variables):
            known = {v.name for v in self.variables}
            extra = sorted(str(k) for k in params if k not in known)
            if extra:
                raise MessageError(f"params.{extra[0]}",
                                   f"not a variable of template {self.code!r}; it has "
                                   f"{', '.join(sorted(known)) or 'none'}")
        return "".join(out), targets


def render_checked_before(c: Compiled, params: Mapping[str, Any],
                          link: Callable[[str], str] | None) -> str:
    """``c.render`` without the value checks, for rows validated when they were uploaded
    (the fan-out renders millions of them)."""
    parts, slots = c.plan
    out = list(parts)  # one list a row; only the variables' slots are filled in
    for i, name, url in slots:
        v = params[name]
        v = v if isinstance(v, str) else (str(v) if isinstance(v, int) else repr(v))
        out[i] = link(v) if url and link is not None else v
    return "".join(out)


def compile_template(t: Template, classes: list[str] | None = None) -> Compiled:
    """Validate a template's fields and body; ValueError naming the field."""
    if not CODE_RE.fullmatch(t.code):
        raise ValueError("code: 1-64 characters of A-Z a-z 0-9 . _ -")
    if not SIGNATURE_RE.fullmatch(t.signature):
        raise ValueError("signature: 2-20 characters without 【】 or spaces (the text "
                         "gets 【signature】 in front)")
    if classes is not None and t.category not in classes:
        raise ValueError(f"category: {t.category!r} is not a queue class {classes}")
    if not t.body.strip():
        raise ValueError("body: empty")
    if len(t.body) > MAX_BODY:
        raise ValueError(f"body: longer than {MAX_BODY} characters")
    if t.status not in STATUSES:
        raise ValueError(f"status: one of {', '.join(STATUSES)}")
    try:
        pieces = parse_body(t.body)
    except ValueError as e:
        raise ValueError(f"body: {e}") from None
    variables = tuple(p for p in pieces if isinstance(p, Var))
    if len(variables) > MAX_VARS:
        raise ValueError(f"body: at most {MAX_VARS} variables")
    url_vars = sum(1 for v in variables if v.kind == "url")
    if url_vars > MAX_URL_VARS:
        raise ValueError(f"body: at most {MAX_URL_VARS} url variables")
    fixed = "".join(p for p in pieces if isinstance(p, str))
    if URL_IN_TEXT.search(fixed):
        raise ValueError("body: the fixed text holds a URL; put links in a {link:url} "
                         "variable so they are shortened and tracked")
    if "【" in fixed or "】" in fixed:
        raise ValueError("body: no 【】 in the body; the signature is its own field")
    return Compiled(t, tuple(pieces), variables, url_vars, f"【{t.signature}】")
