"""`gatewayd top`: parsing, rates from counter deltas, and one frame from a live /metrics."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from gatewayd.http.server import HttpServer
from gatewayd.ops import metrics, top
from gatewayd.store.keys import Keys
from tests.test_ops_http import RedisBackend


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    top.add_arguments(p)
    return p.parse_args(list(argv))


def scrape_registry() -> top.Samples:
    return top.parse(generate_latest(metrics.REGISTRY).decode())


def test_rates_binds_receipts_and_errors_from_deltas() -> None:
    c = "toptest"  # a carrier of its own: the registry is shared by the whole test run
    metrics.BIND_UP.labels(c, "0").set(1)
    metrics.BIND_UP.labels(c, "1").set(0)
    metrics.WINDOW_IN_USE.labels(c, "0").set(37)
    metrics.BIND_TPS.labels(c, "0").set(200)
    metrics.BIND_INFO.labels(c, "0", "cmpp", "3.0").set(1)
    metrics.BIND_INFO.labels(c, "1", "cmpp", "3.0").set(1)
    metrics.QUEUE_DEPTH.labels("toptest-otp").set(12)
    metrics.QUEUE_PENDING.labels("toptest-otp").set(3)
    view = top.View(url="http://x/metrics")
    view.update(scrape_registry(), 1000.0)
    assert view.rate("gatewayd_submits_total", carrier=c) is None  # one scrape: no rate yet
    metrics.SUBMITS.labels(c, "cmpp").inc(50)
    metrics.MESSAGES_ENQUEUED.labels("toptest-otp", "http").inc(20)
    metrics.RECEIPTS.labels(c, "final").inc(8)
    metrics.RECEIPTS.labels(c, "unmatched").inc(2)
    metrics.COMMAND_STATUS.labels(c, "cmpp", "cmpp_submit", "CMPP_FLOW_CONTROL").inc(4)
    metrics.COMMAND_STATUS.labels(c, "cmpp", "cmpp_submit", "CMPP_OK").inc(46)
    metrics.PDU_ERRORS.labels(c, "bad_length").inc()
    view.update(scrape_registry(), 1002.0)
    assert view.rate("gatewayd_submits_total", carrier=c) == 25.0
    # The deprecated name still counts the same submits (derived at scrape time).
    assert view.rate("gatewayd_submit_sm_total", carrier=c) == 25.0
    assert view.rate("gatewayd_messages_enqueued_total", klass="toptest-otp") == 10.0
    frame = top.render(view)
    bind_rows = [line.split() for line in frame.splitlines() if line.startswith(f"{c} ")]
    assert bind_rows == [[c, "0", "cmpp-3.0", "up", "37", "200", "25.0"],
                         [c, "1", "cmpp-3.0", "DOWN", "0", "0"]]
    klass = next(line.split() for line in frame.splitlines() if line.startswith("toptest-otp"))
    assert klass == ["toptest-otp", "12", "3", "10.0"]
    assert "\x1b[" not in frame  # no colour unless asked
    errors = frame.split("RECENT ERRORS", 1)[1]
    assert f"cmpp {c} cmpp_submit CMPP_FLOW_CONTROL +4" in errors
    assert f"pdu error {c} bad_length +1" in errors
    assert "CMPP_OK" not in errors
    assert "unmatched" in frame.split("RECEIPTS", 1)[1]


def test_a_suspended_carrier_is_shown_suspended() -> None:
    c = "topsusp"  # bound (receipts and MO flow) but taking no submits
    metrics.BIND_UP.labels(c, "0").set(1)
    metrics.CARRIER_SUSPENDED.labels(c).set(1)
    try:
        view = top.View(url="u")
        view.update(scrape_registry(), 1.0)
        frame = top.render(view)
        # (other tests' carriers share the registry: look for this one in the list)
        assert c in _suspended_in_header(frame)
        row = next(line.split() for line in frame.splitlines() if line.startswith(f"{c} "))
        assert row[:4] == [c, "0", "-", "SUSP"]  # "-": no protocol reported
        metrics.CARRIER_SUSPENDED.labels(c).set(0)
        view.update(scrape_registry(), 2.0)
        frame = top.render(view)
        assert c not in _suspended_in_header(frame)
        row = next(line.split() for line in frame.splitlines() if line.startswith(f"{c} "))
        assert row[:4] == [c, "0", "-", "up"]
    finally:
        metrics.CARRIER_SUSPENDED.labels(c).set(0)
        metrics.BIND_UP.labels(c, "0").set(0)


def _suspended_in_header(frame: str) -> list[str]:
    words = frame.splitlines()[1].split()
    return words[words.index("suspended") + 1].split(",") if "suspended" in words else []


def test_an_older_daemons_metric_names() -> None:
    """top against a daemon from before the protocol label: the old names are read."""
    old = "gatewayd_submit_sm_total"
    status = "gatewayd_smpp_command_status_total"
    labels = (("carrier", "old"), ("command", "submit_sm"), ("status", "ESME_RTHROTTLED"))
    view = top.View(url="u")
    view.update({(old, (("carrier", "old"),)): 10.0, (status, labels): 1.0}, 1.0)
    view.update({(old, (("carrier", "old"),)): 30.0, (status, labels): 3.0}, 3.0)
    frame = top.render(view)
    submits = next(line.split() for line in frame.splitlines() if line.startswith("submits"))
    assert submits == ["submits", "30", "10.0"]
    assert "smpp old submit_sm ESME_RTHROTTLED +2" in frame.split("RECENT ERRORS", 1)[1]


def test_counter_reset_counts_from_zero() -> None:
    name = "gatewayd_submit_sm_total"
    view = top.View(url="u")
    view.update({(name, (("carrier", "a"),)): 500.0}, 10.0)
    view.update({(name, (("carrier", "a"),)): 30.0}, 11.0)  # the daemon restarted
    assert view.rate(name) == 30.0


def test_delivery_rate_line() -> None:
    s: top.Samples = {
        ("gatewayd_messages_state_total", (("reason", "receipt"), ("state", "delivered"))): 98,
        ("gatewayd_messages_state_total", (("reason", "receipt"), ("state", "undeliverable"))): 2,
    }
    view = top.View(url="u")
    view.update(s, 1.0)
    assert "delivery rate         98.00%" in top.render(view)


def test_url_from_listen() -> None:
    assert top.url_from_listen("127.0.0.1:8780") == "http://127.0.0.1:8780/metrics"
    assert top.url_from_listen("0.0.0.0:9000") == "http://127.0.0.1:9000/metrics"
    assert top.url_from_listen("[::]:9000") == "http://[::1]:9000/metrics"
    assert top.url_from_listen("[::1]:9000") == "http://[::1]:9000/metrics"


async def test_once_against_a_live_server(
    redis: aioredis.Redis, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics.BIND_UP.labels("toplive", "0").set(1)
    metrics.BIND_INFO.labels("toplive", "0", "smpp", "3.4").set(1)
    server = HttpServer("127.0.0.1:0", RedisBackend(redis, keys), api_key_hashes=[],
                        max_body_bytes=1024)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        # top is synchronous (urllib): run it off the loop that serves /metrics.
        code = await asyncio.to_thread(top.run, args("--url", url, "--once",
                                                     "--interval", "0.05", "--no-color"))
    finally:
        await server.stop()
    frame = capsys.readouterr().out
    assert code == 0
    assert frame.startswith("gatewayd ") and url in frame
    assert any(line.split()[:4] == ["toplive", "0", "smpp-3.4", "up"]
               for line in frame.splitlines())
    for section in ("BINDS", "QUEUES", "MESSAGES", "RECEIPTS", "RECENT ERRORS"):
        assert section in frame


async def test_once_unreachable_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    from gatewayd.store.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}/metrics"
    code = await asyncio.to_thread(top.run, args("--url", url, "--once", "--interval", "0.05"))
    assert code == 1
    assert "cannot read" in capsys.readouterr().err
