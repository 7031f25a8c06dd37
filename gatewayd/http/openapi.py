"""OpenAPI 3.0 description of the HTTP API, written by hand to match server.py.

Kept as plain data (no framework generating it) so it reads like documentation;
tests check it against the live routes and run schemathesis over it.
"""

from __future__ import annotations

from typing import Any

from gatewayd import __version__

_E164 = "^\\+?[1-9][0-9]{5,14}$"
_ID = "^[A-Za-z0-9._:\\-]{1,64}$"
_CODE = "^[A-Za-z0-9_.\\-]{1,64}$"
_CID = "^[A-Za-z0-9_\\-]{1,40}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json_body(_ref("Error"), description)


_TIME = {
    "description": "Unix seconds, or an RFC 3339 time with a UTC offset "
                   "(e.g. 2024-05-01T09:00:00+08:00)",
    "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
}

_SCHEDULED = {**_TIME, "description": f"{_TIME['description']}; at most "
                                      "queue.schedule_horizon_s ahead (default status_ttl_s)"}

_SCHEMAS: dict[str, Any] = {
    "Message": {
        "type": "object",
        "description": "One SMS job; the same fields as a stream entry. Unknown fields, "
                       "and gatewayd's internal ones (attempts, enqueued_at, campaign, "
                       "variant, links, ...), are rejected. Validation beyond this schema "
                       "(known category, segment count, ...) answers 422 with the field and "
                       "reason.",
        "required": ["to", "text"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": _ID,
                   "description": "Your unique id; the gateway assigns one when empty"},
            "to": {"type": "string", "pattern": _E164, "example": "+8613800138000"},
            "text": {"type": "string", "minLength": 1, "maxLength": 2000,
                     "description": "At most queue.max_segments SMS parts (default 10: "
                                    "1530 GSM-7 or 670 UCS-2 characters); longer: 422"},
            "category": {"type": "string", "default": "transactional",
                         "description": "Priority class (queue.classes), e.g. otp, "
                                        "transactional, marketing"},
            "from": {"type": "string", "maxLength": 20, "description": "SMPP source_addr"},
            "tenant": {"type": "string", "maxLength": 64},
            "ref": {"type": "string", "maxLength": 128,
                    "description": "Your reference, echoed in every event"},
            "idempotency_key": {"type": "string", "maxLength": 128,
                                "description": "A repeat within 24 h answers the first id "
                                               "with duplicate=true"},
            "carrier": {"type": "string", "description": "Force a carrier by name"},
            "not_before": _SCHEDULED,
            "expires_at": _SCHEDULED,
            "template": {"type": "string", "pattern": _CODE,
                         "description": "The template the text came from (a label here; "
                                        "see TemplateMessage to render one)"},
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "reason"],
        "properties": {
            "field": {"type": "string", "description": "Field name, or $ for the item itself"},
            "reason": {"type": "string"},
        },
    },
    "ItemResult": {
        "type": "object",
        "description": "Queued items carry id and duplicate; invalid items carry errors.",
        "required": ["index"],
        "properties": {
            "index": {"type": "integer", "minimum": 0,
                      "description": "Position in the request (0 for a single object)"},
            "id": {"type": "string"},
            "duplicate": {"type": "boolean",
                          "description": "true: an earlier message with the same "
                                         "idempotency_key or id was found; nothing new queued"},
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("ItemResult")}},
    },
    "Partial": {
        "type": "object",
        "description": "At least one item is invalid. The valid items WERE queued.",
        "required": ["error", "results", "accepted", "rejected"],
        "properties": {
            "error": _ref("ErrorDetail"),
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 1},
            "depth": {"type": "integer", "minimum": 0,
                      "description": "429 only: the messages the refused items' queue "
                                     "holds (queue.max_queued reached)"},
            "results": {"type": "array", "items": _ref("ItemResult")},
        },
    },
    "ErrorDetail": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": _ref("ErrorDetail"),
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
    },
    "Status": {
        "type": "object",
        "description": "The message's status record (kept queue.status_ttl_s, default 7 days)",
        "required": ["id"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "deferred", "submitted", "delivered",
                                                 "undeliverable", "expired", "rejected",
                                                 "failed"]},
            "reason": {"type": "string"},
            "category": {"type": "string"},
            "carrier": {"type": "string"},
            "segments": {"type": "integer"},
            "attempts": {"type": "integer"},
            "parts": {"type": "array", "items": {"type": "string"},
                      "description": "receipt state of each submitted PDU, in part order "
                                     "(\"\" until its receipt came)"},
            "receipts": {"type": "integer",
                         "description": "receipts expected when not one a segment "
                                        "(message_payload: one PDU for several segments)"},
            "sent_parts": {"type": "string",
                           "description": "a long message deferred with some parts accepted: "
                                          "those part indexes (the retry sends the others)"},
            "enqueued_at": {"type": "number"},
            "submitted_at": {"type": "number"},
            "done_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "until": {"type": "number"},
        },
    },
    "Optout": {
        "type": "object",
        "description": "The number's opt-out record after the action",
        "required": ["number", "opted_out"],
        "additionalProperties": True,
        "properties": {
            "number": {"type": "string"},
            "opted_out": {"type": "object", "additionalProperties": {"type": "number"},
                          "description": "field -> opted-out-at (Unix s) for every opt-out "
                                         "of the number: a scope (\"*\" = everything) or "
                                         "scope|category for one category; {} = none",
                          "example": {"*|marketing": 1714550000.0}},
            "preferences": {"type": "array", "items": {
                "type": "object", "required": ["scope", "category", "since"],
                "properties": {"scope": {"type": "string"},
                               "category": {"type": "string",
                                            "description": "\"\" = a plain opt-out"},
                               "since": {"type": "number"}}},
                "description": "The same, one row per opt-out"},
        },
    },
    "Reload": {
        "type": "object",
        "required": ["ok", "message"],
        "properties": {
            "ok": {"type": "boolean"},
            "message": {"type": "string",
                        "description": "What was applied; on failure the file, the key "
                                       "and the fix"},
            "carriers": {
                "type": "object",
                "description": "Carrier entries by name: added and changed ones bind "
                               "before the old binds drain; re-tuned ones (tps, window "
                               "only) change in place",
                "properties": {k: {"type": "array", "items": {"type": "string"}}
                               for k in ("added", "removed", "changed", "retuned")},
            },
            "routing": {"type": "boolean", "description": "[routing] changed (applied)"},
            "http": {"type": "array", "items": {"type": "string"},
                     "description": "[http] keys applied to the running listener"},
            "restart_needed": {
                "type": "array", "items": {"type": "string"},
                "description": "Dotted keys that changed but apply only after a restart "
                               "(e.g. redis.url, http.listen); they keep their running "
                               "values"},
            "error": _ref("ErrorDetail"),
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": True,
        "properties": {"status": {"type": "string", "enum": ["ok"]},
                       "uptime_s": {"type": "number"}, "consumer": {"type": "string"}},
    },
    "Template": {
        "type": "object",
        "description": "A message template; the text sent is 【signature】 + body with its "
                       "variables ({name:digits4-8}, {name:text<=10}, {name:decimal}, "
                       "{name:url}) filled in. Only approved templates send.",
        "required": ["signature", "category", "body"],
        "properties": {
            "code": {"type": "string", "pattern": _CODE},
            "name": {"type": "string"},
            "signature": {"type": "string", "example": "京东"},
            "category": {"type": "string", "example": "marketing"},
            "body": {"type": "string", "maxLength": 500,
                     "example": "{name:text<=10}，新鲜到货 {link:url} 回TD退订"},
            "status": {"type": "string", "enum": ["pending", "approved", "rejected"]},
            "reason": {"type": "string"},
            "created_at": {"type": "number"}, "updated_at": {"type": "number"},
            "approved_at": {"type": "number"},
        },
    },
    "Campaign": {
        "type": "object",
        "description": "A campaign: variants (template and weight each), tenant, status, "
                       "schedule, counters. Create with either template or variants.",
        "properties": {
            "id": {"type": "string", "pattern": _CID},
            "name": {"type": "string"},
            "template": {"type": "string", "description": "One template (variant A)"},
            "variants": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "template"],
                "properties": {"name": {"type": "string"}, "template": {"type": "string"},
                               "weight": {"type": "integer", "minimum": 1}}}},
            "tenant": {"type": "string"}, "sender": {"type": "string"},
            "source": {"type": "string", "description": "upload, or stream:<redis key>"},
            "rate": {"type": "number", "minimum": 0,
                     "description": "recipients a second at most (0 = as fast as the "
                                    "queue allows)"},
            "status": {"type": "string", "enum": ["draft", "scheduled", "running", "paused",
                                                  "done", "cancelled"]},
        },
    },
    "CampaignReport": {
        "type": "object",
        "description": "The campaign with its funnel: stages, rejected by reason, rates "
                       "with numerator and denominator, per variant, and the A/B test "
                       "(click rate with a 95 % Wilson interval, two-proportion z-test)",
        "additionalProperties": True,
        "properties": {"campaign": _ref("Campaign"), "funnel": {"type": "object"},
                       "variants": {"type": "object"},
                       "ab": {"type": "object", "nullable": True}},
    },
    "Upload": {
        "type": "object",
        "required": ["accepted", "rejected", "errors"],
        "properties": {
            "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
            "errors": {"type": "array", "items": {
                "type": "object", "properties": {"line": {"type": "integer"},
                                                 "field": {"type": "string"},
                                                 "reason": {"type": "string"}}}},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "additionalProperties": True,
        "properties": {
            "ready": {"type": "boolean"},
            "draining": {"type": "boolean"},
            "redis": {"type": "string", "example": "ok"},
            "carriers": {"type": "object", "additionalProperties": {"type": "string"},
                         "example": {"cmcc": "bound", "unicom": "no bind up"}},
            "binds": {"type": "array", "description": "Each carrier bind (an SMPP bind or "
                      "a CMPP connection): its protocol and state",
                      "items": {"$ref": "#/components/schemas/Bind"}},
            "error": {"type": "string"},
            "carriers_bound": {"type": "boolean",
                               "description": "At least one carrier bind is up (/readyz "
                                              "does not depend on it: messages queue)"},
        },
    },
    "Bind": {
        "type": "object",
        "required": ["carrier", "bind", "protocol", "version", "state"],
        "additionalProperties": False,
        "properties": {
            "carrier": {"type": "string", "example": "cmcc"},
            "bind": {"type": "integer", "minimum": 0},
            "protocol": {"type": "string", "enum": ["smpp", "cmpp"]},
            "version": {"type": "string", "example": "3.0",
                        "description": "3.4 for SMPP; 2.0 or 3.0 for CMPP"},
            "state": {"type": "string", "enum": ["connecting", "bound", "throttled",
                                                 "unbinding", "refused", "closed"]},
        },
    },
    "Limits": {
        "type": "object",
        "description": "What an account may send; empty lists and 0 mean no limit",
        "additionalProperties": False,
        "properties": {
            "rate_per_s": {"type": "number", "minimum": 0,
                           "description": "Token bucket shared by every daemon (429 "
                                          "rate_limited)"},
            "burst": {"type": "integer", "minimum": 0},
            "daily": {"type": "object", "additionalProperties": {"type": "integer",
                                                                 "minimum": 0},
                      "description": "category (or * for all) -> messages a UTC day "
                                     "(429 quota_exceeded, resets at 00:00 UTC)"},
            "monthly": {"type": "object", "additionalProperties": {"type": "integer",
                                                                   "minimum": 0},
                        "description": "category (or *) -> messages a UTC month"},
            "categories": {"type": "array", "items": {"type": "string"}},
            "priority_ceiling": {"type": "string",
                                 "description": "The highest class allowed, e.g. "
                                                "transactional: no otp"},
            "signatures": {"type": "array", "items": {"type": "string"},
                           "description": "Allowed 【signatures】, without brackets"},
            "senders": {"type": "array", "items": {"type": "string"}},
            "prefixes": {"type": "array", "items": {"type": "string", "example": "+86"}},
        },
    },
    "Account": {
        "type": "object",
        "required": ["tenant", "keys", "limits", "suspended"],
        "additionalProperties": True,
        "properties": {
            "tenant": {"type": "string"},
            "created_at": {"type": "number"},
            "suspended": {"type": "boolean"},
            "keys": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "label": {"type": "string"},
                "created_at": {"type": "number"},
                "expires_at": {"type": "number", "nullable": True},
                "last_used_at": {"type": "number", "nullable": True}}}},
            "limits": _ref("Limits"),
            "webhooks": {"type": "array", "items": {"type": "object"},
                         "description": "The tenant's webhook endpoints (show only)"},
        },
    },
    "NewKey": {
        "type": "object",
        "required": ["id", "key"],
        "properties": {"id": {"type": "string"},
                       "key": {"type": "string", "description": "Shown once, here"},
                       "expires_at": {"type": "number", "nullable": True}},
    },
    "Usage": {
        "type": "object",
        "description": "Counts by UTC day (newest first) and this month: "
                       "{what: {category: n}}; what is sent (accepted by the API, what "
                       "quotas count) or a final state from receipts (delivered, "
                       "undeliverable, expired...)",
        "additionalProperties": True,
        "properties": {
            "tenant": {"type": "string"},
            "days": {"type": "array", "items": {"type": "object"}},
            "month": {"type": "object"},
        },
    },
    "WebhookEndpoint": {
        "type": "object",
        "description": "An endpoint with its state and backlog (the secret is never shown)",
        "required": ["name", "url", "tenant", "source", "events", "paused", "queued", "dead"],
        "properties": {
            "name": {"type": "string"}, "url": {"type": "string"},
            "tenant": {"type": "string"},
            "source": {"type": "string", "enum": ["config", "redis"]},
            "events": {"type": "array", "items": {"type": "string"}},
            "format": {"type": "string", "enum": ["json", "kannel"]},
            "batch": {"type": "integer"}, "concurrency": {"type": "integer"},
            "rate_per_s": {"type": "number"}, "signed": {"type": "boolean"},
            "paused": {"type": "boolean"},
            "queued": {"type": "integer", "description": "Events in its retry queue"},
            "dead": {"type": "integer", "description": "Dead letters"},
        },
    },
    "WebhookSpec": {
        "type": "object",
        "description": "An endpoint kept in Redis (added or replaced), checked as the "
                       "config checks its endpoints; a private target (loopback, RFC 1918, "
                       "link-local...) is refused unless webhooks.allow_private",
        "required": ["name", "url"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string", "description": "http(s); for format kannel, with "
                                                     "Kannel's dlr-url escapes"},
            "tenant": {"type": "string", "default": "",
                       "description": "\"\" the default endpoint, \"*\" every event, or "
                                      "one tenant's"},
            "events": {"type": "array", "items": {"type": "string"},
                       "default": ["submitted", "final"],
                       "description": "Kinds: states, final, deferred, queued, mo, optout, "
                                      "optin, clicked or *"},
            "secret": {"type": "string", "description": "HMAC signing secret"},
            "secret_env": {"type": "string",
                           "description": "Read the secret from this environment variable"},
            "format": {"type": "string", "enum": ["json", "kannel"], "default": "json"},
            "batch": {"type": "integer", "minimum": 0, "default": 0},
            "concurrency": {"type": "integer", "minimum": 1, "default": 4},
            "rate_per_s": {"type": "number", "minimum": 0, "default": 0},
            "timeout_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                          "default": 10},
            "ca_file": {"type": "string", "default": "",
                        "description": "PEM file (on the gateway's host) of the CAs an "
                                       "https endpoint's certificate is checked against "
                                       "instead of the system's"},
        },
    },

    "Carrier": {
        "type": "object",
        "description": "A carrier: its effective settings (the operator's override, else "
                       "the config's), what each live daemon applied, and every daemon's "
                       "binds with state and counters",
        "required": ["name", "suspended", "tps", "window", "override", "binds"],
        "additionalProperties": True,
        "properties": {
            "name": {"type": "string"},
            "protocol": {"type": "string", "enum": ["smpp", "cmpp"]},
            "host": {"type": "string"}, "port": {"type": "integer"},
            "suspended": {"type": "boolean",
                          "description": "No new submits (routing takes the next carrier "
                                         "of the chain); receipts and MO still flow"},
            "tps": {"type": "number"}, "window": {"type": "integer"},
            "config": {"type": "object", "properties": {
                "tps": {"type": "number"}, "window": {"type": "integer"},
                "binds": {"type": "integer"}}},
            "override": {"type": "object", "properties": {
                "suspended": {"type": "boolean"},
                "tps": {"type": "number", "nullable": True},
                "window": {"type": "integer", "nullable": True},
                "restart": {"type": "integer",
                            "description": "Restart generation (each request adds one)"}}},
            "daemons": {"type": "object", "description": "consumer -> {suspended, tps, "
                                                         "window, restart} it applied",
                        "additionalProperties": {"type": "object"}},
            "binds": {"type": "array", "items": {"type": "object", "properties": {
                "daemon": {"type": "string"}, "index": {"type": "integer"},
                "state": {"type": "string"}, "mode": {"type": "string"},
                "window": {"type": "integer"}, "in_flight": {"type": "integer"},
                "tps_limit": {"type": "number"}, "submitted": {"type": "integer"},
                "reconnects": {"type": "integer"}, "last_error": {"type": "string"}}}},
            "submitted": {"type": "integer"}, "in_flight": {"type": "integer"},
            "bound": {"type": "integer", "description": "Binds up, every daemon"},
        },
    },
}


def _carrier_paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    """Carrier control (gatewayd/http/carriers.py), the admin role only: the same
    operations as `gatewayd carrier ...`; every daemon applies a change within a second."""
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$"}}
    errs = {**auth_errors,
            "404": _err("No such carrier, or carrier control is not served here")}
    one = _json_body(_ref("Carrier"), "The carrier after the change")

    def post(op_id: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": op_id, "summary": summary, "parameters": [name],
                         "responses": {"200": one, **errs}}}

    return {
        "/admin/carriers": {"get": {
            "operationId": "listCarriers",
            "summary": "Every carrier: settings, suspension, every daemon's binds",
            "responses": {"200": _json_body({"type": "object", "properties": {
                "carriers": {"type": "array", "items": _ref("Carrier")}}}, "Carriers"),
                **errs}}},
        "/admin/carriers/{name}": {
            "get": {"operationId": "showCarrier", "summary": "One carrier",
                    "parameters": [name], "responses": {"200": one, **errs}},
            "patch": {"operationId": "tuneCarrier",
                      "summary": "Change its tps and/or window live (null: the config's)",
                      "parameters": [name],
                      "requestBody": {"required": True, "content": {"application/json": {
                          "schema": {"type": "object", "additionalProperties": False,
                                     "minProperties": 1, "properties": {
                                         "tps": {"type": "number", "nullable": True,
                                                 "exclusiveMinimum": True, "minimum": 0,
                                                 "maximum": 1000000},
                                         "window": {"type": "integer", "nullable": True,
                                                    "minimum": 1, "maximum": 65535,
                                                    "description": "CMPP: at most 64"}}}}}},
                      "responses": {"200": one, **errs,
                                    "422": _err("Invalid tps or window (the message says "
                                                "which)")}},
        },
        "/admin/carriers/{name}/suspend": post(
            "suspendCarrier", "No new submits to it (traffic fails over by routing, or "
                              "waits queued); receipts and MO still flow"),
        "/admin/carriers/{name}/resume": post("resumeCarrier", "Submit to it again"),
        "/admin/carriers/{name}/restart": post(
            "restartCarrier", "Every daemon unbinds its binds and binds again"),
    }


def _webhook_paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    """Webhook endpoints (gatewayd/http/webhooks.py), the admin role only: the same
    operations as `gatewayd webhooks ...`."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    count = {"name": "count", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 0},
             "description": "At most this many, oldest first (0: all)"}
    missing = {"404": _err("No such endpoint, or webhook admin is not served here")}
    bad = {"422": _err("Invalid input (the message says which field), a private target, "
                       "or a config endpoint (changed in the config)")}
    errs = {**auth_errors, **missing}
    state = _json_body({"type": "object", "properties": {
        "name": {"type": "string"}, "paused": {"type": "boolean"}}}, "Its state")

    def op(method: str, op_id: str, summary: str, ok: dict[str, Any],
           params: list[dict[str, Any]] | None = None,
           more: dict[str, Any] | None = None) -> dict[str, Any]:
        return {method: {"operationId": op_id, "summary": summary,
                         "parameters": params or [name],
                         "responses": {"200": ok, **errs, **(more or {})}}}

    return {
        "/admin/webhooks": {
            "get": {"operationId": "listWebhooks",
                    "summary": "Every endpoint (config and Redis) with state and backlog",
                    "responses": {"200": _json_body({"type": "object", "properties": {
                        "endpoints": {"type": "array", "items": _ref("WebhookEndpoint")}}},
                        "Endpoints"), **errs}},
            "post": {"operationId": "addWebhook",
                     "summary": "Add or replace an endpoint kept in Redis (senders pick it "
                                "up within a second)",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _ref("WebhookSpec")}}},
                     "responses": {"201": _json_body(_ref("WebhookEndpoint"), "Added"),
                                   **errs, **bad}},
        },
        "/admin/webhooks/{name}": op(
            "delete", "removeWebhook", "Remove an endpoint kept in Redis",
            _json_body({"type": "object", "properties": {"removed": {"type": "string"}}},
                       "Removed"), more=bad),
        "/admin/webhooks/{name}/pause": op(
            "post", "pauseWebhook", "Hold its deliveries (events wait in Redis)", state),
        "/admin/webhooks/{name}/resume": op(
            "post", "resumeWebhook", "Deliver its events again", state),
        "/admin/webhooks/{name}/test": op(
            "post", "testWebhook", "One signed test event to it now; its answer",
            _json_body({"type": "object", "required": ["ok", "status"], "properties": {
                "ok": {"type": "boolean"},
                "status": {"type": "integer", "description": "HTTP status; 0 no answer"},
                "elapsed_s": {"type": "number"}, "body": {"type": "string"},
                "error": {"type": "string"}}}, "The test request's outcome")),
        "/admin/webhooks/{name}/dead": op(
            "get", "webhookDeadLetters", "Its dead letters, oldest first",
            _json_body({"type": "object", "properties": {"dead": {"type": "array",
                "items": {"type": "object", "properties": {
                    "dead_id": {"type": "string"}, "error": {"type": "string"},
                    "at": {"type": "number"}, "event": {"type": "object"}}}}}},
                "Dead letters"), [name, count], bad),
        "/admin/webhooks/{name}/replay": op(
            "post", "replayWebhook", "Its dead letters back into its retry queue",
            _json_body({"type": "object", "properties": {"replayed": {"type": "integer"}}},
                       "How many went back (0: none were dead)"), [name, count], bad),
    }


def _account_paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    """Accounts (gatewayd/http/accounts.py): /admin/accounts... need an admin key,
    /v1/account... an account's own key."""
    tenant = {"name": "tenant", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"}}
    days = {"name": "days", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 40, "default": 7}}
    missing = {"404": _err("No such account, or accounts are not served here")}
    bad = {"422": _err("Invalid input (the message says which field)")}
    forbidden = {"403": _err("An account's key (sending role) on an admin route, or a "
                             "suspended account")}
    errs = {**auth_errors, **forbidden, **missing}
    account = _json_body(_ref("Account"), "The account")
    usage = _json_body(_ref("Usage"), "Usage")
    body = {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": {
            "expires_at": {"type": "number", "minimum": 0},
            "label": {"type": "string"}}}}}}

    def post(op: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": op, "summary": summary, "parameters": [tenant],
                         "responses": {"200": account, **errs}}}

    return {
        "/admin/accounts": {
            "get": {"operationId": "listAccounts", "summary": "Every account",
                    "responses": {"200": _json_body({"type": "object", "properties": {
                        "accounts": {"type": "array", "items": _ref("Account")}}},
                        "Accounts"), **errs}},
            "post": {"operationId": "createAccount",
                     "summary": "Create an account and (unless key is false) its first key",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["tenant"], "properties": {
                             "tenant": {"type": "string"}, "limits": _ref("Limits"),
                             "key": {"type": "boolean", "default": True}}}}}},
                     "responses": {"201": _json_body({"type": "object", "properties": {
                         "account": _ref("Account"), "key": _ref("NewKey")}},
                         "Created; the key is shown once"),
                         **errs, "409": _err("The account exists"), **bad}},
        },
        "/admin/accounts/{tenant}": {"get": {
            "operationId": "showAccount",
            "summary": "An account: key ids and times, limits, webhook endpoints",
            "parameters": [tenant], "responses": {"200": account, **errs}}},
        "/admin/accounts/{tenant}/usage": {"get": {
            "operationId": "accountUsage", "summary": "An account's usage",
            "parameters": [tenant, days], "responses": {"200": usage, **errs, **bad}}},
        "/admin/accounts/{tenant}/keys": {"post": {
            "operationId": "addAccountKey",
            "summary": "A new key (old keys stay valid: rotation)", "parameters": [tenant],
            "requestBody": body,
            "responses": {"201": _json_body(_ref("NewKey"), "The key, shown once"),
                          **errs, **bad}}},
        "/admin/accounts/{tenant}/keys/{key_id}": {"delete": {
            "operationId": "revokeAccountKey", "summary": "Revoke a key",
            "parameters": [tenant, {"name": "key_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
            "responses": {"200": _json_body({"type": "object", "properties": {
                "revoked": {"type": "string"}}}, "Revoked"), **errs}}},
        "/admin/accounts/{tenant}/limits": {"patch": {
            "operationId": "setAccountLimits",
            "summary": "Merge these limits into the account's", "parameters": [tenant],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("Limits")}}},
            "responses": {"200": account, **errs, **bad}}},
        "/admin/accounts/{tenant}/suspend": post(
            "suspendAccount", "Refuse the account's requests (403) until resumed"),
        "/admin/accounts/{tenant}/resume": post("resumeAccount", "Accept them again"),
        "/v1/account": {"get": {
            "operationId": "myAccount", "summary": "The key's own account",
            "responses": {"200": account, **errs}}},
        "/v1/account/usage": {"get": {
            "operationId": "myUsage", "summary": "The key's own account's usage",
            "parameters": [days], "responses": {"200": usage, **errs, **bad}}},
    }


def _campaign_paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    """Templates, campaigns and conversions (gatewayd/http/campaigns.py)."""
    code = {"name": "code", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": _CODE}}
    cid = {"name": "id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": _CID}}
    missing = {"404": _err("Unknown, or templates and campaigns are not served here")}
    conflict = {"409": _err("Not allowed in the campaign's status (the message says why)")}
    tpl = _json_body(_ref("Template"), "The template")
    camp = _json_body(_ref("Campaign"), "The campaign")

    def move(op: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": op, "summary": summary, "parameters": [cid],
                         "responses": {"200": camp, **auth_errors, **missing, **conflict}}}

    return {
        "/v1/templates": {"get": {
            "operationId": "listTemplates", "summary": "Every template",
            "responses": {"200": _json_body({"type": "object", "properties": {
                "templates": {"type": "array", "items": _ref("Template")}}}, "Templates"),
                **auth_errors, **missing}}},
        "/v1/templates/{code}": {
            "parameters": [code],
            "put": {"operationId": "putTemplate",
                    "summary": "Create or change a template (a changed text is pending again)",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("Template")}}},
                    "responses": {"200": tpl, "400": _err("Not a JSON object"), **auth_errors,
                                  **missing, "422": _err("Invalid template")}},
            "get": {"operationId": "getTemplate", "summary": "A template and its variables",
                    "responses": {"200": tpl, **auth_errors, **missing}},
            "delete": {"operationId": "deleteTemplate", "summary": "Delete a template",
                       "responses": {"200": _json_body({"type": "object"}, "Deleted"),
                                     **auth_errors, **missing}},
        },
        "/admin/templates/{code}/approve": {"post": {
            "operationId": "approveTemplate",
            "summary": "Approve (after the content and keyword checks of its fixed text; a "
                       "failing check rejects it with that reason)",
            "parameters": [code], "responses": {"200": tpl, **auth_errors, **missing}}},
        "/admin/templates/{code}/reject": {"post": {
            "operationId": "rejectTemplate", "summary": "Reject, with an optional reason",
            "parameters": [code],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"reason": {"type": "string"}}}}}},
            "responses": {"200": tpl, "400": _err("Not a JSON object"), **auth_errors,
                          **missing}}},
        "/v1/campaigns": {
            "post": {"operationId": "createCampaign", "summary": "Create a draft campaign",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("Campaign")}}},
                     "responses": {"201": camp, "400": _err("Not a JSON object"),
                                   **auth_errors, **missing, "409": _err("The id is taken"),
                                   "422": _err("Invalid campaign")}},
            "get": {"operationId": "listCampaigns", "summary": "The latest 100 campaigns",
                    "responses": {"200": _json_body({"type": "object", "properties": {
                        "campaigns": {"type": "array", "items": _ref("Campaign")}}},
                        "Campaigns"), **auth_errors, **missing}},
        },
        "/v1/campaigns/{id}": {"get": {
            "operationId": "getCampaign", "summary": "A campaign and its funnel",
            "parameters": [cid],
            "responses": {"200": _json_body(_ref("CampaignReport"), "The funnel"),
                          **auth_errors, **missing}}},
        "/v1/campaigns/{id}/report": {"get": {
            "operationId": "campaignReport",
            "summary": "The funnel as an HTML page (chart, rates, A/B test)",
            "parameters": [cid],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {
                "schema": {"type": "string"}}}}, **auth_errors, **missing}}},
        "/v1/campaigns/{id}/recipients": {"post": {
            "operationId": "uploadRecipients",
            "summary": "Append recipients to a draft (streamed; rows validated one by one)",
            "parameters": [cid],
            "requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
            "responses": {"200": _json_body(_ref("Upload"), "Counted; the first 100 "
                                            "refused rows with line, field and reason"),
                          **auth_errors, **missing, **conflict,
                          "415": _err("Neither text/csv nor application/x-ndjson")}}},
        "/v1/campaigns/{id}/start": {"post": {
            "operationId": "startCampaign",
            "summary": "Schedule (start_at, Unix s) or start now",
            "parameters": [cid],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"start_at": {"type": "number"}}}}}},
            "responses": {"200": camp, "400": _err("Not a JSON object"), **auth_errors,
                          **missing, **conflict, "422": _err("Bad start_at")}}},
        "/v1/campaigns/{id}/pause": move("pauseCampaign", "Pause the fan-out and sending"),
        "/v1/campaigns/{id}/resume": move("resumeCampaign", "Resume a paused campaign"),
        "/v1/campaigns/{id}/cancel": move("cancelCampaign",
                                          "Cancel: queued messages are rejected"),
        "/v1/conversions": {"post": {
            "operationId": "reportConversions",
            "summary": "Report conversions (counted once a message, in its funnel)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["ids"], "properties": {"ids": {
                    "type": "array", "minItems": 1, "maxItems": 1000,
                    "items": {"type": "string", "pattern": _CODE}}}}}}},
            "responses": {"200": _json_body({"type": "object", "properties": {"results": {
                "type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "result": {"type": "string", "enum": [
                        "converted", "duplicate", "unknown"]}}}}}}, "Per id"),
                "400": _err("Not a JSON object"), **auth_errors, **missing,
                "413": _err("More than 1000 ids"), "422": _err("Bad ids")}}},
    }


def openapi_spec(
    max_items: int, max_body_bytes: int, classes: list[str] | None = None
) -> dict[str, Any]:
    """The spec, with the live limits (and, when given, the configured classes) filled in."""
    auth_errors = {
        "401": _err("Missing or wrong API key (unknown, revoked or expired)"),
        "403": _err("An account's key on a route of the admin role, or a suspended "
                    "account"),
        "503": _err("Redis unreachable, or the API's Redis connections busy (overload); "
                    "retry after the Retry-After header's seconds"),
    }
    number = {"name": "number", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": _E164},
              "description": "E.164 number, e.g. +8613800138000"}
    scope = {"name": "scope", "in": "query", "required": False,
             "schema": {"type": "string", "default": "*", "minLength": 1, "maxLength": 64,
                        "pattern": "^[^\\x00-\\x1f|]{1,64}$"},
             "description": "\"*\" (everything, the default) or a signature/sender"}
    category = {"name": "category", "in": "query", "required": False,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "description": "Only this category (a queue class among the policy's "
                               "[optout] categories, e.g. marketing); none = a plain "
                               "opt-out of everything the policy suppresses"}
    invalid_number = {"422": _err("Not an E.164 number, a bad scope, or a category "
                                  "recipients may not opt out of alone")}
    since = {"name": "since", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0, "maximum": 1e11},
             "description": "Records from this time on (the time recorded): Unix seconds, "
                            "or an ISO 8601 time with an offset (2024-05-01T00:00:00+08:00)"}
    until = {**since, "name": "until", "description": "Records up to this time"}
    optout_ok = {"200": _json_body(_ref("Optout"), "The number's opt-out record")}
    schemas = dict(_SCHEMAS)
    if classes:
        message = dict(schemas["Message"])
        props = dict(message["properties"])
        props["category"] = {**props["category"], "enum": list(classes)}
        message["properties"] = props
        schemas["Message"] = message
    # A message by template: the Message fields with template and params, no text.
    tm = dict(schemas["Message"])
    tprops = {k: v for k, v in tm["properties"].items() if k not in ("text", "links")}
    tprops["template"] = {"type": "string", "pattern": _CODE,
                          "description": "An approved template's code (otherwise 422)"}
    tprops["params"] = {"type": "object", "additionalProperties": {
        "oneOf": [{"type": "string"}, {"type": "number"}]},
        "description": "The template's variables, each validated by its type (422 names "
                       "params.<name> and why)"}
    schemas["TemplateMessage"] = {
        **tm, "required": ["to", "template", "params"], "properties": tprops,
        "description": "One SMS rendered from an approved template at intake (its "
                       "category is the template's); url variables become short links"}
    item = {"oneOf": [_ref("Message"), _ref("TemplateMessage")]}
    schemas["Submit"] = {
        "oneOf": [_ref("Message"), _ref("TemplateMessage"),
                  {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}],
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "gatewayd HTTP API",
            "version": __version__,
            "description": "Submit SMS jobs into gatewayd's priority queues, read their "
                           "status, manage opt-outs; health, readiness and Prometheus "
                           f"metrics. Request bodies are limited to {max_body_bytes} bytes "
                           f"and {max_items} messages.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/messages": {"post": {
                "operationId": "submitMessages",
                "summary": "Queue one message or a batch",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("Submit")}}},
                "responses": {
                    "202": _json_body(_ref("Accepted"), "Every message was queued"),
                    "400": _err("Not JSON (or nested too deep), an empty array, or neither "
                                "object nor array"),
                    **auth_errors,
                    "408": _err("The body did not arrive within http.body_timeout_s"),
                    "413": _err(f"Body over {max_body_bytes} bytes or over {max_items} items"),
                    "409": _json_body(_ref("Partial"),
                                      "Some items reuse an id already used by another "
                                      "message (and no other item is invalid); the "
                                      "others were queued"),
                    "422": _json_body(_ref("Partial"),
                                      "Some items are invalid (with an account's key also: "
                                      "naming another tenant, or outside the account's "
                                      "categories, prefixes, senders or signatures); the "
                                      "valid ones were queued"),
                    "429": _json_body({"oneOf": [_ref("Error"), _ref("Partial")]},
                                      "Back-pressure, nothing wrong with the items: an "
                                      "account's rate (rate_limited) or daily/monthly quota "
                                      "(quota_exceeded) would be exceeded, or the request "
                                      "holds more messages than its burst (an Error body: "
                                      "nothing was queued; its limit, category, allowed, "
                                      "used and resets_at say which); or some items' queue "
                                      "is full (queue_full, queue.max_queued: a Partial body "
                                      "whose depth says how full; the others were queued). "
                                      "Retry after the Retry-After header's seconds"),
                    "503": _err("The gateway is draining (shutting down), Redis is "
                                "unreachable, or the API's Redis connections are busy "
                                "(overload), or the Redis ACL refused a command "
                                "(store_denied); retry after the Retry-After header's "
                                "seconds"),
                },
            }},
            "/v1/messages/{id}": {"get": {
                "operationId": "getMessage",
                "summary": "A message's status record",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": _json_body(_ref("Status"), "The status record"),
                    **auth_errors,
                    "404": _err("Unknown id, or its record expired"),
                },
            }},
            "/v1/consent": {"get": {
                "operationId": "exportConsent",
                "summary": "Export consent records (opt-outs and opt-ins with their source)",
                "parameters": [
                    {"name": "number", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": _E164},
                     "description": "Only this number's records"},
                    since, until,
                    {"name": "format", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["jsonl", "csv"],
                                "default": "jsonl"}},
                ],
                "responses": {
                    "200": {"description": "One record a line, oldest first: id, at, "
                                           "action (out/in), number, scope, category, "
                                           "source (mo:<carrier>, api, cli, import), text "
                                           "(the MO reply), note",
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                        "text/csv": {"schema": {"type": "string"}}}},
                    **auth_errors,
                    "422": _err("A bad number, time or format"),
                },
            }},
            "/v1/optouts/{number}": {
                "parameters": [number, scope, category],
                "post": {"operationId": "addOptout", "summary": "Opt a number out",
                         "responses": {**optout_ok, **auth_errors, **invalid_number}},
                "delete": {"operationId": "removeOptout",
                           "summary": "Opt a number back in",
                           "responses": {**optout_ok, **auth_errors, **invalid_number}},
                "get": {"operationId": "checkOptout", "summary": "Is this number opted out?",
                        "responses": {**optout_ok, **auth_errors, **invalid_number}},
            },
            "/admin/reload": {"post": {
                "operationId": "reloadConfig",
                "summary": "Reload the config and policy files (like SIGHUP; admin role)",
                "description": "Carriers, routing and the [http] limits and keys apply "
                               "live, without losing messages in flight; keys that cannot "
                               "are listed in restart_needed.",
                "responses": {
                    "200": _json_body(_ref("Reload"), "Reloaded: what changed"),
                    **auth_errors,
                    "422": _json_body(_ref("Reload"),
                                      "The file fails its checks; the running "
                                      "configuration stays (message says why)"),
                    "409": _json_body(_ref("Reload"),
                                      "The file passes its checks but cannot be "
                                      "applied: reload_not_applied (the running "
                                      "configuration stays) or reload_incomplete "
                                      "(the new carriers run; message says what failed)"),
                },
            }},
            **_campaign_paths(auth_errors),
            **_account_paths(auth_errors),
            **_webhook_paths(auth_errors),
            **_carrier_paths(auth_errors),
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                      "content": {"text/plain": {
                                          "schema": {"type": "string"}}}}},
            }},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness: the process answers",
                "security": [],
                "responses": {"200": _json_body(_ref("Health"), "Alive")},
            }},
            "/readyz": {"get": {
                "operationId": "readyz",
                "summary": "Readiness for load balancers: this process accepts intake "
                           "(Redis reachable, not draining); carriers_bound says whether "
                           "binds are up, but messages queue while they are not",
                "security": [],
                "responses": {
                    "200": _json_body(_ref("Ready"), "Ready"),
                    "503": _json_body(_ref("Ready"), "Not ready; the body says why"),
                },
            }},
            "/readyz/carriers": {"get": {
                "operationId": "readyzCarriers",
                "summary": "At least one carrier bind is up (for monitoring)",
                "security": [],
                "responses": {
                    "200": _json_body(_ref("Ready"), "Bound"),
                    "503": _json_body(_ref("Ready"), "No bind up; the body says which"),
                },
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0 document",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key: an admin key (http.api_keys holds its "
                               "SHA-256 digest, gatewayd hash-key KEY) or an account's key "
                               "(gwk_..., gatewayd account add-key), whose account is the "
                               "tenant of everything it sends",
            }},
            "schemas": schemas,
        },
    }
