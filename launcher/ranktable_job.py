"""Rank-table mode (Ascend): find or build the HCCL rank table and this node's (rank, device) pairs."""
import socket
from pathlib import Path
from typing import List, Tuple

from launcher import devices, ranktable
from launcher.discovery import is_local, resolve
from launcher.errors import LaunchError
from launcher.spec import LaunchSpec


def this_server_id(table, spec: LaunchSpec) -> str:
    """Which server of `table` this node is: the cluster file's node, a local address, or node_rank."""
    servers = [s["server_id"] for s in table["server_list"]]
    if spec.cluster is not None and spec.node_rank >= 0:
        host = spec.cluster.nodes[spec.node_rank].host
        if host in servers:
            return host
    local = [s for s in servers if is_local(s)]
    if len(local) == 1:
        return local[0]
    if spec.node_rank >= 0 and spec.node_rank < len(servers):
        return sorted(servers)[spec.node_rank]
    raise LaunchError(f"cannot tell which server of the rank table this machine is (servers: {servers}); "
                      f"pass --node_rank")


def build_for_spec(spec: LaunchSpec) -> dict:
    """A rank table from the cluster file (device IPs from it or from hccn) or from this node alone."""
    cluster = spec.cluster
    if cluster is not None:
        servers = []
        for i, node in enumerate(cluster.nodes):
            if node.device_ips:
                ips = dict(zip(node.ids(), node.device_ips))
            elif i == spec.node_rank or (spec.node_rank < 0 and is_local(node.host)):
                ips = devices.discover_device_ips(node.ids(), cluster.device_ip_source
                                                  if cluster.device_ip_source != "config" else "auto",
                                                  cluster.hccn_conf)
            else:
                raise LaunchError(f"{cluster.source}: node {node.host} has no device_ips and is not this "
                                  f"machine; list them, or generate one table per node and merge them "
                                  f"('mindrun ranktable merge')")
            servers.append((node.host, [(d, ips[d]) for d in node.ids()]))
        return ranktable.build(servers)
    if spec.worker_num != spec.local_worker_num:
        raise LaunchError("rank-table mode on several nodes needs --rank_table_file (merged with "
                          "'mindrun ranktable merge') or a --cluster file listing every node")
    ips = devices.discover_device_ips(spec.device_ids)
    host = resolve(socket.gethostname())
    return ranktable.build([(host, [(d, ips[d]) for d in spec.device_ids])])


def prepare(spec: LaunchSpec) -> Tuple[str, List[Tuple[int, int]]]:
    """The rank table path workers get and this node's (rank_id, device_id) pairs."""
    if spec.rank_table_file:
        table = ranktable.load(spec.rank_table_file)
        path = str(Path(spec.rank_table_file).resolve())
    else:
        table = build_for_spec(spec)
        path = str(ranktable.write(table, spec.log_dir / "rank_table.json").resolve())
    ranktable.validate(table, path, world_size=spec.worker_num)
    pairs = ranktable.server_devices(table, this_server_id(table, spec))
    if len(pairs) != spec.local_worker_num:
        raise LaunchError(f"{path}: this server has {len(pairs)} devices but --local_worker_num is "
                          f"{spec.local_worker_num}")
    return path, pairs
