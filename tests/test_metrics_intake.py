"""Metrics an SRE alerts on (issue 14, item 12), scraped from a running daemon.

Labelled counters start with a 0 sample for every known label value (an increase()
alert sees the first dead letter: config/prometheus-rules.test.yml shows it with
promtool); gatewayd_messages_enqueued_total counts every intake, whichever process
took it; the standard process metrics are exported.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.cli import main as cli_main
from gatewayd.client import Client
from gatewayd.ops import metrics
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _enqueued(klass: str, source: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "gatewayd_messages_enqueued_total", {"klass": klass, "source": source}) or 0.0


async def test_zero_samples_and_process_metrics_at_start(
    tmp_path: Path, redis_url: str, smsc: Smsc
) -> None:
    sim = await smsc()
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True))
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{daemon.http.port}/metrics") as r:
            assert r.status == 200
            samples = _samples(await r.text())
    for reason in ("invalid", "too_many_deliveries"):
        assert ("gatewayd_dead_letters_total", (("reason", reason),)) in samples
    for op in ("dispatch", "housekeeping"):
        assert ("gatewayd_redis_errors_total", (("op", op),)) in samples
    for source in ("http", "client", "cli", "stream", "campaign"):
        key = ("gatewayd_messages_enqueued_total", (("klass", "otp"), ("source", source)))
        assert key in samples
    assert ("gatewayd_receipts_total", (("carrier", "sim"), ("result", "unmatched"))) in samples
    assert ("gatewayd_mo_total", (("result", "no_number"),)) in samples
    # Standard process metrics (prometheus_client's ProcessCollector, from /proc).
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000
    assert samples[("process_open_fds", ())] >= 3
    assert ("process_cpu_seconds_total", ()) in samples
    assert samples[("process_max_fds", ())] >= samples[("process_open_fds", ())]


async def test_every_intake_is_counted_once(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True)
    cfg = load(path)
    klass = "transactional"
    before = {s: _enqueued(klass, s) for s in ("http", "client", "cli", "stream")}
    async with running_daemon(cfg) as daemon:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{daemon.http.port}/v1/messages", json={
                    "id": "h-1", "to": "+8613800000001", "text": "via http"}) as r:
                assert r.status in (200, 201, 202), await r.text()
        async with Client(redis_url, queue=cfg.queue) as client:
            await client.send([{"id": "c-1", "to": "+8613800000002", "text": "client"},
                               {"id": "c-2", "to": "+8613800000003", "text": "client"}])
        rc = await asyncio.to_thread(cli_main, ["enqueue", "-c", str(path), "--to",
                                                "+8613800000004", "--text", "cli",
                                                "--id", "l-1"])
        assert rc == 0 and json.loads(capsys.readouterr().out)["id"] == "l-1"
        stream = keys.queue(klass)
        # Upstream's own XADDs: no marker; one claims a marker it has no business with
        # (an internal field: refused, not counted), one is deferred (read twice:
        # counted once).
        await redis.xadd(stream, {"id": "r-1", "to": "+8613800000005", "text": "raw"})
        await redis.xadd(stream, {"id": "r-2", "to": "+8613800000006", "text": "raw",
                                  "intake": "x" * 200})
        await redis.xadd(stream, {"id": "r-3", "to": "+8613800000007", "text": "later",
                                  "not_before": repr(time.time() + 1.0)})
        ids = ["h-1", "c-1", "c-2", "l-1", "r-1", "r-2", "r-3"]
        records = await wait_final(redis, keys, ids, timeout_s=30)
        assert {i: r.get("state") for i, r in records.items()} == dict.fromkeys(
            ids, "delivered") | {"r-2": "rejected"}
        assert records["r-2"].get("reason", "").startswith("invalid:internal_field")
    got = {s: _enqueued(klass, s) - before[s] for s in before}
    assert got == {"http": 1, "client": 2, "cli": 1, "stream": 2}
