"""Config reload (SIGHUP, ``POST /admin/reload``): what changed, and what may change live.

``prepare`` reads the config file again and runs the checks ``gatewayd check-config``
runs (the file's keys, then its policy file); a file that fails them raises ConfigError
and nothing is touched, so the running configuration stays whole. ``diff`` compares the
running configuration with the new one key by key:

* ``[[carrier]]`` entries (by name): added, removed, changed (a new engine: its binds come
  up before the old ones drain, gatewayd.carrier.pool), or only re-tuned (``tps``,
  ``window``: applied to the binds in place);
* ``[routing]``: the new routes, at once;
* ``[http]``: ``api_keys``, ``max_body_bytes``, ``max_connections``, ``idle_timeout_s``,
  ``body_timeout_s`` apply to the running listener (``enabled`` and ``listen`` would
  need a new listener);
* ``[policy] file``: the policy is reloaded from it (as every reload does);
* anything else (Redis, queue classes, the state directory, ...): reported as needing a
  restart, by its dotted key, and left as it runs. ``adopt`` builds the configuration the
  daemon then runs: the live keys from the new file, the others as they were.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from gatewayd.config import CarrierConfig, Config, load_config
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.ops import metrics
from gatewayd.policy.engine import PolicyEngine

log = logging.getLogger("gatewayd.control")

# [http] keys the running listener takes; the rest of the section needs a restart.
HTTP_LIVE = ("api_keys", "max_body_bytes", "max_connections", "idle_timeout_s",
             "body_timeout_s")
# Carrier keys a running bind takes in place (no reconnect).
CARRIER_TUNING = ("tps", "window")


@dataclass(frozen=True)
class Plan:
    """What a reload changes. Names and dotted keys, in file order."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # a new engine (host, port, credentials, binds...)
    retuned: tuple[str, ...] = ()  # only tps/window: the running binds take them
    routing: bool = False
    http: tuple[str, ...] = ()  # [http] keys applied live
    policy_file: bool = False
    restart: tuple[str, ...] = field(default=())  # keys that need a restart to apply

    @property
    def carriers(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.retuned)

    def summary(self) -> dict[str, Any]:
        """The answer's body (and the log line's fields)."""
        return {
            "carriers": {"added": list(self.added), "removed": list(self.removed),
                         "changed": list(self.changed), "retuned": list(self.retuned)},
            "routing": self.routing,
            "http": list(self.http),
            "restart_needed": list(self.restart),
        }

    def message(self) -> str:
        parts = []
        for what, names in (("added", self.added), ("removed", self.removed),
                            ("changed", self.changed), ("re-tuned", self.retuned)):
            if names:
                parts.append(f"carriers {what}: {', '.join(names)}")
        if self.routing:
            parts.append("routing changed")
        if self.http:
            parts.append(f"http: {', '.join(self.http)}")
        if self.policy_file:
            parts.append("policy file changed")
        done = "; ".join(parts) if parts else "no carrier, routing or http change"
        if self.restart:
            done += f"; needs a restart: {', '.join(self.restart)}"
        return f"reloaded ({done})"


def prepare(source: str, *, classes: list[str]) -> tuple[Config, PolicyEngine]:
    """The new configuration and its policy, with check-config's checks (the carriers'
    ``password_env`` variables included: the running daemon needs them). The policy is
    built for the running ``classes`` (queue.classes changes only with a restart).
    Raises ConfigError naming the file, the key and the fix."""
    cfg = load_config(source)
    path = cfg.resolve(cfg.policy.file) if cfg.policy.file else None
    return cfg, PolicyEngine.load(path, classes=classes)


def _keys(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ (structs compared field by field)."""
    if isinstance(old, msgspec.Struct) and isinstance(new, msgspec.Struct):
        out: list[str] = []
        for name in old.__struct_fields__:
            out += _keys(getattr(old, name), getattr(new, name),
                         f"{prefix}.{name}" if prefix else name)
        return out
    return [] if old == new else [prefix]


def diff(old: Config, new: Config) -> Plan:
    before = {c.name: c for c in old.carrier}
    after = {c.name: c for c in new.carrier}
    changed: list[str] = []
    retuned: list[str] = []
    for name, c in after.items():
        prev = before.get(name)
        if prev is None or prev == c:
            continue
        if _retune_only(prev, c):
            retuned.append(name)
        else:
            changed.append(name)
    http = tuple(k for k in HTTP_LIVE if getattr(old.http, k) != getattr(new.http, k))
    restart: list[str] = []  # in the order of the config's sections
    for name in old.__struct_fields__:
        if name in ("carrier", "routing", "policy", "source"):
            continue
        restart += [k for k in _keys(getattr(old, name), getattr(new, name), name)
                    if name != "http" or k.split(".")[1] not in HTTP_LIVE]
    return Plan(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=tuple(changed), retuned=tuple(retuned),
        routing=old.routing != new.routing, http=http,
        policy_file=old.policy != new.policy, restart=tuple(restart),
    )


def _retune_only(old: CarrierConfig, new: CarrierConfig) -> bool:
    return msgspec.structs.replace(old, **{k: getattr(new, k) for k in CARRIER_TUNING}) == new


def adopt(old: Config, new: Config) -> Config:
    """The configuration to run: carriers, routing, policy and the live [http] keys
    from ``new``; every key that needs a restart as it runs now."""
    http = msgspec.structs.replace(old.http, **{k: getattr(new.http, k) for k in HTTP_LIVE})
    return msgspec.structs.replace(old, carrier=new.carrier, routing=new.routing,
                                   policy=new.policy, http=http)


class Listener(Protocol):
    """The running HTTP listener (gatewayd.http.server.HttpServer)."""

    def configure(self, *, api_key_hashes: list[str], max_body_bytes: int,
                  max_connections: int, idle_timeout_s: float,
                  body_timeout_s: float) -> None: ...


async def read_new(running: Config, load_policy: Callable[[], PolicyEngine],
                   who: str) -> tuple[Config, PolicyEngine]:
    """The file read again with ``prepare``'s checks (a config made in code: the running
    one, with only its policy read again). A file that fails them raises ConfigError,
    counted and logged as ``who``'s, and the caller changes nothing."""
    try:
        if running.source:
            return await asyncio.to_thread(prepare, running.source,
                                           classes=list(running.queue.classes))
        return running, load_policy()
    except ConfigError as e:
        metrics.CONFIG_RELOADS.labels("error").inc()
        metrics.POLICY_RELOADS.labels("error").inc()
        metrics.POLICY_RELOAD_FAILED.set(1)
        log.error("%s: reload failed; the running configuration stays: %s", who, e)
        raise


# The error codes of a failed reload (the answer's error.code; the HTTP status each
# gets is gatewayd.http.server's).
FAILED = "reload_failed"  # the file fails its checks: nothing changed
NOT_APPLIED = "reload_not_applied"  # valid, but could not be applied: nothing changed
INCOMPLETE = "reload_incomplete"  # the carriers switched, then a later step failed


def not_applied(who: str, e: Exception) -> tuple[bool, str, dict[str, Any]]:
    """A file that passed its checks but could not be applied, undone by the caller."""
    metrics.CONFIG_RELOADS.labels("error").inc()
    message = (f"reload not applied; the running configuration stays: "
               f"{type(e).__name__ + ': ' if not isinstance(e, GatewayError) else ''}{e}")
    log.error("%s: %s", who, message, exc_info=not isinstance(e, GatewayError))
    return False, message, {"error": NOT_APPLIED}


def incomplete(who: str, plan: Plan, e: Exception) -> tuple[bool, str, dict[str, Any]]:
    """A failure after the carriers took the new config: it runs, the rest is said."""
    metrics.CONFIG_RELOADS.labels("error").inc()
    message = (f"reload incomplete: the new carrier configuration runs, but finishing "
               f"the reload failed: {type(e).__name__}: {e} ({plan.message()})")
    log.error("%s: %s", who, message, exc_info=True)
    return False, message, {"error": INCOMPLETE, **plan.summary()}


def policy_taken() -> None:
    metrics.POLICY_RELOADS.labels("ok").inc()
    metrics.POLICY_RELOAD_FAILED.set(0)


def apply_http(listener: Listener, cfg: Config) -> None:
    """The live [http] keys (HTTP_LIVE) onto the running listener."""
    h = cfg.http
    listener.configure(api_key_hashes=list(h.api_keys), max_body_bytes=h.max_body_bytes,
                       max_connections=h.max_connections, idle_timeout_s=h.idle_timeout_s,
                       body_timeout_s=h.body_timeout_s)
