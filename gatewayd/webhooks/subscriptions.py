"""Who wants which events: endpoints from the config and from Redis (added at run time
by `gatewayd webhooks add`), matched to an event by its tenant and kind in memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from aiohttp.abc import AbstractResolver

from gatewayd.config import WEBHOOK_KINDS, Config, WebhookEndpointConfig
from gatewayd.errors import ConfigError
from gatewayd.model import FINAL_STATES
from gatewayd.webhooks import targets

ALL_KINDS: Final = frozenset(WEBHOOK_KINDS - {"final", "*"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    tenant: str = ""
    kinds: frozenset[str] = frozenset({"submitted", *FINAL_STATES})
    secret: bytes = b""
    format: str = "json"
    batch: int = 100
    concurrency: int = 4
    rate_per_s: float = 0.0
    timeout_s: float = 10.0
    ca_file: str = ""  # the CAs its https certificate is checked against ("": the system's)
    source: str = "config"  # "config", "redis" or "callback"
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def expand(kinds: list[str]) -> frozenset[str]:
    out: set[str] = set()
    for k in kinds:
        if k == "*":
            out |= ALL_KINDS
        elif k == "final":
            out |= FINAL_STATES
        else:
            out.add(k)
    return frozenset(out)


def endpoint_of(spec: WebhookEndpointConfig, default_batch: int, source: str) -> Endpoint:
    secret = spec.secret
    if spec.secret_env:
        secret = os.environ.get(spec.secret_env, "")
    return Endpoint(
        name=spec.name, url=spec.url, tenant=spec.tenant, kinds=expand(spec.events),
        secret=secret.encode(), format=spec.format,
        batch=1 if spec.format == "kannel" else (spec.batch or default_batch),
        concurrency=spec.concurrency, rate_per_s=spec.rate_per_s, timeout_s=spec.timeout_s,
        ca_file=spec.ca_file, source=source, spec=msgspec.to_builtins(spec),
    )


def parse_spec(data: dict[str, Any], cfg: Config) -> WebhookEndpointConfig:
    """A runtime endpoint's spec, checked as the config checks its own (ConfigError)."""
    from gatewayd.config import validate

    try:
        spec = msgspec.convert(data, WebhookEndpointConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"webhook endpoint: {e}") from None
    probe = msgspec.structs.replace(
        cfg, webhooks=msgspec.structs.replace(cfg.webhooks, endpoints=[spec]))
    validate(probe, need_secrets=False)
    return spec


def from_config(cfg: Config) -> list[Endpoint]:
    w = cfg.webhooks
    return [endpoint_of(e, w.batch, "config") for e in w.endpoints]


def from_redis(raw: dict[str, str], cfg: Config) -> list[Endpoint]:
    """Endpoints stored in Redis (name -> JSON spec); a bad one is skipped, not fatal."""
    out = []
    for name, text in sorted(raw.items()):
        try:
            spec = parse_spec(msgspec.json.decode(text), cfg)
        except (ConfigError, msgspec.DecodeError):
            continue
        if spec.name == name:
            out.append(endpoint_of(spec, cfg.webhooks.batch, "redis"))
    return out


def callback_endpoint(url: str, cfg: Config) -> Endpoint:
    """A message's own callback_url as an endpoint of its own (named by its digest)."""
    env = cfg.webhooks.callback_secret_env
    secret = os.environ.get(env, "") if env else ""
    name = "cb-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return Endpoint(name=name, url=url, tenant="*", kinds=ALL_KINDS, secret=secret.encode(),
                    batch=cfg.webhooks.batch, source="callback")


def callback_allowed(url: str, tenant: str, cfg: Config) -> bool:
    """May a message of ``tenant`` name ``url`` as its callback_url? Only under one of
    the tenant's prefixes (webhooks.callback_prefixes)."""
    prefixes = cfg.webhooks.callback_prefixes.get(tenant, [])
    return any(url.startswith(p) for p in prefixes) and "@" not in urlsplit(url).netloc


class Router:
    """Endpoints for an event's (tenant, kind), cached: a dict lookup an event."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self._own = {e.tenant for e in endpoints if e.tenant not in ("", "*")}
        self.cache: dict[tuple[str, str], tuple[Endpoint, ...]] = {}

    def route(self, tenant: str, kind: str) -> tuple[Endpoint, ...]:
        key = (tenant, kind)
        hit = self.cache.get(key)
        if hit is None:
            default = tenant not in self._own
            hit = self.cache[key] = tuple(
                e for e in self.endpoints.values()
                if kind in e.kinds and (e.tenant == "*" or e.tenant == tenant
                                        or (default and e.tenant == "")))
        return hit


class TargetRefused(Exception):
    pass


async def check_target(url: str, allow_private: bool,
                       resolver: AbstractResolver | None = None) -> None:
    """Refuse (TargetRefused) a URL whose host resolves to a private, loopback,
    link-local, multicast or reserved address, unless ``allow_private``: no SSRF into
    the gateway's own network through an endpoint or a message's callback_url. An early,
    clear refusal: the connections themselves are checked again, on the addresses they
    use, by gatewayd.webhooks.targets.GuardedResolver."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"{url!r}: not an http(s) URL")
    if allow_private:
        return
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        if resolver is None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
            addresses = [str(info[4][0]) for info in infos]
        else:
            addresses = [h["host"] for h in await resolver.resolve(
                host, port, family=socket.AF_UNSPEC)]
    except OSError as e:
        raise TargetRefused(f"{host}: does not resolve ({e})") from None
    why = targets.refusal(host, addresses)
    if why:
        raise TargetRefused(why)
