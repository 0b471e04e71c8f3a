"""The environment each process gets: msrun's variables, after clearing inherited ones.

Workers learn everything from these variables (no arguments are added to the user's command).
"""
from typing import Dict, List, Mapping, Tuple

from launcher.spec import LaunchSpec

# Cluster variables a parent job, a Kubernetes operator or an earlier launch may leave behind;
# a stale MS_SCHED_PORT or MS_ROLE makes MindSpore's init() bind or dial the wrong address
# ("Failed to call bind ... Address already in use", mindspore-lab/mindyolo#449).
INHERITED = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_SERVER_NUM", "MS_NODE_ID",
             "MS_NODE_RANK", "MS_LOCAL_WORKER", "MS_TOPO_TIMEOUT", "MS_SIMULATION_LEVEL", "RANK_ID",
             "RANK_SIZE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "DEVICE_ID", "RANK_START",
             "MINDRUN_RESTART_COUNT", "MINDRUN_LOCAL_RANK", "MINDRUN_LOCAL_WORLD_SIZE", "MINDRUN_NODE_RANK")

RESTART_COUNT = "MINDRUN_RESTART_COUNT"  # how many times the group was restarted (0 on the first run)


def clean(env: Mapping[str, str]) -> Tuple[Dict[str, str], List[str]]:
    """A copy of `env` without the inherited cluster variables, and the names removed."""
    removed = sorted(k for k in env if k in INHERITED)
    return {k: v for k, v in env.items() if k not in INHERITED}, removed


def _common(spec: LaunchSpec, base: Mapping[str, str], restart: int) -> Dict[str, str]:
    env = dict(base)
    env.setdefault("HCCL_CONNECT_TIMEOUT", "600")  # what importing mindspore sets in msrun's children
    env["RANK_SIZE"] = str(spec.worker_num)
    env[RESTART_COUNT] = str(restart)
    env["MINDRUN_NODE_RANK"] = str(spec.node_rank)
    env["MINDRUN_LOCAL_WORLD_SIZE"] = str(spec.local_worker_num)
    if spec.rank_table_file:
        env["RANK_TABLE_FILE"] = str(spec.rank_table_file)
    return env


def _dynamic(spec: LaunchSpec, env: Dict[str, str], role: str) -> Dict[str, str]:
    env.update({"MS_ROLE": role, "MS_SCHED_HOST": spec.master_addr, "MS_SCHED_PORT": str(spec.master_port),
                "MS_WORKER_NUM": str(spec.worker_num), "MS_TOPO_TIMEOUT": str(spec.cluster_time_out)})
    return env


def scheduler_env(spec: LaunchSpec, base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """MindSpore's meta-server process (MS_ROLE=MS_SCHED), as msrun starts it."""
    env = _dynamic(spec, _common(spec, base, restart), "MS_SCHED")
    env["RANK_ID"] = "0"
    return env


def worker_env(spec: LaunchSpec, local_rank: int, base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """A dynamic-cluster worker (MS_ROLE=MS_WORKER); MS_NODE_ID/RANK_ID only when the rank is known."""
    env = _dynamic(spec, _common(spec, base, restart), "MS_WORKER")
    env["DEVICE_ID"] = str(spec.device_ids[local_rank])
    env["MINDRUN_LOCAL_RANK"] = str(local_rank)
    rank = spec.rank_of(local_rank)
    if rank is not None:
        env["MS_NODE_ID"] = str(rank)
        env["RANK_ID"] = str(rank)
    return env


def ranktable_env(spec: LaunchSpec, local_rank: int, rank: int, device_id: int, table_path: str,
                  base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """A rank-table worker (Ascend): RANK_TABLE_FILE, RANK_ID, DEVICE_ID, RANK_SIZE; no scheduler."""
    env = _common(spec, base, restart)
    env.update({"RANK_TABLE_FILE": table_path, "RANK_ID": str(rank), "DEVICE_ID": str(device_id),
                "MINDRUN_LOCAL_RANK": str(local_rank)})
    return env
