"""Rank-table mode (Ascend): find or build the HCCL rank table a job uses.

Used by `mindrun launch --launch_mode ranktable`, `mindrun ranktable generate` and `mindrun doctor`.
"""
import ipaddress
import os
import shutil
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
                      hccn_conf: str = devices.HCCN_CONF, loopback_ok: bool = True) -> List[ranktable.Server]:
    """One server: this machine (its hostname's address unless `server_id`), IPs from hccn."""
    ips = devices.lookup_ips(device_ids, None, source, hccn_conf)
    return [(server_id or this_host_address(loopback_ok), [(d, ips[d]) for d in device_ids])]


def _routable_addresses() -> List[str]:
    try:
        import psutil

        ips = {ipaddress.ip_address(a.address.split("%")[0]) for addrs in psutil.net_if_addrs().values()
               for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}
    except Exception:  # psutil missing or an odd interface: no suggestion
        return []
    usable = [ip for ip in ips if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)]
    return [str(ip) for ip in sorted(usable, key=lambda ip: (ip.version, ip))]


def this_host_address(loopback_ok: bool = True) -> str:
    """The address this host's name resolves to; LaunchError when it is loopback and `loopback_ok` is False
    (other servers could not reach it), suggesting this host's routable addresses for --server_id."""
    name = socket.gethostname()
    address = resolve(name)
    if loopback_ok or not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return address
    found = _routable_addresses()
    hint = f", e.g. --server_id {found[0]} (this host has {', '.join(found)})" if found else ""
    raise LaunchError(f"this host's name '{name}' resolves to {address}, a loopback address other servers cannot "
                      f"reach; pass --server_id with this server's address{hint}")


def default_devices(hccn_conf: str = devices.HCCN_CONF) -> Tuple[List[int], str]:
    """This machine's NPUs when --devices is not given, and where they came from: the NPUs `npu-smi info`
    lists, else the devices with an address in hccn.conf; LaunchError when neither names any."""
    from launcher.doctor import NPU_SMI, query_npus

    npus, _ = query_npus()
    if npus:
        return sorted(npus), f"'{NPU_SMI} info'"
    if Path(hccn_conf).exists():
        return sorted(devices.ips_from_hccn_conf(hccn_conf)), hccn_conf
    smi = f"{NPU_SMI} is not on PATH" if shutil.which(NPU_SMI) is None else f"'{NPU_SMI} info' lists no NPU"
    raise LaunchError(f"no --devices given and none found ({smi} and {hccn_conf} does not exist); "
                      f"pass --devices, e.g. --devices 0-7")


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
    """The rank table path the workers get and the table: the given file as written, or one built,
    validated and written atomically to <log_dir>/rank_table.json (not written under --dry_run)."""
    if spec.rank_table_file:
        table = ranktable.load(spec.rank_table_file)
        path = str(Path(spec.rank_table_file).resolve())
        warn(ranktable.order_warning(table, path))
        ranktable.validate(table, path, world_size=spec.worker_num)
        return path, table
    table = build_for_spec(spec)
    target = spec.log_dir / "rank_table.json"
    ranktable.validate(table, str(target), world_size=spec.worker_num)
    if spec.dry_run:
        return str(Path(os.path.abspath(target))), table
    return str(ranktable.write(table, target).resolve()), table
