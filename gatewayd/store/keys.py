"""Every Redis key name gatewayd uses, in one place (arq's constants.py habit).

Keys that one Lua script touches together share a hash tag ``{...}`` so the same code
runs on Redis Cluster; per-message and per-recipient keys spread over the slots.

Recipient numbers appear in key names (opt-outs, caps, duplicates) as their digits, or,
in privacy mode (``Keys(prefix, privacy)``), as a keyed token (gatewayd.store.privacy):
this class is the one place a number becomes part of a name, so that is the one place
the mode is applied. ``number_fields`` / ``open_number`` do the same for records that
keep a number.
"""

from __future__ import annotations

import hashlib
from typing import Final

from gatewayd.config import Config
from gatewayd.errors import ConfigError
from gatewayd.model import mask_number
from gatewayd.store.privacy import Privacy, PrivacyError

GROUP: Final = "gatewayd"  # consumer group on every priority stream


class Keys:
    __slots__ = ("_token", "prefix", "privacy")

    def __init__(self, prefix: str = "gw:", privacy: Privacy | None = None) -> None:
        self.prefix = prefix
        self.privacy = privacy
        self._token = privacy.token if privacy is not None else None

    def _n(self, number: str) -> str:
        """A number (digits) as key names carry it."""
        return number if self._token is None else self._token(number)

    # Queues -------------------------------------------------------------------------
    def queue(self, klass: str) -> str:
        """Priority stream of one class (consumer group GROUP), e.g. ``gw:q:{otp}``."""
        return f"{self.prefix}q:{{{klass}}}"

    def delayed(self, klass: str) -> str:
        """ZSET: encoded message -> due time (Unix s): not_before, deferrals, retries.

        Shares the class's hash tag with its stream so the mover's script is one slot.
        """
        return f"{self.prefix}delayed:{{{klass}}}"

    @property
    def dead(self) -> str:
        """Stream of entries that could not be processed: raw fields + reason."""
        return f"{self.prefix}dead"

    @property
    def events(self) -> str:
        """Stream of every state change, for upstream apps (capped)."""
        return f"{self.prefix}events"

    @property
    def inbound(self) -> str:
        """Stream of mobile-originated messages, for upstream apps (capped)."""
        return f"{self.prefix}mo"

    def mo_seen(self, carrier: str, source: str, destination: str, text: str,
                smsc_id: str = "") -> str:
        """STRING "stored" | "done" (TTL ``queue.mo_dedup_s``): an MO already in the MO
        stream, named by a digest of what an SMSC redelivery repeats: the carrier's id
        of the MO where it has one (CMPP), else its sender, destination and text (keyed
        in privacy mode: no number can be tested against it). Tagged with the MO
        stream's name so one script call writes the stream and these keys (one slot on
        a cluster)."""
        data = "\x00".join((carrier, source, destination, text, smsc_id)
                           if not smsc_id else (carrier, source, smsc_id)).encode()
        digest = (self.privacy.mac(data) if self.privacy is not None
                  else hashlib.blake2b(data, digest_size=16).hexdigest())
        return f"{self.prefix}mo:seen:{{{self.inbound}}}:{digest}"

    def idempotency(self, klass: str, key: str) -> str:
        """STRING: idempotency key -> first message id (24 h); scoped per class so the
        enqueue script touches one slot."""
        return f"{self.prefix}idem:{{{klass}}}:{key}"

    # Message state ------------------------------------------------------------------
    def status(self, msg_id: str) -> str:
        """HASH: the message's status record (state, reason, carrier, parts...)."""
        return f"{self.prefix}msg:{{{msg_id}}}"

    def correlation(self, account: str, smsc_id: str) -> str:
        """STRING: carrier message id -> "<our id> <part index>" (TTL: receipt timeout).

        Keyed by SMSC account (config.account_names), not carrier entry: a receipt may
        come on any bind of the account. With one entry per account the account is the
        carrier's name, as the key was before accounts existed."""
        return f"{self.prefix}smsc:{account}:{smsc_id}"

    @property
    def early_receipts(self) -> str:
        """ZSET of receipts that arrived before their submit_sm_resp was recorded."""
        return f"{self.prefix}early"

    @property
    def awaiting_receipt(self) -> str:
        """ZSET: message id -> receipt deadline; expired entries end as `expired`."""
        return f"{self.prefix}awaiting"

    @property
    def event_claims(self) -> str:
        """ZSET (Redis Cluster only): message id -> when a receipt handler's claim on
        publishing its final event goes stale (pipeline/inbound.py take_over_claims)."""
        return f"{self.prefix}claims"

    # Policies -----------------------------------------------------------------------
    def optout(self, number: str) -> str:
        """HASH: scope ("*" or a signature/sender) -> opted-out-at (Unix s)."""
        return f"{self.prefix}optout:{{{self._n(number)}}}"

    @property
    def optout_audit(self) -> str:
        """Stream: the consent log, every opt-out and opt-in with time, source, scope and
        category (gatewayd.consent.records; trimmed to the retention, 2 years by default)."""
        return f"{self.prefix}optout:audit"

    def consent_index(self, bucket: str) -> str:
        """HASH: number -> the consent stream ids of its records, for the numbers of one
        bucket (gatewayd.consent.records.bucket_of; expires with the retention)."""
        return f"{self.prefix}consent:ix:{{{bucket}}}"

    # Numbers in stored records --------------------------------------------------------
    def number_fields(self, digits: str) -> dict[str, str]:
        """How a record stores a number: ``{"number": digits}``; in privacy mode
        ``{"number": token, "number_enc": encrypted digits}`` (the token finds it)."""
        if self.privacy is None:
            return {"number": digits}
        return {"number": self.privacy.token(digits), "number_enc": self.privacy.seal(digits)}

    def open_number(self, fields: dict[str, str]) -> str:
        """The digits a record's ``number_fields`` hold; ``~<token>`` when they are
        encrypted and this process has no secret, or another one."""
        sealed = fields.get("number_enc", "")
        if not sealed:
            return fields.get("number", "")
        if self.privacy is not None:
            try:
                return self.privacy.open(sealed)
            except PrivacyError:
                pass
        return "~" + fields.get("number", "")

    def mo_sender(self, number: str) -> dict[str, str]:
        """The MO stream's sender fields: ``from`` as received; in privacy mode ``from``
        masked and ``from_enc`` encrypted (open it with gatewayd.store.privacy)."""
        if self.privacy is None:
            return {"from": number}
        return {"from": mask_number(number), "from_enc": self.privacy.seal(number)}

    def freq(self, number: str, bucket: str) -> str:
        """Frequency-cap counter for one recipient (hash tag: one slot per recipient)."""
        return f"{self.prefix}fc:{{{self._n(number)}}}:{bucket}"

    def token_bucket(self, name: str) -> str:
        """HASH: tokens + last refill time of a shared token bucket (a carrier account's
        also its learned rate, last cut and probe, and the cap last passed:
        lua/carrier_bucket.lua)."""
        return f"{self.prefix}tb:{{{name}}}"

    # Campaigns (gatewayd.campaigns) ------------------------------------------------
    def template(self, code: str) -> str:
        """HASH: one message template (campaigns.templates.Template's fields)."""
        return f"{self.prefix}tpl:{{{code}}}"

    @property
    def templates(self) -> str:
        """ZSET: template code -> created at (the registry's index)."""
        return f"{self.prefix}tpl:index"

    def campaign(self, campaign_id: str) -> str:
        """HASH: one campaign (campaigns.model.Campaign's fields, its cursor, counters)."""
        return f"{self.prefix}camp:{{{campaign_id}}}"

    def campaign_recipients(self, campaign_id: str) -> str:
        """STREAM: an upload's validated recipients, one entry per chunk of lines (the
        campaign's hash tag: the fan-out script reads it beside the campaign hash)."""
        return f"{self.prefix}camp:{{{campaign_id}}}:r"

    @property
    def campaigns(self) -> str:
        """ZSET: campaign id -> created at (every campaign, for listing)."""
        return f"{self.prefix}camps"

    @property
    def campaigns_active(self) -> str:
        """SET: ids of campaigns scheduled, running or paused (the runner's work list)."""
        return f"{self.prefix}camps:active"

    def funnel(self, name: str) -> str:
        """HASH: funnel counters of a campaign (name = its id) or of direct template sends
        (name = "~<template>|<tenant>"): "<stage>" and "<stage>|<variant>" -> count."""
        return f"{self.prefix}funnel:{{{name}}}"

    def link(self, code: str) -> str:
        """STRING: one short link, its fields packed (campaigns.links.pack): target,
        message, funnel, variant, campaign, template, recipient, created."""
        return f"{self.prefix}link:{{{code}}}"

    def link_counts(self, code: str) -> str:
        """HASH: a short link's clicks, first click and previews (made by the first
        request; the link's hash tag, its TTL)."""
        return f"{self.prefix}link:{{{code}}}:n"

    @property
    def link_seq(self) -> str:
        """STRING: the short-link counter (blocks are reserved with INCRBY); codes are
        its base62 digits plus random characters, so no two codes are ever equal."""
        return f"{self.prefix}link:seq"

    def marketing(self, number: str) -> str:
        """HASH per recipient (the recipient's hash tag): ``n`` marketing messages with
        links since the last click, ``last`` the latest one's time (cooling-off),
        ``o:<campaign>`` once an opt-out was counted in that campaign."""
        return self.marketing_of(self._n(number))

    def recipient(self, number: str) -> str:
        """A number (digits) as key names carry it: the digits, or in privacy mode its
        token. What a record stores to find the number's keys later without holding
        the number (a short link: the redirector resets the cooling-off streak)."""
        return self._n(number)

    def marketing_of(self, recipient: str) -> str:
        """``marketing`` of a number given as ``recipient`` gave it."""
        return f"{self.prefix}fc:{{{recipient}}}:mk"

    def campaign_send(self, number: str, campaign: str) -> str:
        """STRING "<time> <variant>": a campaign's last send to a recipient (opt-out
        attribution; one SET EX a message). Always ``marketing(number) + ":" + id``."""
        return self.freq(number, f"mk:{campaign}")

    @property
    def seal(self) -> str:
        """STRING: the deployment's secret that seals queue entries' internal fields
        (gatewayd.store.seal; made on first use; producers that only XADD must not
        read it)."""
        return f"{self.prefix}seal"

    # Webhooks (gatewayd.webhooks) ----------------------------------------------------
    @property
    def webhook_endpoints(self) -> str:
        """HASH: endpoint name -> its spec as JSON (endpoints added at run time)."""
        return f"{self.prefix}wh:endpoints"

    @property
    def webhook_cursor(self) -> str:
        """HASH: "events" / "mo" -> the stream entry id up to which every event is done
        (delivered, or in a retry queue or dead-letter stream): the sender resumes there."""
        return f"{self.prefix}wh:cursor"

    @property
    def webhook_callbacks(self) -> str:
        """HASH: message id -> its callback_url, from its first event with one until its
        final event (final receipts' events do not carry it)."""
        return f"{self.prefix}wh:callbacks"

    @property
    def webhook_callback_urls(self) -> str:
        """HASH: callback endpoint name (``cb-<digest>``) -> its URL, so a restarted
        sender finds the retry queues of callback URLs."""
        return f"{self.prefix}wh:cb:urls"

    @property
    def webhook_paused(self) -> str:
        """SET: names of paused endpoints (their events wait in their retry queues)."""
        return f"{self.prefix}wh:paused"

    def webhook_queue(self, endpoint: str) -> str:
        """ZSET: an endpoint's events waiting for a retry (or a resume): the event as
        JSON -> its events-stream time (ms), so they go out in stream order."""
        return f"{self.prefix}wh:{{{endpoint}}}:q"

    def webhook_dead(self, endpoint: str) -> str:
        """STREAM: an endpoint's events given up on: event (JSON), error, at, attempts."""
        return f"{self.prefix}wh:{{{endpoint}}}:dead"

    # Accounts (gatewayd.accounts) ---------------------------------------------------
    # A tenant's own keys share its hash tag: the quota script touches them together.
    @property
    def accounts(self) -> str:
        """HASH: tenant -> its account (JSON: keys' digests, limits, suspended)."""
        return f"{self.prefix}acct:all"

    @property
    def account_keys(self) -> str:
        """HASH: SHA-256 hex digest of an API key -> "<tenant> <key id>" (the lookup)."""
        return f"{self.prefix}acct:keys"

    def account_used(self, tenant: str) -> str:
        """HASH: key id -> last time (Unix s) the key was used, written at most every
        second or so per daemon."""
        return f"{self.prefix}acct:{{{tenant}}}:used"

    def account_bucket(self, tenant: str) -> str:
        """HASH {t, ts}: the account's token bucket (rate limit), shared by daemons."""
        return f"{self.prefix}acct:{{{tenant}}}:bucket"

    def account_day(self, tenant: str, day: str) -> str:
        """HASH: one UTC day's (YYYYMMDD) usage: "sent:<category>" (accepted by the API,
        what quotas count), "<final state>:<category>" from receipts -> count. 40 days."""
        return f"{self.prefix}acct:{{{tenant}}}:d:{day}"

    def account_month(self, tenant: str, month: str) -> str:
        """HASH: one UTC month's (YYYYMM) "sent:<category>" -> count. 400 days."""
        return f"{self.prefix}acct:{{{tenant}}}:m:{month}"

    # Live control of carriers (gatewayd.control) -------------------------------------
    @property
    def carrier_control(self) -> str:
        """HASH: "<carrier>:suspended" -> "1", "<carrier>:tps", "<carrier>:window" (the
        operator's overrides; absent: the config's), "<carrier>:restart" (a generation:
        each daemon restarts the carrier's binds when it goes up). Kept until changed."""
        return f"{self.prefix}carrier:control"

    @property
    def carrier_binds(self) -> str:
        """HASH: consumer -> JSON {at, binds, carriers}: each daemon's binds and what it
        applied, written every second (gatewayd carrier list reads them)."""
        return f"{self.prefix}carrier:binds"

    # Operations ---------------------------------------------------------------------
    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}alive:{consumer}"

    def lease(self, job: str) -> str:
        """STRING: holder token of a housekeeping job only one daemon runs at a time."""
        return f"{self.prefix}lease:{job}"


def keys_for(cfg: Config) -> Keys:
    """The key names of a configured deployment: its prefix, and its privacy mode with
    the secret from the environment (ConfigError naming the key when it is missing)."""
    privacy = None
    if cfg.privacy.enabled:
        try:
            privacy = Privacy.from_env(cfg.privacy.secret_env)
        except PrivacyError as e:
            raise ConfigError(f"{cfg.source or '<config>'}: privacy.secret_env: {e}") from e
    return Keys(cfg.redis.prefix, privacy)
