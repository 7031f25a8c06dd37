"""What issue 15's ordering costs on Redis Cluster, beside a single Redis.

Intake: ``QueueStore.enqueue`` of -n messages in chunks of 1000 (the client's chunk),
measured three ways in one run: on a single Redis; on a local 3-master cluster through
the single-Redis code path (``QueueStore.cluster`` off: before issue 14's merge one
pipeline whose commands reach their nodes side by side, unordered; since, issue 14's
two round trips, record then entry, with no staging), the baseline of what staging
costs; and on the cluster as shipped (pipeline/staging.py: stage, record, announce,
promote). Dispatch outcome: a batch of --batch "submitted" records with a correlation
key each and their XACK/XDEL, as Dispatcher._process writes them: in one pipeline
(single Redis; the cluster before) or correlation keys, then records, then acks (the
cluster as shipped). Figures: messages per second (wall) and client CPU per message,
median of --runs with min and max. Loopback: round trips here cost ~0.1 ms, so on a
network each extra round trip a chunk adds its RTT per 1000 messages at intake and per
--batch messages at dispatch.

    python -m bench.cluster_path [-n 20000] [--batch 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary
from bench.harness import private_redis
from gatewayd.config import Config
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.queue import AckBatch, QueueStore
from gatewayd.store.connection import connect
from gatewayd.store.keys import GROUP, Keys
from tests.cluster_helpers import LocalCluster

CLASSES = ("otp", "transactional", "marketing")


def _msgs(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(id=f"{tag}-{i}", to=f"+86138{i:08d}", text=f"bench {i}",
                            category=CLASSES[i % 3], enqueued_at=time.time())
            for i in range(n)]


async def _intake(qs: QueueStore, n: int, tag: str) -> tuple[float, float]:
    msgs = _msgs(n, tag)
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, 1000):
        await qs.enqueue(msgs[start:start + 1000], source="bench")
    return n / (time.perf_counter() - w0), (time.process_time() - c0) / n * 1e6


async def _dispatch(qs: QueueStore, n: int, batch: int, tag: str,
                    ordered: bool) -> tuple[float, float]:
    """Records + acks of n messages already read into the consumer group."""
    redis = qs.redis
    await qs.ensure_groups()
    entries = []
    for klass in CLASSES:
        got = await redis.xreadgroup(GROUP, "bench", {qs.streams[klass]: ">"}, count=n)
        entries += [(klass, eid) for _, items in got for eid, _ in items]
    msgs = {f"{tag}-{i}": m for i, m in enumerate(_msgs(len(entries), tag))}
    w0, c0 = time.perf_counter(), time.process_time()
    ids = list(msgs)
    now = time.time()
    for start in range(0, len(entries), batch):
        pipe = redis.pipeline(transaction=False)
        book = qs.ledger.book()
        acks = AckBatch()
        for (klass, eid), mid in zip(entries[start:start + batch], ids[start:start + batch],
                                     strict=True):
            qs.ledger.record(book, msgs[mid], "submitted", now, carrier="sim",
                             carrier_id=mid, segments=1)
            book.correlate(qs.keys.correlation("sim", mid), f"{mid} 0")
            acks.add(qs.streams[klass], eid)
        if ordered:
            await book.confirm_correlations(redis)
        book.flush(pipe)
        if ordered:
            await pipe.execute()
            pipe = redis.pipeline(transaction=False)
        acks.flush(pipe)
        await pipe.execute()
    return len(entries) / (time.perf_counter() - w0), \
        (time.process_time() - c0) / max(1, len(entries)) * 1e6


async def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = Keys()
    cfg = Config()
    out: dict[str, dict[str, list[float]]] = {}

    def note(name: str, rate: float, cpu_us: float) -> None:
        d = out.setdefault(name, {"msg_s": [], "client_cpu_us": []})
        d["msg_s"].append(rate)
        d["client_cpu_us"].append(cpu_us)

    with private_redis(0) as port, tempfile.TemporaryDirectory(prefix="gw-bench-cl-") as d:
        cluster = LocalCluster(Path(d))
        cluster.start()
        try:
            single = connect(f"redis://127.0.0.1:{port}/0")
            clus = connect(cluster.url)
            for r in range(args.runs):
                for name, client, ordered in (("single", single, False),
                                              ("cluster, single-Redis path", clus, False),
                                              ("cluster ordered (shipped)", clus, True)):
                    await client.flushall()
                    qs = QueueStore(client, keys, cfg, "bench")
                    qs.cluster = ordered  # False on a cluster: the one-pipeline path
                    tag = f"r{r}"
                    note(f"intake {name}", *await _intake(qs, args.n, tag))
                    note(f"dispatch {name}", *await _dispatch(qs, args.n, args.batch, tag,
                                                              ordered))
            await single.aclose()
            await clus.aclose()
        finally:
            cluster.stop()
    result: dict[str, Any] = {k: {m: summary(v) for m, v in d.items()} for k, d in out.items()}
    for stage in ("intake", "dispatch"):
        base = result[f"{stage} single"]["msg_s"]["median"]
        before = result[f"{stage} cluster, single-Redis path"]["msg_s"]["median"]
        for name in ("single", "cluster, single-Redis path", "cluster ordered (shipped)"):
            r = result[f"{stage} {name}"]
            print(f"{stage:8s} {name:28s} {r['msg_s']['median']:9.0f} msg/s "
                  f"(min {r['msg_s']['min']:.0f}, max {r['msg_s']['max']:.0f}); "
                  f"client CPU {r['client_cpu_us']['median']:.1f} us/msg; "
                  f"x{r['msg_s']['median'] / base:.2f} of single, "
                  f"x{r['msg_s']['median'] / before:.2f} of that path")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
