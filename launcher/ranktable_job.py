"""Rank-table mode (Ascend): find or build the HCCL rank table a job uses.

Used by `mindrun launch --launch_mode ranktable`, `mindrun ranktable generate` and `mindrun doctor`.
"""
import socket
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from launcher import devices, ranktable
from launcher.cluster import ClusterConfig, this_node
from launcher.discovery import resolve
from launcher.errors import LaunchError
from launcher.spec import LaunchSpec


def cluster_servers(cluster: ClusterConfig, node_rank: int = -1, source: Optional[str] = None,
                    hccn_conf: Optional[str] = None, this_devices: Optional[Sequence[int]] = None
                    ) -> List[ranktable.Server]:
    """(server_id, [(device, ip)]) per node of a cluster file: IPs from the file, or from hccn for this
    machine's node (whose physical devices `this_devices` may narrow, e.g. by --visible_devices)."""
    me = this_node(cluster, node_rank)
    source = source or cluster.device_ip_source
    servers = []
    for i, node in enumerate(cluster.nodes):
        ids = list(this_devices) if (i == me and this_devices is not None) else node.ids()
        configured = dict(zip(node.ids(), node.device_ips)) if node.device_ips else None
        if configured is None and i != me:
            raise LaunchError(f"{cluster.source}: node {node.host} has no device_ips and is not this machine; "
                              f"list them, or generate one table per node and merge them "
                              f"('mindrun ranktable merge')")
        ips = devices.lookup_ips(ids, configured, source, hccn_conf or cluster.hccn_conf)
        servers.append((node.host, [(d, ips[d]) for d in ids]))
    return servers


def this_host_servers(device_ids: Sequence[int], server_id: Optional[str] = None, source: str = "auto",
                      hccn_conf: str = devices.HCCN_CONF) -> List[ranktable.Server]:
    """One server: this machine (its hostname's address unless `server_id`), IPs from hccn."""
    ips = devices.lookup_ips(device_ids, None, source, hccn_conf)
    return [(server_id or resolve(socket.gethostname()), [(d, ips[d]) for d in device_ids])]


def build_for_spec(spec: LaunchSpec) -> Dict:
    """A rank table from the cluster file or from this node alone, with this node's physical devices."""
    if spec.cluster is not None:
        return ranktable.build(cluster_servers(spec.cluster, spec.node_rank, this_devices=spec.device_ids))
    if spec.worker_num != spec.local_worker_num:
        raise LaunchError("rank-table mode on several nodes needs --rank_table_file (merged with "
                          "'mindrun ranktable merge') or a --cluster file listing every node")
    return ranktable.build(this_host_servers(spec.device_ids))


def warn(message: Optional[str]) -> None:
    """Print a rank-table warning on stderr (nothing for None)."""
    if message:
        print(f"[mindrun] warning: {message}", file=sys.stderr, flush=True)


def prepare(spec: LaunchSpec) -> Tuple[str, Dict]:
    """The rank table path the workers get and the table: the given file as written, or one built and
    written atomically to <log_dir>/rank_table.json."""
    if spec.rank_table_file:
        table = ranktable.load(spec.rank_table_file)
        path = str(Path(spec.rank_table_file).resolve())
        warn(ranktable.order_warning(table, path))
    else:
        table = build_for_spec(spec)
        path = str(ranktable.write(table, spec.log_dir / "rank_table.json").resolve())
    ranktable.validate(table, path, world_size=spec.worker_num)
    return path, table
