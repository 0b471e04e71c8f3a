"""Who each local worker is: its global rank, local index and NPU. The one place ranks are assigned.

    dynamic (msrun) mode  rank = node_rank x local_worker_num + local index; unknown (None) when
                          several nodes run without --node_rank (MindSpore assigns it at registration);
                          under mpirun the MPI rank.
    rank-table mode       the rank the table gives this server's devices (the table itself numbers
                          ranks across servers: `ranktable.build`).

Devices: `device_id` is the physical NPU (what rank tables and npu-smi name); `logical_device` is the
DEVICE_ID the process gets, its index within ASCEND_RT_VISIBLE_DEVICES when that restricts the view.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from launcher import devices, ranktable
from launcher.discovery import is_local
from launcher.errors import LaunchError

if TYPE_CHECKING:  # the spec imports this module
    from launcher.spec import LaunchSpec


@dataclass(frozen=True)
class Worker:
    """One worker process of this node."""

    local_rank: int  # index on this node (MINDRUN_LOCAL_RANK)
    rank: Optional[int]  # global rank (RANK_ID); None: MindSpore assigns it at registration
    device_id: int  # physical NPU: the rank table's device_id
    logical_device: int  # DEVICE_ID: index within ASCEND_RT_VISIBLE_DEVICES (physical when unrestricted)

    @property
    def key(self) -> int:
        """The rank, or the local index while the rank is unknown; names its log worker_{key}.log."""
        return self.rank if self.rank is not None else self.local_rank

    @property
    def name(self) -> str:
        """'rank 3', or 'local worker 1' while the rank is unknown."""
        return f"rank {self.rank}" if self.rank is not None else f"local worker {self.local_rank}"


def rank_of(spec: "LaunchSpec", local_rank: int) -> Optional[int]:
    """Global rank of a local worker in dynamic mode, or None when MindSpore assigns it at registration."""
    if spec.fixed_rank is not None:
        return spec.fixed_rank
    if spec.local_worker_num == spec.worker_num:
        return local_rank
    if spec.node_rank >= 0:
        return spec.node_rank * spec.local_worker_num + local_rank
    return None


def _selected(spec: "LaunchSpec", count: int) -> List[int]:
    if spec.only_local is not None:  # mpirun mode: this process runs one local worker
        return [spec.only_local]
    return list(range(count))


def dynamic_workers(spec: "LaunchSpec") -> List[Worker]:
    """This node's workers in dynamic (msrun) mode, with their physical devices from the spec."""
    return [Worker(i, rank_of(spec, i), spec.device_ids[i],
                   devices.logical_id(spec.device_ids[i], spec.visible_devices))
            for i in _selected(spec, spec.local_worker_num)]


def this_server(table: Dict, spec: "LaunchSpec") -> str:
    """Which server of `table` this node is: the cluster file's node, a local address, or node_rank."""
    servers = ranktable.server_ids(table)
    if len(servers) == 1 and spec.worker_num == spec.local_worker_num:
        return servers[0]  # a one-server table on a one-node job: nothing to choose
    if spec.cluster is not None and spec.node_rank >= 0:
        host = spec.cluster.nodes[spec.node_rank].host
        for sid in servers:
            if host in ranktable.server_addresses(table, sid):
                return sid
    local = [sid for sid in servers if any(is_local(a) for a in ranktable.server_addresses(table, sid))]
    if len(local) == 1:
        return local[0]
    if 0 <= spec.node_rank < len(servers):
        return servers[spec.node_rank]  # as written: node_rank i is the table's i-th server
    raise LaunchError(f"cannot tell which server of the rank table this machine is (servers: {servers}); "
                      f"pass --node_rank")


def table_workers(spec: "LaunchSpec", table: Dict, src: str, server: Optional[str] = None) -> List[Worker]:
    """This node's workers in rank-table mode: the ranks and physical devices the table gives this server
    (`server`, or the one `this_server` finds)."""
    server = server if server is not None else this_server(table, spec)
    pairs = ranktable.server_devices(table, server)
    if len(pairs) != spec.local_worker_num:
        raise LaunchError(f"{src}: server {server} has {len(pairs)} devices but --local_worker_num is "
                          f"{spec.local_worker_num}")
    visible = spec.visible_devices
    for _, device in pairs:
        if visible is not None and device not in visible:
            raise LaunchError(f"{src}: server {server} lists device {device}, which is not among the visible "
                              f"devices {','.join(map(str, visible))} (--visible_devices / "
                              f"{devices.VISIBLE})")
    if spec.only_local is not None:  # mpirun mode: the table row of this process's own device
        mine = spec.device_ids[spec.only_local]
        pairs = [p for p in pairs if p[1] == mine]
        if not pairs:
            raise LaunchError(f"{src}: server {server} has no device {mine} for MPI local rank {spec.only_local}")
        local = [spec.only_local]
    else:
        local = list(range(len(pairs)))
    return [Worker(i, rank, device, devices.logical_id(device, visible)) for i, (rank, device) in zip(local, pairs)]
