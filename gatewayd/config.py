"""Typed configuration, loaded from TOML.

Two phases (as uvicorn does): ``load_config`` parses and validates the file into frozen
``msgspec.Struct``s, cheap and side-effect free; the daemon resolves files (policies,
state directory) later. Every error names the file, the key and what to do about it.
"""

from __future__ import annotations

import math
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
import phonenumbers

from gatewayd.errors import ConfigError

BindMode = Literal["transceiver", "transmitter", "receiver"]
LongMessages = Literal["udh", "payload"]
# How a message's remaining life goes into submit_sm's validity_period.
ValidityFormat = Literal["relative", "absolute", "none"]
# How the carrier writes a message's id in submit_sm_resp and in its receipt
# (carrier.ids.receipt_keys; Kannel's msg-id-type): "auto" guesses across bases.
ReceiptIds = Literal["auto", "same", "hex-to-decimal", "decimal-to-hex"]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class DaemonConfig(_Section, kw_only=True, frozen=True):
    # This daemon's own directory (locked: one daemon each): the receipt/MO spool, the
    # embedded Redis. "" = systemd's $STATE_DIRECTORY (StateDirectory=) when set, else
    # ".gatewayd" beside the config file. Relative paths resolve against its folder.
    state_dir: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Consumer name in the group; default "<hostname>-<digest of state_dir>": stable
    # across restarts of one instance, so a restart resumes its own pending entries.
    consumer: str = ""
    shutdown_timeout_s: float = 10.0
    housekeeping_interval_s: float = 1.0


class RedisConfig(_Section, kw_only=True, frozen=True):
    url: str = ""  # empty: embedded redis-server (demo/development only). REDIS_URL wins.
    prefix: str = "gw:"
    # Redis Cluster (also selected by a redis+cluster:// or rediss+cluster:// URL).
    cluster: bool = False
    # TLS (rediss:// URLs): CA bundle to verify the server, client certificate and key
    # for mutual TLS. Relative paths resolve against the config file's folder.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Connections the core may open (dispatch workers, receipts and MO, housekeeping,
    # campaigns), and, apart from them, those the HTTP API and the redirector share:
    # a request flood waits for (then gets 503 from) its own pool, never the core's.
    # Both pools wait for a free connection instead of failing. On a cluster they are
    # per node, and redis-py's cluster client raises when all are busy (a Redis error
    # the caller retries; the API answers 503).
    connections: int = 64
    intake_connections: int = 16
    # At start, how long the daemon keeps trying a Redis that cannot answer (not up yet,
    # a cluster master failing over, loading its data) before it gives up with exit 3
    # (systemd then restarts it); 0: give up at the first failure. The processes it
    # starts and `gatewayd webhooks run` wait the same (store.connection.redis_answers).
    startup_wait_s: float = 20.0


class QueueConfig(_Section, kw_only=True, frozen=True):
    # Priority classes, highest first; one stream each (<prefix>q:<class>).
    classes: list[str] = msgspec.field(
        default_factory=lambda: ["otp", "transactional", "marketing"]
    )
    # Optional anti-starvation weights: class -> share of reads when all classes have work.
    weights: dict[str, int] = msgspec.field(default_factory=dict)
    # Back-pressure: class -> most messages its stream may hold (ready + being sent);
    # intake past it is refused (HTTP 429 with the depth, client QueueFull) instead of
    # queued. A class not named has no limit.
    max_queued: dict[str, int] = msgspec.field(default_factory=dict)
    # Per-class default time to live (seconds) when a message has no expires_at.
    default_ttl_s: dict[str, float] = msgspec.field(default_factory=lambda: {"otp": 300.0})
    # Small batches keep the event loop's turns and Redis's queue short, so a code read
    # by the express worker is not stuck behind campaign batches (bench/priority, while
    # 100k marketing drain: OTP p99 24-33 ms at 64, 42-46 ms at 128, 58-80 ms at 256;
    # marketing +8 % at 128, +15-20 % at 256; README "Performance").
    read_batch: int = 64
    block_ms: int = 50
    reclaim_idle_s: float = 60.0
    max_deliveries: int = 5  # reads of one entry before it goes to the dead-letter stream
    max_attempts: int = 5  # retryable submit failures before a message ends as failed
    # Submits lost with their bind (written, connection gone before the answer) use no
    # attempt: a flapping SMSC never refused them. This bounds them apart (a message that
    # kills every bind it is written on must not loop for ever).
    max_bind_losses: int = 20
    retry_backoff_s: list[float] = msgspec.field(default_factory=lambda: [1.0, 5.0, 30.0, 120.0])
    events_maxlen: int = 1_000_000
    # An MO is stored once: the same sender, destination and text on the same carrier
    # again within this window is taken for the SMSC's redelivery (its deliver_sm_resp
    # was lost, or refused), not stored twice. SMSCs resend within minutes.
    mo_dedup_s: float = 600.0
    dead_maxlen: int = 100_000
    status_ttl_s: float = 7 * 86400.0
    # How far ahead a message's not_before / expires_at may be; further is refused with
    # that reason (0: status_ttl_s, so a scheduled message's record outlives its wait).
    schedule_horizon_s: float = 0.0
    receipt_timeout_s: float = 72 * 3600.0
    # A receipt that matches no message yet (it beat its submit_sm_resp, or belongs to a
    # submission never recorded) is retried this long, then counted as unmatched.
    early_receipt_hold_s: float = 120.0
    # Upgrading from a version without the seal (issue 14): entries queued before this
    # time (Unix seconds, by their stream id's Redis clock) may carry gatewayd's internal
    # fields bare, as that version wrote them, and are read as they are instead of being
    # dead-lettered. 0 (the default): every entry's internal fields must be sealed. Set it
    # to the upgrade's time, and back to 0 once those entries are drained.
    unsealed_before: float = 0.0
    max_segments: int = 10
    dispatch_workers: int = 4
    # An extra worker that reads only the highest class, this many at a time, so a
    # code does not wait behind the other workers' big batches (0 turns it off).
    express_batch: int = 32

    @property
    def horizon_s(self) -> float:
        """schedule_horizon_s, or the status records' TTL when it is 0."""
        return self.schedule_horizon_s or self.status_ttl_s


class HttpConfig(_Section, kw_only=True, frozen=True):
    enabled: bool = True
    listen: str = "127.0.0.1:8780"
    # SHA-256 hex digests of accepted API keys (`gatewayd hash-key` prints one).
    api_keys: list[str] = msgspec.field(default_factory=list)
    max_body_bytes: int = 2 * 1024 * 1024
    # Open connections at most; past it a new one is answered 503 and closed.
    max_connections: int = 1024
    # A connection must send a complete request head within this of opening or of its
    # previous answer (slowloris); an idle keep-alive connection is closed after it.
    idle_timeout_s: float = 15.0
    # A JSON body must arrive whole within this; a streamed upload, each chunk (408).
    body_timeout_s: float = 30.0
    # Processes serving this listener: the daemon and workers - 1 intake-only processes
    # it starts and supervises, sharing the port (SO_REUSEPORT; gatewayd.http.workers).
    workers: int = 1
    # Worker i (1 .. workers-1) serves its own /metrics, /healthz and /readyz on this
    # port + i - 1 at the listener's host; 0: the listener's port + 1000.
    worker_metrics_port: int = 0
    # false (workers >= 2): the daemon does not take http.listen's connections, only its
    # intake workers do, so an intake flood never runs in the dispatching loop; the
    # daemon's whole API (admin, carriers, /metrics) is on its own port
    # (worker_metrics_port + 0) instead of its probes alone.
    daemon_listens: bool = True
    # Niceness (0-19) the intake workers run at: when the cores are contended the
    # kernel runs the dispatching daemon first, and intake takes what is left.
    workers_nice: int = 0
    # POST /v1/messages served by httptools under a plain asyncio protocol on the API's
    # port (gatewayd.http.fastlane), every other request by aiohttp on the same
    # connection; false: aiohttp serves every request. Applies with a restart.
    fast_intake: bool = True
    # The fast lane starts at most this many requests a loop turn, the others in the
    # next turns in order, so the process's other work (in the daemon: codes on their
    # way to the SMSC) does not wait out a whole flood's turn; 0: no bound.
    turn_requests: int = 32


class PolicyConfig(_Section, kw_only=True, frozen=True):
    file: str = ""  # policy file (TOML); empty: no policies beyond the built-in checks


class PrivacyConfig(_Section, kw_only=True, frozen=True):
    # Recipient numbers never in clear in Redis key names, policy state, consent records
    # or the MO stream (gatewayd.store.privacy). Off by default.
    enabled: bool = False
    # The environment variable holding the secret (>= 16 bytes; never in this file).
    secret_env: str = "GATEWAYD_PRIVACY_SECRET"


class CmppConfig(_Section, kw_only=True, frozen=True):
    """``[carrier.cmpp]``: what a CMPP carrier needs beyond the neutral keys
    (gatewayd.carrier.cmpp.settings maps them)."""

    # 2.0 (most provincial ISMGs) or 3.0; CONNECT says which, SUBMIT/DELIVER differ.
    version: Literal["2.0", "3.0"] = "2.0"
    service_id: str = ""  # Service_Id (业务代码), at most 10 characters; given by the carrier
    msg_src: str = ""  # Msg_src (SP_Id); empty: the carrier's system_id
    # Fee defaults for industry SMS: the SP pays (Fee_UserType 2) and the subscriber is
    # not charged (FeeType 01 "free", FeeCode 0 fen). Carriers that bill per message
    # hand out other values.
    fee_user_type: int = 2
    fee_type: str = "01"
    fee_code: str = "000000"
    fee_terminal_id: str = ""
    msg_level: int = 0
    tp_pid: int = 0
    link_id: str = ""  # 3.0 LinkID: only for on-demand services; empty for notifications
    # ValId_Time for a message's life (an OTP's expires_at): "absolute" writes the expiry
    # in the ISMG's time zone (YYMMDDhhmmss032+ at UTC+8), "relative" writes the span
    # (YYMMDDhhmmss000R); SMPP-style time formats, which the CMPP specification adopts.
    validity: Literal["absolute", "relative"] = "absolute"
    utc_offset_h: float = 8.0  # the ISMG's clock: CONNECT timestamps, ValId_Time, reports
    # Non-ASCII text as UCS-2 (Msg_Fmt 8, what handsets get anyway) or as GBK (Msg_Fmt
    # 15, for ISMGs that ask for it; text GBK cannot hold still goes as UCS-2).
    encoding: Literal["ucs2", "gbk"] = "ucs2"
    # Dest_terminal_Id without the country code for mainland numbers (+8613800138000 ->
    # 13800138000), the form China Mobile's ISMGs document; False sends 8613800138000.
    national_destinations: bool = True
    active_test_retries: int = 3  # unanswered ACTIVE_TESTs before the link counts as dead


CarrierProtocol = Literal["smpp", "cmpp"]


class CarrierConfig(_Section, kw_only=True, frozen=True):
    name: str
    # The protocol the carrier speaks: "smpp" (3.4) or "cmpp" (China Mobile's CMPP
    # 2.0/3.0; its own keys in [carrier.cmpp], README "CMPP carriers").
    protocol: CarrierProtocol = "smpp"
    cmpp: CmppConfig = msgspec.field(default_factory=CmppConfig)
    host: str
    port: int = 2775
    system_id: str
    password: str = ""
    password_env: str = ""  # read the password from this environment variable instead
    system_type: str = ""
    bind_mode: BindMode = "transceiver"
    binds: int = 1
    # Extra receiver-only binds beside the `binds` above: the split layout (transmitters
    # submit, receivers take receipts and MO) on one carrier entry.
    receiver_binds: int = 0
    # The SMSC account receipts are correlated in and the TPS bucket belongs to. Default:
    # carrier entries with the same host, port and system_id are one account (named after
    # the first of them); give the same name to group entries on different hosts.
    account: str = ""
    window: int = 100
    tps: float = 100.0
    source_addr: str = ""
    source_ton: int = 5
    source_npi: int = 0
    dest_ton: int = 1
    dest_npi: int = 1
    data_coding_default: Literal["gsm7", "latin1", "ascii"] = "gsm7"  # what data_coding 0 means
    long_messages: LongMessages = "udh"
    udh_ref_bits: Literal[8, 16] = 8  # 8: 153 septets/67 UCS-2 a part; 16: 152/66
    registered_delivery: bool = True
    # validity_period of submit_sm from the message's expires_at (or its class's TTL):
    # relative (YYMMDDhhmmss000R), absolute (UTC, ...000+) or none (the SMSC's default).
    validity: ValidityFormat = "relative"
    enquire_link_s: float = 30.0
    response_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    auth_retry_s: float = 60.0  # wait after a refused bind (wrong password) before retrying
    tls: bool = False
    tls_verify: bool = True
    tls_ca: str = ""
    # How the carrier writes MO senders (required; gatewayd.policy.numbers): a country
    # calling code ("86": 13800138000 is +8613800138000) or "international" (senders
    # carry their country code, with or without +). An opt-out keyed under the wrong
    # form never matches the number's later messages.
    mo_country_code: str = ""
    # How receipts' ids relate to submit_sm_resp's (README "Receipt ids"): "auto" tries
    # the id as it is, then across hex/decimal, and can take another live message's key
    # when the SMSC's ids are sequential all-digit hex; "same", "hex-to-decimal" (the
    # response in hex, the receipt in decimal) or "decimal-to-hex" look up one key only.
    receipt_ids: ReceiptIds = "auto"


class RoutingConfig(_Section, kw_only=True, frozen=True):
    # Failover order for numbers no prefix matches; empty: every carrier in file order.
    default: list[str] = msgspec.field(default_factory=list)
    # Destination prefix (digits, no "+") -> carriers in failover order. Longest prefix wins.
    prefixes: dict[str, list[str]] = msgspec.field(default_factory=dict)


class SimulatorConfig(_Section, kw_only=True, frozen=True):
    """The built-in SMSC simulator, started in-process by `gatewayd run` (demo only)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "demo"
    password: str = "demo"
    receipt_delay_s: float = 0.2
    # A CMPP ISMG simulator beside it on this port (0: none), for a protocol = "cmpp"
    # carrier with system_id = cmpp_sp_id and the password cmpp_secret.
    cmpp_port: int = 0
    cmpp_sp_id: str = "901234"
    cmpp_secret: str = "demo"


class CampaignsConfig(_Section, kw_only=True, frozen=True):
    """Templates and campaigns (gatewayd.campaigns)."""

    # Templates loaded (upserted) at start and on reload; relative to the config file.
    templates_file: str = ""
    # Recipients a fan-out script call queues: bounds how long one call holds Redis.
    fanout_batch: int = 200
    # Fan-out waits while the campaign's class stream holds more entries than this, so
    # a million-recipient campaign never sits in Redis at once and the dispatchers
    # (codes first) set the pace.
    max_backlog: int = 20_000
    # Fan out in a child process of the daemon's (gatewayd.campaigns.worker), not in the
    # loop that dispatches codes: rendering a slice is ~1-2 ms of CPU. Needs the daemon
    # run with -c FILE (the child reads it); a config made in code fans out in-loop.
    # Off by default: no gain in codes' p99 was shown on 2 shared cores yet.
    fanout_process: bool = False
    # Niceness (0-19) of that child: on contended cores the dispatching daemon first.
    fanout_nice: int = 5
    # HOST:PORT of that child's /metrics; "" = the own port after the webhook sender's
    # (http.worker_metrics_port or http.listen's port + 1000, + http.workers + 1) when
    # http.listen has a fixed port; "off" = none. The daemon reads it at each scrape of
    # its own /metrics and adds gatewayd_campaign_recipients_total (campaigns.supervisor).
    fanout_metrics_listen: str = ""
    # Write each campaign message's "queued" status record and event at fan-out (off:
    # a million-recipient campaign would push a million "queued" events through the
    # capped events stream and triple the fan-out's Redis work; the campaign's funnel
    # counts them, and a message's record starts at its first transition).
    queued_records: bool = False
    # An opt-out within this many days of a campaign's send counts in its funnel.
    optout_window_days: float = 7.0
    # How long a recipient's campaign sends are remembered (cooling-off, attribution).
    recipient_ttl_days: float = 30.0
    # Pause a running campaign whose opt-out rate (opted out / delivered) exceeds this
    # once it has at least pause_min_delivered deliveries (0 = never).
    pause_optout_rate: float = 0.0
    pause_min_delivered: int = 1000
    # Campaigns with their own metric labels (the most recent active ones): bounded.
    metrics_max: int = 20


class LinksConfig(_Section, kw_only=True, frozen=True):
    """Short links: the public redirector, listening apart from the API."""

    enabled: bool = False
    listen: str = "127.0.0.1:8781"
    base_url: str = ""  # e.g. "https://s.example.cn/": what the codes are appended to
    ttl_s: float = 30 * 86400.0
    random_chars: int = 7  # unguessable part of a code (6 bits a character)
    # User-Agent substrings of link-preview fetchers (counted as previews, not clicks);
    # empty: the built-in list (gatewayd.campaigns.links.DEFAULT_PREVIEW_AGENTS).
    preview_agents: list[str] = msgspec.field(default_factory=list)
    fallback_url: str = ""  # where unknown and expired codes go (404 when empty)
    # Open connections at most; past it a new one is answered 503 and closed.
    max_connections: int = 4096


class WebhookEndpointConfig(_Section, kw_only=True, frozen=True):
    """One webhook subscription (gatewayd.webhooks): where, which events, how fast."""

    name: str
    url: str
    # "" = the default endpoint(s): events of tenants without endpoints of their own,
    # and MO; "*" = every event; else one tenant's events.
    tenant: str = ""
    # Event kinds: states ("submitted", "delivered", ...), "final" (every final state),
    # "deferred", "queued", "mo", "optout", "optin", or "*".
    events: list[str] = msgspec.field(default_factory=lambda: ["submitted", "final"])
    secret: str = ""
    secret_env: str = ""  # read the secret from this environment variable instead
    # "json": POST {"events": [...]} (batched); "kannel": a GET of ``url`` with Kannel's
    # dlr-url escapes (%d %i %I %p %P %A %T %t %F %a %%) filled in, one event a request.
    format: Literal["json", "kannel"] = "json"
    batch: int = 0  # events a request (0: webhooks.batch)
    concurrency: int = 4  # requests in flight at once
    rate_per_s: float = 0.0  # requests a second (0: no limit)
    timeout_s: float = 10.0
    # PEM file of the CA(s) an https:// endpoint's certificate is checked against instead
    # of the system's (an app behind a private CA); the name is checked as always.
    ca_file: str = ""


class WebhooksConfig(_Section, kw_only=True, frozen=True):
    """Signed webhooks (gatewayd.webhooks): state changes and MO pushed to apps."""

    # `gatewayd run` runs the sender (else run `gatewayd webhooks run` apart).
    enabled: bool = False
    # Where the daemon runs it: "process", a child process it starts and supervises
    # (restarted if it dies, HUP forwarded, stopped with it; gatewayd.webhooks.child),
    # so its CPU is not taken from the dispatching loop; "inline": in the daemon's loop.
    sender: Literal["process", "inline"] = "process"
    # The sender process's /metrics (and /healthz); "" = http.listen's host, port
    # http.worker_metrics_port (or http.listen's port + 1000) + http.workers, the next
    # own port after the intake workers'; "off" = none. The daemon reads it at each
    # scrape of its own /metrics and adds the sender's series (webhooks.process).
    metrics_listen: str = ""
    batch: int = 100
    # Retry a failing endpoint for this long (exponential back-off with jitter between
    # backoff_min_s and backoff_max_s), then its events go to its dead-letter stream.
    retry_for_s: float = 86400.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    # Events an endpoint may hold in memory before its later ones wait in Redis instead.
    max_in_memory: int = 5000
    # Deliver to private, loopback and link-local addresses (refused by default: no SSRF
    # through an endpoint or a message's callback_url).
    allow_private: bool = False
    # tenant -> URL prefixes a message's callback_url may start with ("" = messages
    # without a tenant); a tenant not listed may not name callback URLs.
    callback_prefixes: dict[str, list[str]] = msgspec.field(default_factory=dict)
    callback_secret_env: str = ""  # signs callback_url deliveries
    endpoints: list[WebhookEndpointConfig] = msgspec.field(default_factory=list)


class Config(_Section, kw_only=True, frozen=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)
    carrier: list[CarrierConfig] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    simulator: SimulatorConfig = msgspec.field(default_factory=SimulatorConfig)
    campaigns: CampaignsConfig = msgspec.field(default_factory=CampaignsConfig)
    links: LinksConfig = msgspec.field(default_factory=LinksConfig)
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    # Where this config came from; relative paths resolve against its folder.
    source: str = ""

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def state_path(self) -> Path:
        """The daemon's state directory (see DaemonConfig.state_dir)."""
        if self.daemon.state_dir:
            return self.resolve(self.daemon.state_dir)
        systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(systemd) if systemd else self.resolve(".gatewayd")

    def redis_url(self) -> str:
        return os.environ.get("REDIS_URL", "") or self.redis.url

    def carrier_password(self, carrier: CarrierConfig) -> str:
        if carrier.password_env:
            return os.environ.get(carrier.password_env, "")
        return carrier.password


@dataclass(frozen=True, slots=True)
class Account:
    """An SMSC account: the carrier entries that point at it (see ``accounts``)."""

    name: str
    carriers: tuple[str, ...]  # the entries on it, in file order
    tps: float  # the lowest tps of its entries: each entry states the account's cap

    @property
    def legacy_names(self) -> tuple[str, ...]:
        """Entry names an older gatewayd keyed receipts by, other than the account's."""
        return tuple(c for c in self.carriers if c != self.name)


def account_names(cfg: Config) -> dict[str, str]:
    """carrier name -> SMSC account name.

    An SMSC knows its clients by account (SMPP: system_id on a host and port), not by our
    carrier names, and sends a receipt to any bind of the account that can receive: with
    split binds, or two carrier entries on one account, it arrives on another entry's bind
    than the submit. So receipts are correlated per account, and the account's TPS cap is
    one bucket. An entry's account: its explicit ``account``; else the account of the first
    entry in file order with the same (host, port, system_id); else its own name (so a
    configuration with one entry per account keeps the Redis keys it had before).
    """
    by_identity: dict[tuple[str, int, str], str] = {}
    out: dict[str, str] = {}
    for c in cfg.carrier:
        identity = (c.host.lower(), c.port, c.system_id)
        name = c.account or by_identity.get(identity, c.name)
        by_identity.setdefault(identity, name)
        out[c.name] = name
    return out


def accounts(cfg: Config) -> dict[str, Account]:
    """account name -> Account, in file order."""
    names = account_names(cfg)
    members: dict[str, list[CarrierConfig]] = {}
    for c in cfg.carrier:
        members.setdefault(names[c.name], []).append(c)
    return {name: Account(name, tuple(c.name for c in cs), min(c.tps for c in cs))
            for name, cs in members.items()}


_PATH_RE = re.compile(r"`\$\.?([^`]*)`")


def _key_of(message: str) -> str:
    """Turn msgspec's `$.carrier[0].port` into `carrier[0].port`."""
    m = _PATH_RE.search(message)
    return m.group(1) if m else ""


def load_config(path: str | os.PathLike[str], *, need_secrets: bool = True) -> Config:
    """Read and validate a config file, raising ConfigError naming file, key and fix.

    ``need_secrets=False`` (commands that only talk to Redis, and check-config) does not
    require the carriers' ``password_env`` variables: under systemd they come from the
    unit's EnvironmentFile, which an operator's shell does not have."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from e
    try:
        cfg = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as e:
        msg = str(e)
        key = _key_of(msg)
        unknown = re.search(r"unknown field `([^`]*)`", msg)
        missing = re.search(r"missing required field `([^`]*)`", msg)
        if unknown:
            full = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
            raise ConfigError(
                f"{p}: {full}: unknown key (typo?); see config/gatewayd.example.toml "
                "for the keys each section takes"
            ) from e
        if missing:
            full = f"{key}.{missing.group(1)}" if key else missing.group(1)
            raise ConfigError(f"{p}: {full}: required key is missing; add it") from e
        detail = _PATH_RE.sub("", msg).replace(" - at ", "").strip()
        raise ConfigError(f"{p}: {key or '(top level)'}: {detail}") from e
    except msgspec.DecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    cfg = msgspec.structs.replace(cfg, source=str(p))
    validate(cfg, need_secrets=need_secrets)
    return cfg


def missing_secrets(cfg: Config) -> list[tuple[str, str]]:
    """(key, variable) of each ``carrier[i].password_env`` (and, in privacy mode,
    ``privacy.secret_env``) whose variable is not set."""
    out = [(f"carrier[{i}].password_env", c.password_env) for i, c in enumerate(cfg.carrier)
           if c.password_env and c.password_env not in os.environ]
    if cfg.privacy.enabled and cfg.privacy.secret_env not in os.environ:
        out.append(("privacy.secret_env", cfg.privacy.secret_env))
    return out


def validate(cfg: Config, *, need_secrets: bool = True) -> None:
    """Checks that need more than one key (types are already checked by msgspec)."""
    f = cfg.source or "<config>"

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{f}: {key}: {what}")

    if bool(cfg.redis.tls_cert) != bool(cfg.redis.tls_key):
        raise bad("redis.tls_cert", "set tls_cert and tls_key together (mutual TLS)")
    url = cfg.redis_url()
    problem = _redis_url_problem(url) if url else ""
    if problem:
        key = "REDIS_URL (environment)" if os.environ.get("REDIS_URL") else "redis.url"
        raise bad(key, problem)
    q = cfg.queue
    # Each dispatch worker (and the express worker) holds a connection through its
    # blocking read; receipts, housekeeping and the takeover need a few more.
    least = q.dispatch_workers + 8
    if not least <= cfg.redis.connections <= 10_000:
        raise bad("redis.connections", f"{cfg.redis.connections}: must be {least}-10000 "
                  f"(queue.dispatch_workers + 8: each worker holds one while it reads)")
    if not 1 <= cfg.redis.intake_connections <= 10_000:
        raise bad("redis.intake_connections", f"{cfg.redis.intake_connections}: must be "
                  "1-10000 (the HTTP API's and the redirector's own connections)")
    if not q.classes:
        raise bad("queue.classes", "needs at least one priority class, e.g. [\"otp\"]")
    if len(set(q.classes)) != len(q.classes):
        raise bad("queue.classes", "each class may appear once")
    for name in q.classes:
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", name):
            raise bad("queue.classes", f"{name!r}: use 1-32 characters of a-z 0-9 _ -")
    for key, table in (("queue.weights", q.weights), ("queue.default_ttl_s", q.default_ttl_s),
                       ("queue.max_queued", q.max_queued)):
        for name, value in table.items():
            if name not in q.classes:
                raise bad(f"{key}.{name}", f"not a class in queue.classes {q.classes}")
            if value <= 0:
                raise bad(f"{key}.{name}", "must be greater than 0")
    for key, ivalue in (
        ("queue.read_batch", q.read_batch),
        ("queue.max_deliveries", q.max_deliveries),
        ("queue.max_attempts", q.max_attempts),
        ("queue.max_bind_losses", q.max_bind_losses),
        ("queue.dispatch_workers", q.dispatch_workers),
        ("queue.max_segments", q.max_segments),
        ("queue.events_maxlen", q.events_maxlen),
    ):
        if ivalue < 1:
            raise bad(key, "must be at least 1")
    if q.mo_dedup_s <= 0:
        raise bad("queue.mo_dedup_s", "must be greater than 0 (seconds)")
    if q.express_batch < 0:
        raise bad("queue.express_batch", "must be 0 (off) or more")
    if q.schedule_horizon_s < 0:
        raise bad("queue.schedule_horizon_s", "must be 0 (status_ttl_s) or more")
    if q.unsealed_before < 0 or not math.isfinite(q.unsealed_before):
        raise bad("queue.unsealed_before", "must be 0 (off) or a time in Unix seconds")
    if q.block_ms < 1:
        raise bad("queue.block_ms", "must be at least 1 (0 would block forever)")
    if not cfg.carrier:
        raise bad("carrier", "at least one [[carrier]] is required")
    names: set[str] = set()
    for i, c in enumerate(cfg.carrier):
        k = f"carrier[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", c.name):
            raise bad(f"{k}.name", f"{c.name!r}: use 1-32 characters of A-Z a-z 0-9 _ -")
        if c.name in names:
            raise bad(f"{k}.name", f"carrier {c.name!r} is defined twice")
        names.add(c.name)
        if not c.password and not c.password_env:
            raise bad(f"{k}.password", "missing; set password or password_env (the SMPP "
                                       "password, or CMPP's shared secret)")
        if c.password and c.password_env:
            raise bad(f"{k}.password_env", "set password or password_env, not both")
        if need_secrets and c.password_env and c.password_env not in os.environ:
            raise bad(f"{k}.password_env", f"environment variable {c.password_env} is not set")
        if c.protocol == "cmpp":
            _validate_cmpp(k, c, cfg.carrier_password(c), bad)
        else:
            if len(cfg.carrier_password(c)) > 8:
                raise bad(f"{k}.password", "SMPP 3.4 passwords are at most 8 characters")
            if len(c.system_id) > 15 or not c.system_id:
                raise bad(f"{k}.system_id", "must be 1-15 characters (SMPP 3.4)")
            if len(c.system_type) > 12:
                raise bad(f"{k}.system_type", "at most 12 characters (SMPP 3.4)")
        if not 0 < c.port < 65536:
            raise bad(f"{k}.port", "must be 1-65535")
        if c.binds < 1:
            raise bad(f"{k}.binds", "must be at least 1")
        if c.receiver_binds < 0:
            raise bad(f"{k}.receiver_binds", "must be 0 or more")
        if c.account and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", c.account):
            raise bad(f"{k}.account", f"{c.account!r}: use 1-32 characters of A-Z a-z 0-9 _ -")
        if not 1 <= c.port <= 65535:
            raise bad(f"{k}.port", "a TCP port: 1-65535")
        if c.window < 1:
            raise bad(f"{k}.window", "must be at least 1 (1 = stop-and-wait)")
        if c.tps <= 0:
            raise bad(f"{k}.tps", "must be greater than 0 (messages per second for the account)")
        for key, fvalue in (
            ("enquire_link_s", c.enquire_link_s),
            ("response_timeout_s", c.response_timeout_s),
            ("reconnect_min_s", c.reconnect_min_s),
            ("reconnect_max_s", c.reconnect_max_s),
            ("auth_retry_s", c.auth_retry_s),
        ):
            if fvalue <= 0:
                raise bad(f"{k}.{key}", "must be greater than 0")
        if not c.mo_country_code:
            raise bad(f"{k}.mo_country_code", "required: how this carrier writes MO "
                      "senders, a country calling code for national numbers (e.g. \"86\") "
                      "or \"international\"")
        if c.mo_country_code != "international" and not _calling_code(c.mo_country_code):
            raise bad(f"{k}.mo_country_code", f"{c.mo_country_code!r}: not a country calling "
                      "code (1-3 digits without +, e.g. \"86\") nor \"international\"")
        if c.reconnect_max_s < c.reconnect_min_s:
            raise bad(f"{k}.reconnect_max_s", "must be >= reconnect_min_s")
        if c.protocol == "cmpp" and c.receipt_ids not in ("auto", "same"):
            raise bad(f"{k}.receipt_ids", "CMPP reports carry the SUBMIT_RESP's Msg_Id "
                      "itself: leave it out (or \"same\")")
    by_account: dict[str, CarrierConfig] = {}
    account_of = account_names(cfg)
    for i, c in enumerate(cfg.carrier):
        first = by_account.setdefault(account_of[c.name], c)
        if first.receipt_ids != c.receipt_ids:
            raise bad(f"carrier[{i}].receipt_ids", f"{c.receipt_ids!r}, but {first.name!r} "
                      f"on the same SMSC account says {first.receipt_ids!r}: a receipt may "
                      "come on any entry of the account; give them one value")
    pv = cfg.privacy
    if pv.enabled and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", pv.secret_env):
        raise bad("privacy.secret_env", "name the environment variable holding the secret, "
                                        "e.g. GATEWAYD_PRIVACY_SECRET")
    if pv.enabled and need_secrets and pv.secret_env not in os.environ:
        raise bad("privacy.secret_env", f"environment variable {pv.secret_env} is not set "
                                        "(the privacy secret: openssl rand -base64 32)")
    r = cfg.routing
    for name in r.default:
        if name not in names:
            raise bad("routing.default", f"unknown carrier {name!r}; carriers: {sorted(names)}")
    for prefix, chain in r.prefixes.items():
        if not prefix.isdigit():
            raise bad(f"routing.prefixes.{prefix}", "prefixes are digits only, no '+'")
        if not chain:
            raise bad(f"routing.prefixes.{prefix}", "needs at least one carrier")
        for name in chain:
            if name not in names:
                raise bad(f"routing.prefixes.{prefix}", f"unknown carrier {name!r}")
    listen = cfg.http.listen
    if cfg.http.enabled and not _listen_ok(listen):
        raise bad("http.listen", f"{listen!r}: use host:port with a port of 0-65535, e.g. "
                                 "\"127.0.0.1:8780\"")
    if cfg.simulator.enabled and not 0 <= cfg.simulator.port <= 65535:
        raise bad("simulator.port", "a TCP port: 1-65535 (0 = any free port)")
    for i, key in enumerate(cfg.http.api_keys):
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise bad(f"http.api_keys[{i}]", "store SHA-256 hex digests (gatewayd hash-key KEY)")
    for key, n in (("http.max_connections", cfg.http.max_connections),
                   ("links.max_connections", cfg.links.max_connections)):
        if not 1 <= n <= 1_000_000:
            raise bad(key, f"{n}: must be 1-1000000 (keep it under the daemon's file limit)")
    if not 1 <= cfg.http.workers <= 64:
        raise bad("http.workers", f"{cfg.http.workers}: must be 1-64 processes")
    if cfg.http.turn_requests < 0:
        raise bad("http.turn_requests", f"{cfg.http.turn_requests}: 0 (no bound) or more")
    if not 0 <= cfg.http.workers_nice <= 19:
        raise bad("http.workers_nice", f"{cfg.http.workers_nice}: a niceness of 0-19")
    if cfg.http.enabled and not cfg.http.daemon_listens and cfg.http.workers < 2:
        raise bad("http.daemon_listens", "false leaves the API port to the intake workers: "
                                         "set http.workers >= 2")
    if not 0 <= cfg.http.worker_metrics_port <= 65535 - 64:
        raise bad("http.worker_metrics_port", "a TCP port (0: the listener's port + 1000)")
    if cfg.http.enabled and cfg.http.workers > 1 and _listen_ok(listen):
        port = int(listen.rpartition(":")[2])
        if port == 0:
            raise bad("http.workers", "the processes share http.listen's port: give it a "
                                      "fixed port, not 0")
        if not cfg.http.worker_metrics_port and port + 1000 + cfg.http.workers > 65535:
            raise bad("http.worker_metrics_port", "the listener's port + 1000 is too high: "
                                                  "set a port for the workers' /metrics")
    for key, v in (("http.idle_timeout_s", cfg.http.idle_timeout_s),
                   ("http.body_timeout_s", cfg.http.body_timeout_s)):
        if not 0.1 <= v <= 3600:
            raise bad(key, f"{v}: must be 0.1-3600 seconds")
    _validate_campaigns(cfg, bad)
    _validate_webhooks(cfg, bad)


def _validate_cmpp(k: str, c: CarrierConfig, secret: str, bad: Any) -> None:
    """What a CMPP carrier's keys must be (the ISMG refuses or garbles anything else)."""
    if not re.fullmatch(r"[0-9]{6}", c.system_id):
        raise bad(f"{k}.system_id", "the SP id (企业代码): 6 digits, e.g. \"901234\"")
    if secret and (not secret.isascii() or len(secret) > 64):
        raise bad(f"{k}.password", "the shared secret: ASCII, at most 64 characters")
    if not re.fullmatch(r"[0-9]{1,21}", c.source_addr):
        raise bad(f"{k}.source_addr", "the access number (接入号, Src_Id): 1-21 digits, "
                                      "e.g. \"106900001234\"")
    if c.receiver_binds:
        raise bad(f"{k}.receiver_binds", "CMPP has no receiver-only connections; every "
                                         "connection carries reports and MO (use binds)")
    if c.bind_mode != "transceiver":
        raise bad(f"{k}.bind_mode", "CMPP connections always carry both ways; leave it out")
    if c.long_messages != "udh":
        raise bad(f"{k}.long_messages", "CMPP sends long messages as UDH parts only")
    if c.window > 64:
        raise bad(f"{k}.window", "ISMGs allow about 16 unanswered SUBMITs; at most 64")
    m = c.cmpp
    if not re.fullmatch(r"[0-9A-Za-z]{0,10}", m.service_id):
        raise bad(f"{k}.cmpp.service_id", "the service code (业务代码, Service_Id): at most "
                                          "10 letters and digits")
    if m.msg_src and not re.fullmatch(r"[0-9]{6}", m.msg_src):
        raise bad(f"{k}.cmpp.msg_src", "an SP id: 6 digits (empty: system_id)")
    if m.fee_user_type not in (0, 1, 2, 3):
        raise bad(f"{k}.cmpp.fee_user_type", "0 (the destination pays), 1 (the source), "
                                             "2 (the SP), 3 (fee_terminal_id)")
    if m.fee_user_type == 3 and not m.fee_terminal_id:
        raise bad(f"{k}.cmpp.fee_terminal_id", "required when fee_user_type = 3")
    if m.fee_type not in ("01", "02", "03", "04", "05"):
        raise bad(f"{k}.cmpp.fee_type", "\"01\" free, \"02\" per message, \"03\" monthly, "
                                        "\"04\" capped, \"05\" (the SP's own billing)")
    if not re.fullmatch(r"[0-9]{1,6}", m.fee_code):
        raise bad(f"{k}.cmpp.fee_code", "the fee in fen: 1-6 digits, e.g. \"000000\"")
    width = 32 if m.version == "3.0" else 21
    if len(m.fee_terminal_id) > width or not m.fee_terminal_id.isascii():
        raise bad(f"{k}.cmpp.fee_terminal_id", f"a number: at most {width} characters")
    if len(m.link_id) > 20 or not m.link_id.isascii():
        raise bad(f"{k}.cmpp.link_id", "at most 20 ASCII characters")
    for name in ("msg_level", "tp_pid"):
        if not 0 <= getattr(m, name) <= 255:
            raise bad(f"{k}.cmpp.{name}", "0..255")
    if not -12 <= m.utc_offset_h <= 14:
        raise bad(f"{k}.cmpp.utc_offset_h", "-12..14 (the ISMG's clock; Beijing: 8)")
    if m.active_test_retries < 1:
        raise bad(f"{k}.cmpp.active_test_retries", "at least 1")


def _validate_campaigns(cfg: Config, bad: Any) -> None:
    c, lk = cfg.campaigns, cfg.links
    if c.fanout_batch < 1 or c.fanout_batch > 5000:
        raise bad("campaigns.fanout_batch", "must be 1-5000")
    if c.max_backlog < c.fanout_batch:
        raise bad("campaigns.max_backlog", "must be at least campaigns.fanout_batch")
    if not 0 <= c.fanout_nice <= 19:
        raise bad("campaigns.fanout_nice", f"{c.fanout_nice}: a niceness of 0-19")
    if c.fanout_metrics_listen not in ("", "off") and not _listen_ok(c.fanout_metrics_listen):
        raise bad("campaigns.fanout_metrics_listen",
                  f"{c.fanout_metrics_listen!r}: HOST:PORT, or \"off\"")
    for key, v in (("optout_window_days", c.optout_window_days),
                   ("recipient_ttl_days", c.recipient_ttl_days)):
        if v <= 0:
            raise bad(f"campaigns.{key}", "must be greater than 0")
    if not 0 <= c.pause_optout_rate < 1:
        raise bad("campaigns.pause_optout_rate", "a fraction: 0.003 = 0.3 %; 0 = off")
    if c.metrics_max < 0:
        raise bad("campaigns.metrics_max", "must be 0 or more")
    if lk.enabled:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:\d+)?(/[A-Za-z0-9._~\-/]*)?",
                            lk.base_url):
            raise bad("links.base_url", f"{lk.base_url!r}: the public URL codes are "
                      "appended to, e.g. \"https://s.example.cn/\"")
        if not _listen_ok(lk.listen):
            raise bad("links.listen", f"{lk.listen!r}: use host:port with a port of 0-65535, "
                                      "e.g. \"0.0.0.0:8781\"")
        if cfg.http.enabled and lk.listen == cfg.http.listen and not lk.listen.endswith(":0"):
            raise bad("links.listen", "must differ from http.listen (the redirector faces "
                      "the internet; the API does not)")
    if not 4 <= lk.random_chars <= 22:
        raise bad("links.random_chars", "must be 4-22 (7 = one valid code in 4.4e12)")
    if lk.ttl_s <= 0:
        raise bad("links.ttl_s", "must be greater than 0")


WEBHOOK_KINDS = frozenset({"queued", "deferred", "submitted", "delivered", "undeliverable",
                           "expired", "rejected", "failed", "final", "mo", "optout", "optin",
                           "clicked", "*"})


def _validate_webhooks(cfg: Config, bad: Any) -> None:
    w = cfg.webhooks
    if w.metrics_listen not in ("", "off") and not _listen_ok(w.metrics_listen):
        raise bad("webhooks.metrics_listen", f"{w.metrics_listen!r}: HOST:PORT, or \"off\"")
    if not 1 <= w.batch <= 1000:
        raise bad("webhooks.batch", "must be 1-1000")
    if w.retry_for_s <= 0 or w.backoff_min_s <= 0 or w.backoff_max_s < w.backoff_min_s:
        raise bad("webhooks.retry_for_s", "retry_for_s and backoff_min_s must be > 0, "
                  "backoff_max_s >= backoff_min_s")
    for tenant, prefixes in w.callback_prefixes.items():
        for p in prefixes:
            if not re.match(r"https?://[^/?#]+/", p):
                raise bad(f"webhooks.callback_prefixes.{tenant or '(none)'}",
                          f"{p!r}: a prefix names scheme, host and a path, e.g. "
                          "https://app.example.com/hooks/")
    names: set[str] = set()
    for i, e in enumerate(w.endpoints):
        k = f"webhooks.endpoints[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", e.name) or e.name in names:
            raise bad(f"{k}.name", f"{e.name!r}: a unique name of 1-64 A-Z a-z 0-9 _ . -")
        names.add(e.name)
        if not re.match(r"https?://[^/?#]+", e.url):
            raise bad(f"{k}.url", f"{e.url!r}: an http:// or https:// URL")
        unknown = set(e.events) - WEBHOOK_KINDS
        if unknown or not e.events:
            raise bad(f"{k}.events", f"unknown kinds {sorted(unknown)}; use some of "
                      f"{sorted(WEBHOOK_KINDS)}")
        if e.batch < 0 or e.concurrency < 1 or e.rate_per_s < 0 or e.timeout_s <= 0:
            raise bad(k, "batch >= 0, concurrency >= 1, rate_per_s >= 0, timeout_s > 0")
        if e.ca_file:
            if not e.url.startswith("https://"):
                raise bad(f"{k}.ca_file", "only for an https:// url")
            try:
                ssl.create_default_context(cafile=e.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise bad(f"{k}.ca_file", f"{e.ca_file!r}: not a readable PEM file of "
                          f"CA certificates ({err})") from None


def holds_secrets(cfg: Config) -> bool:
    """A carrier password or a Redis password written in the file itself."""
    return (any(c.password for c in cfg.carrier) or bool(urlsplit(cfg.redis.url).password)
            or any(e.secret for e in cfg.webhooks.endpoints))


def warn_if_world_readable(path: str | os.PathLike[str]) -> str | None:
    """A config holding secrets should not be readable by everyone."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return f"{path}: readable by all users but may hold secrets; chmod o-r {path}"
    return None


def _calling_code(value: str) -> bool:
    """A country calling code some country uses (libphonenumber's metadata)."""
    return (value.isdigit() and len(value) <= 3
            and phonenumbers.region_code_for_country_code(int(value)) not in ("ZZ", "001"))


def _listen_ok(listen: str) -> bool:
    """host:port (IPv6 in brackets) with a port a socket can bind (0 = any free one)."""
    m = re.fullmatch(r"\[?[0-9A-Za-z.:\-]*\]?:(\d{1,5})", listen)
    return m is not None and int(m.group(1)) <= 65535


_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def cluster_seed_urls(url: str) -> list[str]:
    """A cluster URL's seed nodes, one URL each: ``redis+cluster://u:pw@h1:7000,h2:7000/0``
    names several (comma-separated, IPv6 in brackets), so a client starts while any one
    of them answers; any other URL is its own only seed."""
    parts = urlsplit(url)
    if not parts.scheme.endswith("+cluster") or "," not in parts.netloc:
        return [url]
    user, at, hosts = parts.netloc.rpartition("@")
    return [urlunsplit(parts._replace(netloc=f"{user}{at}{host.strip()}"))
            for host in hosts.split(",")]


def _redis_url_problem(url: str) -> str:
    """Why a Redis URL cannot work ("" when it may): caught by check-config, not at
    the daemon's first connection attempt."""
    seeds = cluster_seed_urls(url)
    if len(seeds) > 1:
        for n, seed in enumerate(seeds, 1):
            problem = _redis_url_problem(seed)
            if problem:
                return f"seed {n} of {len(seeds)}: {problem}"
        return ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a usable URL ({e}); e.g. redis://127.0.0.1:6379/0"
    if parts.scheme not in _REDIS_SCHEMES:
        return (f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not Redis's: "
                "use redis://host:port/db, rediss:// (TLS), unix:///path/redis.sock or "
                "redis+cluster://host:port[,host:port...]")
    if parts.scheme == "unix":
        return "" if parts.path else "unix:// needs the socket's path, e.g. unix:///run/redis.sock"
    if not parts.hostname:
        return "no host, e.g. redis://127.0.0.1:6379/0"
    if port == 0:
        return "port 0: give Redis's port, e.g. 6379"
    return ""
