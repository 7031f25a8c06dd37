"""Every Prometheus collector gatewayd exports, in one place.

Labels are bounded: carrier names, bind indexes, classes, states, reasons from a fixed
vocabulary, SMPP status names. Never phone numbers, message ids or free text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric

REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process metrics (process_resident_memory_bytes, process_cpu_seconds_total,
# process_open_fds, process_max_fds, process_start_time_seconds, ...), from /proc.
PROCESS = ProcessCollector(registry=REGISTRY)

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RECEIPT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

BUILD_INFO = Info("gatewayd_build", "Version of the running gatewayd", registry=REGISTRY)

# Messages ------------------------------------------------------------------------------
MESSAGES_ENQUEUED = Counter(
    "gatewayd_messages_enqueued_total", "Messages accepted into a priority queue",
    ["klass", "source"], registry=REGISTRY,
)
INTAKE_BATCHES = Counter(
    "gatewayd_intake_batches_total",
    "Enqueue calls made to Redis for HTTP intake (requests of one event-loop turn share one)",
    registry=REGISTRY,
)
INTAKE_REQUESTS = Counter(
    "gatewayd_intake_batched_requests_total",
    "HTTP requests whose messages went to Redis in a shared enqueue call",
    registry=REGISTRY,
)
MESSAGES_STATE = Counter(
    "gatewayd_messages_state_total",
    "State transitions recorded (final and intermediate), by state and reason",
    ["state", "reason"], registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "gatewayd_dead_letters_total", "Queue entries moved to the dead-letter stream",
    ["reason"], registry=REGISTRY,
)
DUPLICATES = Counter(
    "gatewayd_redeliveries_total",
    "Entries read again after a reclaim (a crash or timeout): the at-least-once window",
    ["klass"], registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "gatewayd_queue_depth", "Entries in a priority stream", ["klass"], registry=REGISTRY
)
QUEUE_PENDING = Gauge(
    "gatewayd_queue_pending", "Entries read but not yet acknowledged", ["klass"],
    registry=REGISTRY,
)
DELAYED = Gauge("gatewayd_delayed", "Messages waiting in the delayed set", registry=REGISTRY)
LOOP_LAG = Histogram(
    "gatewayd_loop_lag_seconds", "How late a 10 ms timer in the dispatching loop fires "
    "(the loop turn a ready task waits out; gatewayd.ops.looplag)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1), registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "gatewayd_queue_wait_seconds", "Time from enqueue to submit (any protocol)", ["klass"],
    buckets=_LAT_BUCKETS, registry=REGISTRY,
)

# Policies ------------------------------------------------------------------------------
POLICY_VERDICTS = Counter(
    "gatewayd_policy_verdicts_total", "Verdicts by check", ["check", "verdict"],
    registry=REGISTRY,
)
POLICY_RELOADS = Counter(
    "gatewayd_policy_reloads_total", "Policy reloads by result", ["result"], registry=REGISTRY
)
CONFIG_RELOADS = Counter(
    "gatewayd_config_reloads_total",
    "Config reloads (SIGHUP, POST /admin/reload) by result: error = the file failed its "
    "checks and the running configuration stays", ["result"], registry=REGISTRY,
)
POLICY_RELOAD_FAILED = Gauge(
    "gatewayd_policy_reload_failed",
    "1 while the last policy reload failed (the previous policy is still in force)",
    registry=REGISTRY,
)

# Carrier binds, any protocol (SMPP binds, CMPP connections). Counters the SMPP-only days
# named after SMPP have protocol-neutral names with a protocol label; the old names are
# still exported, derived at scrape time (DeprecatedAlias below), for one release.
BIND_UP = Gauge(
    "gatewayd_bind_up", "1 when the bind is bound", ["carrier", "bind"], registry=REGISTRY
)
# An info series (always 1) to join on (carrier, bind): the other bind series keep their
# labels, so no dashboard or alert breaks for the protocol being known.
BIND_INFO = Gauge(
    "gatewayd_bind_info", "Always 1: the protocol (smpp, cmpp) and version a bind speaks",
    ["carrier", "bind", "protocol", "version"], registry=REGISTRY,
)


def set_bind_info(carrier: str, bind: str, protocol: str, version: str) -> None:
    """Mark what a bind speaks, dropping the series of what it spoke before: a reload
    that moves a carrier from SMPP to CMPP under one name left both exported, and a
    join on (carrier, bind) then matched two protocols."""
    for labels in list(BIND_INFO._metrics):  # the children by label values
        if labels[:2] == (carrier, bind) and labels[2:] != (protocol, version):
            BIND_INFO.remove(*labels)
    BIND_INFO.labels(carrier, bind, protocol, version).set(1)


def forget_bind_info(carrier: str, keep: Collection[str] = ()) -> None:
    """Drop a carrier's info series but its binds in ``keep`` (a reload removed the
    carrier, or left it fewer binds)."""
    for labels in list(BIND_INFO._metrics):
        if labels[0] == carrier and labels[1] not in keep:
            BIND_INFO.remove(*labels)


BIND_RECONNECTS = Counter(
    "gatewayd_bind_reconnects_total", "Connection attempts after the first",
    ["carrier", "bind"], registry=REGISTRY,
)
WINDOW_IN_USE = Gauge(
    "gatewayd_bind_window_in_use", "Submits awaiting a response (submit_sm, CMPP_SUBMIT)",
    ["carrier", "bind"],
    registry=REGISTRY,
)
BIND_TPS = Gauge(
    "gatewayd_bind_tps_limit",
    "Current send-rate limit: the bind's share of the account's learned rate",
    ["carrier", "bind"], registry=REGISTRY,
)
CARRIER_RATE = Gauge(
    "gatewayd_carrier_tps_learned",
    "The carrier account's send rate learned from throttling (shared by binds and daemons)",
    ["carrier"], registry=REGISTRY,
)
CARRIER_SUSPENDED = Gauge(
    "gatewayd_carrier_suspended",
    "1 while an operator has the carrier suspended (no new submits; receipts and MO flow)",
    ["carrier"], registry=REGISTRY,
)
CARRIER_TPS = Gauge(
    "gatewayd_carrier_tps",
    "The carrier's effective tps: an operator's live override, else the configured value",
    ["carrier"], registry=REGISTRY,
)
CARRIER_WINDOW = Gauge(
    "gatewayd_carrier_window",
    "The carrier's effective window: an operator's live override, else the configured value",
    ["carrier"], registry=REGISTRY,
)
STRAGGLERS = Counter(
    "gatewayd_submit_stragglers_total",
    "Messages whose outcome was left to a background task (no answer within a batch's "
    "grace, or refused parts to resend) so their batch was not held up",
    registry=REGISTRY,
)
PART_RESENDS = Counter(
    "gatewayd_part_resends_total",
    "Parts of partly accepted long messages sent again (same reference and part number)",
    ["carrier"], registry=REGISTRY,
)
SPOOLED = Counter(
    "gatewayd_spooled_total",
    "Receipts and MO written to the local spool while Redis was unreachable, and replayed",
    ["kind", "action"], registry=REGISTRY,
)
SPOOL_PENDING = Gauge(
    "gatewayd_spool_pending", "Records in the local spool not yet replayed into Redis",
    registry=REGISTRY,
)
SUBMITS = Counter(
    "gatewayd_submits_total", "Submit PDUs sent (SMPP submit_sm, CMPP_SUBMIT)",
    ["carrier", "protocol"], registry=REGISTRY,
)
COMMAND_STATUS = Counter(
    "gatewayd_command_status_total",
    "Responses received by command and status (SMPP ESME_*, CMPP CMPP_*)",
    ["carrier", "protocol", "command", "status"], registry=REGISTRY,
)
class DeprecatedAlias:
    """A counter under its old name, computed from its successor at scrape time (no cost
    on the hot path): the successor's samples summed over the labels the old name lacked
    (``protocol``). Exported for one release so dashboards and alerts can move."""

    def __init__(self, name: str, source: Counter, labelnames: tuple[str, ...],
                 documentation: str) -> None:
        self.name, self.source, self.documentation = name, source, documentation
        self._labelnames = labelnames  # the attribute Counter has, for tooling that reads it

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)]

    def collect(self) -> list[Metric]:
        sums: dict[tuple[str, ...], float] = {}
        for family in self.source.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # _created
                values = tuple(sample.labels[n] for n in self._labelnames)
                sums[values] = sums.get(values, 0.0) + sample.value
        out = CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)
        for values, v in sorted(sums.items()):
            out.add_metric(list(values), v)
        return [out]


REGISTRY.register(DeprecatedAlias(
    "gatewayd_submit_sm", SUBMITS, ("carrier",),
    "DEPRECATED (removed in the next release): gatewayd_submits_total without protocol",
))
REGISTRY.register(DeprecatedAlias(
    "gatewayd_smpp_command_status", COMMAND_STATUS, ("carrier", "command", "status"),
    "DEPRECATED (removed in the next release): gatewayd_command_status_total without "
    "protocol",
))
SUBMIT_LATENCY = Histogram(
    "gatewayd_submit_latency_seconds", "Submit -> its response (submit_sm_resp, "
    "CMPP_SUBMIT_RESP)", ["carrier"],
    buckets=_LAT_BUCKETS, registry=REGISTRY,
)
RECEIPT_LATENCY = Histogram(
    "gatewayd_receipt_latency_seconds", "Submit response -> delivery receipt (status report)",
    ["carrier"],
    buckets=_RECEIPT_BUCKETS, registry=REGISTRY,
)
RECEIPTS = Counter(
    "gatewayd_receipts_total", "Delivery receipts by correlation result",
    ["carrier", "result"], registry=REGISTRY,
)
INBOUND = Counter(
    "gatewayd_inbound_total", "Mobile-originated messages received", ["carrier"],
    registry=REGISTRY,
)
MO_RESULTS = Counter(
    "gatewayd_mo_total",
    "MO handled by the inbound path, by result: stored (new), redelivered (an SMSC "
    "redelivery of one whose opt-out/opt-in step had not completed: done now), "
    "duplicate (a redelivery: stored before, not again), no_number (an opt-out/opt-in "
    "reply from a sender that is no valid number: stored, not applied), failed (its "
    "opt-out/opt-in step raised: stored, retried on redelivery)",
    ["result"], registry=REGISTRY,
)
OPTOUTS = Counter(
    "gatewayd_optouts_total", "Opt-outs and opt-ins recorded", ["action", "source"],
    registry=REGISTRY,
)
PDU_ERRORS = Counter(
    "gatewayd_pdu_errors_total", "Malformed or unexpected PDUs from carriers",
    ["carrier", "kind"], registry=REGISTRY,
)

# Campaigns, templates and short links ---------------------------------------------------
CAMPAIGN_MESSAGES = Gauge(
    "gatewayd_campaign_messages",
    "A campaign's funnel (read from Redis; the campaigns.metrics_max most recent only): "
    "queued, submitted, delivered, undeliverable, expired, failed, rejected, deferred, "
    "clicked (unique), clicks, previews, converted, opted_out",
    ["campaign", "stage"], registry=REGISTRY,
)
CAMPAIGNS = Gauge(
    "gatewayd_campaigns", "Recent campaigns by status (draft, scheduled, running, paused, "
    "done, cancelled)", ["status"], registry=REGISTRY,
)
FANOUT = Counter(
    "gatewayd_campaign_recipients_total",
    "Campaign recipients fanned out: queued, or invalid (skipped); with "
    "campaigns.fanout_process, the fan-out child's (read from it at the scrape)",
    ["result"], registry=REGISTRY,
)
LINK_REQUESTS = Counter(
    "gatewayd_link_requests_total",
    "Short-link requests: click (first), repeat (later clicks), preview, unknown",
    ["kind"], registry=REGISTRY,
)
SIGNATURE_MESSAGES = Gauge(
    "gatewayd_signature_messages",
    "Campaign funnel stages summed by the templates' 【signature】 (bounded like "
    "gatewayd_campaign_messages)", ["signature", "stage"], registry=REGISTRY,
)

# Webhooks (gatewayd.webhooks): labels are endpoint names (configured or added by an
# operator: bounded); every message's own callback_url counts under "callback".
_WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WEBHOOK_DELIVERED = Counter(
    "gatewayd_webhook_events_delivered_total", "Events an endpoint answered 2xx to",
    ["endpoint"], registry=REGISTRY,
)
WEBHOOK_FAILED = Counter(
    "gatewayd_webhook_requests_failed_total",
    "Webhook requests that failed, by class: 4xx, 5xx, timeout, connection, refused",
    ["endpoint", "status_class"], registry=REGISTRY,
)
WEBHOOK_DEAD = Counter(
    "gatewayd_webhook_events_dead_total",
    "Events moved to an endpoint's dead-letter stream (a 4xx, or retried past retry_for_s)",
    ["endpoint"], registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "gatewayd_webhook_request_seconds", "Webhook request time (sent -> answered)",
    ["endpoint"], buckets=_WEBHOOK_BUCKETS, registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "gatewayd_webhook_backlog_events",
    "Events waiting for an endpoint: in memory, in flight and in its retry queue",
    ["endpoint"], registry=REGISTRY,
)
WEBHOOK_OLDEST = Gauge(
    "gatewayd_webhook_oldest_pending_seconds",
    "Age of the oldest event an endpoint has not yet taken (0: none waiting)",
    ["endpoint"], registry=REGISTRY,
)
WEBHOOK_OPEN = Gauge(
    "gatewayd_webhook_circuit_open",
    "1 while an endpoint is failing (its events wait in Redis, retried with back-off)",
    ["endpoint"], registry=REGISTRY,
)
WEBHOOK_GAPS = Counter(
    "gatewayd_webhook_stream_gaps_total",
    "Times the events stream's cap (queue.events_maxlen) passed events the webhook "
    "sender had not read yet (they are lost to the webhooks)",
    ["stream"], registry=REGISTRY,
)
WEBHOOK_LAG = Gauge(
    "gatewayd_webhook_stream_lag_seconds",
    "Age of the oldest event the webhook sender has not yet read (0 when caught up)",
    ["stream"], registry=REGISTRY,
)

# Process -------------------------------------------------------------------------------
REDIS_ERRORS = Counter(
    "gatewayd_redis_errors_total", "Redis commands that failed", ["op"], registry=REGISTRY
)
REDIS_UP = Gauge(
    "gatewayd_redis_up", "1 unless the last housekeeping pass could not reach Redis "
    "(connection refused or lost, timeout, loading, every pooled connection busy)",
    registry=REGISTRY,
)
# The daemon's housekeeping steps (gatewayd.daemon); each runs whether the others failed.
HOUSEKEEPING_STEPS = ("move_due", "retry_early", "expire_awaiting", "gauges", "heartbeat",
                      "burst_check")
HOUSEKEEPING_ERRORS = Counter(
    "gatewayd_housekeeping_errors_total",
    "Housekeeping steps that failed (Redis away, or a fault such as a key of the wrong "
    "type), by step", ["step"], registry=REGISTRY,
)
for _step in HOUSEKEEPING_STEPS:
    HOUSEKEEPING_ERRORS.labels(_step)  # a 0 sample, so increase() alerts fire on the first
REDIS_DENIED = Counter(
    "gatewayd_redis_denied_total",
    "Redis commands refused by the ACL (NOPERM; the README lists the minimal ACL)", ["op"],
    registry=REGISTRY,
)

# HTTP API ------------------------------------------------------------------------------
HTTP_CONNECTIONS = Gauge(
    "gatewayd_http_connections", "Open client connections, by listener (api, links)",
    ["listener"], registry=REGISTRY,
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "gatewayd_http_connections_refused_total",
    "Connections answered 503 and closed because max_connections were open, by listener",
    ["listener"], registry=REGISTRY,
)
for _listener in ("api", "links"):
    HTTP_CONNECTIONS.labels(_listener)
    HTTP_CONNECTIONS_REFUSED.labels(_listener)
HTTP_WORKERS = Gauge(
    "gatewayd_http_workers", "Intake-only worker processes running (http.workers - 1 when "
    "all are up); each serves its own /metrics (README \"More intake processes\")",
    registry=REGISTRY,
)
HTTP_WORKER_RESTARTS = Counter(
    "gatewayd_http_worker_restarts_total", "Intake worker processes that exited while the "
    "daemon ran and were started again", registry=REGISTRY,
)
WEBHOOK_SENDERS = Gauge(
    "gatewayd_webhook_sender_processes", "Webhook sender processes the daemon runs "
    "(webhooks.sender = \"process\": 1 when up); it serves its own /metrics "
    "(webhooks.metrics_listen)", registry=REGISTRY,
)
WEBHOOK_SENDER_RESTARTS = Counter(
    "gatewayd_webhook_sender_restarts_total", "Webhook sender processes that exited while "
    "the daemon ran and were started again", registry=REGISTRY,
)
# Not a collector of this registry: written into the daemon's /metrics at each scrape,
# after the sender process's series read from its /metrics (gatewayd.webhooks.process).
WEBHOOK_SENDER_UP = (
    "gatewayd_webhook_sender_up",
    "1 when the daemon read its webhook sender process's /metrics at this scrape (its "
    "gatewayd_webhook_* series are in this exposition); 0: it did not answer (stopped, "
    "restarting, hung) and they are missing",
)
# Not a collector either: written into the daemon's /metrics at each scrape, after the
# fan-out child's gatewayd_campaign_recipients_total (gatewayd.campaigns.supervisor).
FANOUT_UP = (
    "gatewayd_campaign_fanout_up",
    "1 when the daemon read its fan-out child's /metrics (campaigns.fanout_process) at "
    "this scrape (its gatewayd_campaign_recipients_total is in this exposition); 0: it "
    "did not answer (stopped, restarting, hung) and that series is the daemon's own (0)",
)
FANOUT_RESTARTS = Counter(
    "gatewayd_campaign_fanout_restarts_total", "Fan-out child processes "
    "(campaigns.fanout_process) that exited while the daemon ran and were started again",
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "gatewayd_http_requests_total", "HTTP API requests by route template, method and status",
    ["route", "method", "status"], registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "gatewayd_http_request_duration_seconds", "HTTP API request handling time",
    ["route"], buckets=_LAT_BUCKETS, registry=REGISTRY,
)


# Label values known before they happen: each gets a 0 sample at start (zero_known), so
# that increase() and rate() see the first event (a series born at 1 has no increase).
DEAD_LETTER_REASONS = ("invalid", "too_many_deliveries")
REDIS_OPS = ("dispatch", "housekeeping")
ENQUEUE_SOURCES = ("http", "client", "cli", "stream", "campaign")
OPTOUT_ACTIONS = ("opt_out", "opt_in")
OPTOUT_SOURCES = ("mo", "api", "cli", "admin", "import", "other")
MO_RESULT_VALUES = ("stored", "redelivered", "duplicate", "no_number", "failed")
RECEIPT_RESULTS = ("final", "late", "partial", "missing", "interim", "unmatched",
                   "unparseable")
PDU_ERROR_KINDS = ("body", "tlv")
SPOOL_KINDS, SPOOL_ACTIONS = ("receipt", "mo"), ("spooled", "replayed", "bad")
RELOAD_RESULTS = ("ok", "error")
FANOUT_RESULTS = ("queued", "invalid")
LINK_KINDS = ("click", "repeat", "preview", "unknown")


def zero_known(classes: Iterable[str], carriers: Iterable[str]) -> None:
    """Create every labelled counter's series whose label values are known now (at 0)."""
    classes, carriers = list(classes), list(carriers)
    for counter, label_sets in (
        (DEAD_LETTERS, [(r,) for r in DEAD_LETTER_REASONS]),
        (REDIS_ERRORS, [(op,) for op in REDIS_OPS]),
        (MESSAGES_ENQUEUED, [(k, s) for k in classes for s in ENQUEUE_SOURCES]),
        (DUPLICATES, [(k,) for k in classes]),
        (OPTOUTS, [(a, s) for a in OPTOUT_ACTIONS for s in OPTOUT_SOURCES]),
        (MO_RESULTS, [(r,) for r in MO_RESULT_VALUES]),
        (RECEIPTS, [(c, r) for c in carriers for r in RECEIPT_RESULTS]),
        (INBOUND, [(c,) for c in carriers]),
        (PART_RESENDS, [(c,) for c in carriers]),
        (PDU_ERRORS, [(c, k) for c in carriers for k in PDU_ERROR_KINDS]),
        (SPOOLED, [(k, a) for k in SPOOL_KINDS for a in SPOOL_ACTIONS]),
        (POLICY_RELOADS, [(r,) for r in RELOAD_RESULTS]),
        (CONFIG_RELOADS, [(r,) for r in RELOAD_RESULTS]),
        (FANOUT, [(r,) for r in FANOUT_RESULTS]),
        (LINK_REQUESTS, [(k,) for k in LINK_KINDS]),
    ):
        for labels in label_sets:
            counter.labels(*labels)


def observe_many(child: Any, values: Iterable[float]) -> None:
    """``child.observe(v)`` for every value, with one update a bucket instead of one a
    value (a batch's observations; per-message observe() showed in the bench profile).
    Uses prometheus_client's Histogram internals (_upper_bounds, _buckets, _sum), the
    same arithmetic as its observe(): tests/test_metrics.py pins the equivalence. A
    child without them (a later prometheus_client) gets one observe() a value."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    if bounds is None or buckets is None or len(bounds) != len(buckets) \
            or not hasattr(child, "_sum"):
        for v in values:  # another prometheus_client inside: the public way
            child.observe(v)
        return
    counts = [0] * len(bounds)
    total = 0.0
    for v in values:
        total += v
        counts[bisect_left(bounds, v)] += 1  # the first bound >= v; the last is +Inf
    if not any(counts):
        return
    child._sum.inc(total)
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)
