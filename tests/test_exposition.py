"""gatewayd.ops.exposition: another process's families merged into this one's /metrics
(the daemon's with its webhook sender's), on prometheus_client's own output."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.ops.exposition import blocks, merge
from gatewayd.webhooks.process import _sender_series, scrape_url


def _registry(delivered: float, processes: float) -> bytes:
    r = CollectorRegistry()
    Gauge("process_resident_memory_bytes", "rss", registry=r).set(processes * 100)
    c = Counter("gatewayd_webhook_events_delivered", "delivered", ["endpoint"], registry=r)
    if delivered:
        c.labels("crm").inc(delivered)
    Gauge("gatewayd_webhook_sender_processes", "running", registry=r).set(processes)
    Gauge("gatewayd_queue_depth", "depth", ["klass"], registry=r).labels("otp").set(7)
    return generate_latest(r)


def test_the_senders_families_replace_the_daemons_and_each_name_is_once() -> None:
    daemon, child = _registry(0, 1), _registry(42, 0)
    text = merge(daemon, child, _sender_series).decode()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("gatewayd_webhook_events_delivered_total", (("endpoint", "crm"),))] == 42
    # The daemon's own: its process, its sender gauge (the child's 0 is not taken).
    assert samples[("process_resident_memory_bytes", ())] == 100
    assert samples[("gatewayd_webhook_sender_processes", ())] == 1
    assert samples[("gatewayd_queue_depth", (("klass", "otp"),))] == 7


def test_nothing_from_the_other_process_leaves_the_own_exposition_whole() -> None:
    daemon = _registry(0, 1)
    assert merge(daemon, b"", _sender_series) == daemon
    assert b"".join(b for _, b in blocks(daemon)) == daemon
    assert [n for n, _ in blocks(daemon)][:1] == [b"process_resident_memory_bytes"]


def test_scrape_url_reaches_a_wildcard_address_on_loopback() -> None:
    assert scrape_url("") == ""
    assert scrape_url("127.0.0.1:9781") == "http://127.0.0.1:9781/metrics"
    assert scrape_url("0.0.0.0:9781") == "http://127.0.0.1:9781/metrics"
    assert scrape_url(":9781") == "http://127.0.0.1:9781/metrics"
    assert scrape_url("[::]:9781") == "http://[::1]:9781/metrics"
    assert scrape_url("[::1]:9781") == "http://[::1]:9781/metrics"
    assert scrape_url("10.0.0.5:9781") == "http://10.0.0.5:9781/metrics"
