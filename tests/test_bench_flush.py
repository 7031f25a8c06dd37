"""bench.harness.Rig.flush: FLUSHDB ASYNC on a real Redis (a blocking FLUSHDB after a run
of millions of keys held Redis past the client's timeout). Seen on the wire with MONITOR."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis

from bench import harness


def test_flush_empties_the_database_with_flushdb_async(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.execute_command("DEBUG", "POPULATE", 200_000, "bench:key")
        assert client.dbsize() >= 200_000
        where = urlsplit(redis_url)
        with socket.create_connection((where.hostname, where.port), timeout=10) as mon:
            mon.sendall(b"MONITOR\r\n")
            assert mon.recv(64).startswith(b"+OK")
            rig = harness.Rig.__new__(harness.Rig)  # Redis only: no simulator, no files
            rig.redis_url = redis_url
            rig.flush()
            seen = b""
            while b"flushdb" not in seen.lower() or not seen.endswith(b"\r\n"):
                chunk = mon.recv(4096)
                assert chunk, seen
                seen += chunk
        line = next(x for x in seen.split(b"\r\n") if b"flushdb" in x.lower())
        assert b'"ASYNC"' in line.upper(), line
        assert client.dbsize() == 0  # gone at once; the memory is freed in the background
    finally:
        client.close()
