"""The local Redis Cluster the cluster tests start: bench/local_cluster.py, shared with
bench/cluster_path.py (bench/ must not import tests/)."""

from bench.local_cluster import LocalCluster, cluster_port, redis_cli_binary

__all__ = ["LocalCluster", "cluster_port", "redis_cli_binary"]
