"""Structured logging: one JSON object a line, phone numbers masked, secrets redacted.

Line shape: ``{"ts": "2024-05-01T01:00:00.123Z", "level": "info", "logger": "gatewayd.x",
"msg": "...", <extra fields>, "exc": "<traceback>"}``. Pass context with
``log.info("bind up", extra={"carrier": "cmcc", "bind": 0})``.

Conventions (enforced by ``RedactFilter`` on the handler, so they hold for every logger,
ours and libraries'):

* Phone numbers are personal data: any run of 11-15 digits (optional ``+``) in the message,
  in string extra fields and in tracebacks is masked like ``138****8000``. Runs glued to a
  letter or digit on the left (inside a hex id) or followed by ``-<digit>`` (a Redis
  stream id such as ``1714550000000-0``) are left alone: they are not numbers we send to.
* Message text is logged only at DEBUG, and only in an extra field named ``text`` (or
  ``body``); at INFO and above such fields are dropped. Never put SMS text in ``msg``.
* Secrets never reach a log line: extra fields whose name contains password, secret,
  token, api_key or authorization become ``"***"``, and ``password=...``-style pairs
  inside messages are cut to ``password=***``.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec

from gatewayd.model import mask_number

_NUMBER_RE: Final = re.compile(r"(?<![0-9A-Za-z+])\+?[0-9]{11,15}(?![0-9])(?!-[0-9])")
_SECRET_KEY_RE: Final = re.compile(r"password|passwd|secret|token|api_?key|authorization", re.I)
_SECRET_PAIR_RE: Final = re.compile(
    r"(?i)\b(password|passwd|secret|token|api_?key)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)
_BEARER_RE: Final = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]+")
_TEXT_FIELDS: Final = frozenset({"text", "body"})

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


def mask_numbers(text: str) -> str:
    """Mask every phone-number-like run of digits in free text."""
    return _NUMBER_RE.sub(lambda m: mask_number(m.group(0)), text)


def redact(text: str) -> str:
    """Numbers masked, ``password=...`` and bearer tokens cut."""
    text = _SECRET_PAIR_RE.sub(r"\1\2***", text)
    text = _BEARER_RE.sub(r"\1***", text)
    return mask_numbers(text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and _SECRET_KEY_RE.search(k) else _clean(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class RedactFilter(logging.Filter):
    """Rewrites the record in place: masked message and extras, text dropped above DEBUG."""

    _tb = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as e:  # a bad format string must not lose the line
            message = f"{record.msg!r} (log format error: {e})"
        record.msg, record.args = redact(message), None
        for key, value in extra_fields(record).items():
            if key in _TEXT_FIELDS and record.levelno > logging.DEBUG:
                delattr(record, key)
            elif _SECRET_KEY_RE.search(key):
                setattr(record, key, "***")
            else:
                setattr(record, key, _clean(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tb.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; extras become top-level keys (never overriding the core)."""

    _enc = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        try:
            return self._enc.encode(out).decode("utf-8")
        except (TypeError, ValueError, OverflowError):  # odd keys: fall back, never lose it
            return _json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: ``ts level logger: msg key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in extra_fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" {extras}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(level: str, *, json: bool = True, stream: IO[str] | None = None) -> None:
    """Route every logger through one masked handler on ``stream`` (default stdout).

    Stdout, because under systemd the journal captures it; a JSON line per record keeps
    multi-line tracebacks in one journal entry.
    """
    try:
        lvl = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level {level!r}: one of {', '.join(_LEVELS)}") from None
    handler = _Handler(sys.stdout if stream is None else stream)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()  # a StreamHandler never closes its stream
    root.addHandler(handler)
    root.setLevel(lvl)
    # Library chatter stays at WARNING unless we are debugging.
    for name in ("aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if lvl == logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)
