"""Structured logs: JSON shape, number masking, text only at DEBUG, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gatewayd.ops.logs import mask_numbers, setup_logging


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """Logging configured onto a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    setup_logging("info", stream=buf)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_line_shape(out: io.StringIO) -> None:
    logging.getLogger("gatewayd.bind").info("bind %s up", "cmcc-0",
                                            extra={"carrier": "cmcc", "bind": 0, "tps": 100.5})
    [rec] = lines(out)
    assert set(rec) == {"ts", "level", "logger", "msg", "carrier", "bind", "tps"}
    assert rec["level"] == "info" and rec["logger"] == "gatewayd.bind"
    assert rec["msg"] == "bind cmcc-0 up"
    assert rec["carrier"] == "cmcc" and rec["bind"] == 0 and rec["tps"] == 100.5
    assert rec["ts"].endswith("Z") and rec["ts"][10] == "T" and len(rec["ts"]) == 24


def test_numbers_masked_everywhere(out: io.StringIO) -> None:
    log = logging.getLogger("gatewayd.dispatch")
    log.warning("rejected +8613800138000 (was 13800138000)",
                extra={"to": "+8613800138000", "numbers": ["8613912345678"],
                       "nested": {"msisdn": "13800138000"}})
    try:
        raise ValueError("bad number 13800138000")
    except ValueError:
        log.exception("failed for %s", "+447700900123")
    first, second = lines(out)
    assert first["msg"] == "rejected +86138****8000 (was 138****8000)"
    assert first["to"] == "+86138****8000"
    assert first["numbers"] == ["86139****5678"]
    assert first["nested"] == {"msisdn": "138****8000"}
    assert second["msg"] == "failed for +4477****0123"
    assert "138****8000" in second["exc"] and "13800138000" not in second["exc"]
    assert "ValueError" in second["exc"]
    assert "13800138000" not in out.getvalue()


def test_what_is_not_a_phone_number_stays() -> None:
    # Stream ids, short codes, ids with digits glued to letters, decimals.
    for text in ("entry 1714550000000-0 acked", "code 123456", "id a13800138000b",
                 "at 1714550000.1234567", "port 2775"):
        assert mask_numbers(text) == text
    assert mask_numbers("请拨打13800138000") == "请拨打138****8000"
    assert mask_numbers("tel:+8613800138000,") == "tel:+86138****8000,"
    assert mask_numbers("16 digits 1234567890123456") == "16 digits 1234567890123456"


def test_message_text_only_at_debug() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    try:
        setup_logging("debug", stream=buf)
        log = logging.getLogger("gatewayd.x")
        log.debug("submitting", extra={"text": "验证码 123456", "id": "m1"})
        log.info("submitted", extra={"text": "验证码 123456", "body": "raw", "id": "m1"})
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])
    debug, info = lines(buf)
    assert debug["text"] == "验证码 123456"
    assert "text" not in info and "body" not in info and info["id"] == "m1"


def test_secrets_never_logged(out: io.StringIO) -> None:
    log = logging.getLogger("gatewayd.carrier")
    log.error("bind refused for system_id=acme password=hunter2 api_key: 'k-1'",
              extra={"password": "hunter2", "smpp_password": "x", "headers":
                     {"Authorization": "Bearer abc", "Accept": "*/*"}})
    log.error("client sent Authorization: Bearer tok.en-123")
    first, second = lines(out)
    assert "hunter2" not in out.getvalue() and "tok.en-123" not in out.getvalue()
    assert "password=***" in first["msg"] and "api_key: ***" in first["msg"]
    assert first["password"] == "***" and first["smpp_password"] == "***"
    assert first["headers"] == {"Authorization": "***", "Accept": "*/*"}
    assert second["msg"] == "client sent Authorization: Bearer ***"


def test_level_and_library_loggers(out: io.StringIO) -> None:
    logging.getLogger("gatewayd.x").debug("hidden at info")
    logging.getLogger("redis.connection").warning("lost 13800138000")
    [rec] = lines(out)
    assert rec["logger"] == "redis.connection" and rec["msg"] == "lost 138****8000"


def test_setup_twice_replaces_handler_and_text_mode(out: io.StringIO) -> None:
    buf = io.StringIO()
    setup_logging("warning", json=False, stream=buf)
    logging.getLogger("gatewayd.y").warning("to %s", "+8613800138000", extra={"carrier": "ct"})
    logging.getLogger("gatewayd.y").info("not shown")
    assert out.getvalue() == ""  # the first handler is gone
    [line] = buf.getvalue().splitlines()
    assert line.endswith("WARNING gatewayd.y: to +86138****8000 carrier=ct")


def test_bad_level_and_bad_format_args(out: io.StringIO) -> None:
    with pytest.raises(ValueError, match="log level"):
        setup_logging("verbose", stream=io.StringIO())
    logging.getLogger("gatewayd.z").info("two %s %s", "args-only-one")
    [rec] = lines(out)
    assert "log format error" in rec["msg"]
