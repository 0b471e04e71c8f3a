"""The environment each process gets: msrun's variables, after clearing inherited ones.

Workers learn everything from these variables (no arguments are added to the user's command).
"""
import time
from typing import Dict, List, Mapping, Tuple

from launcher import devices
from launcher.ranks import Worker
from launcher.spec import LaunchSpec

# Cluster variables a parent job, a Kubernetes operator or an earlier launch may leave behind;
# a stale MS_SCHED_PORT or MS_ROLE makes MindSpore's init() bind or dial the wrong address
# ("Failed to call bind ... Address already in use", mindspore-lab/mindyolo#449).
INHERITED = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_SERVER_NUM", "MS_NODE_ID",
             "MS_NODE_RANK", "MS_LOCAL_WORKER", "MS_TOPO_TIMEOUT", "MS_SIMULATION_LEVEL", "RANK_ID",
             "RANK_SIZE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "DEVICE_ID", "RANK_START",
             "MINDRUN_RESTART_COUNT", "MINDRUN_LOCAL_RANK", "MINDRUN_LOCAL_WORLD_SIZE", "MINDRUN_NODE_RANK",
             "MINDRUN_SPAWNED_AT", "MINDRUN_STORE", "MINDRUN_STORE_TIMEOUT")

RESTART_COUNT = "MINDRUN_RESTART_COUNT"  # how many times the group was restarted (0 on the first run)
SPAWNED_AT = "MINDRUN_SPAWNED_AT"  # when the group was spawned (Unix time): the trainer's start-up clock
DEVICE_TARGET = "MINDRUN_DEVICE_TARGET"  # the cluster file's backend in MindSpore's spelling (context device_target)
DEVICE_TARGETS = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}
# Set by mpirun/PMIx; with OMPI_COMMAND and PMIX_RANK present MindSpore initialises through MPI and
# ignores RANK_TABLE_FILE (mindspore/communication/_comm_helper.py), so rank-table workers lose them.
MPI_PREFIXES = ("OMPI_", "PMIX_", "PMI_")
# Always shown by --dry_run, even when inherited unchanged: which NPU each process drives.
SHOWN = ("DEVICE_ID", devices.VISIBLE, DEVICE_TARGET)


def clean(env: Mapping[str, str]) -> Tuple[Dict[str, str], List[str]]:
    """A copy of `env` without the inherited cluster variables, and the names removed."""
    removed = sorted(k for k in env if k in INHERITED)
    return {k: v for k, v in env.items() if k not in INHERITED}, removed


def _common(spec: LaunchSpec, base: Mapping[str, str], restart: int) -> Dict[str, str]:
    env = dict(base)
    env.setdefault("HCCL_CONNECT_TIMEOUT", "600")  # what importing mindspore sets in msrun's children
    # how long a collective may wait for its slowest rank on Ascend: a resume or a save holds the other ranks in
    # one while a rank hashes or writes its shards (minutes at 7B), so never below --cluster_time_out or 30 min
    env.setdefault("HCCL_EXEC_TIMEOUT", str(max(1800, int(spec.cluster_time_out))))
    # MindSpore's cluster nodes poll the scheduler (heartbeat, "is the cluster built yet") at a random
    # interval between these bounds, in seconds; its default (several seconds) left a 2-worker CPU job
    # waiting 4-6 s in init() after every rank had registered (bench/README.md, bench.startup). Inherited values win.
    env.setdefault("MS_RETRY_INTERVAL_LOWER", "0")
    env.setdefault("MS_RETRY_INTERVAL_UPPER", "1")
    env["RANK_SIZE"] = str(spec.worker_num)
    env[RESTART_COUNT] = str(restart)
    env[SPAWNED_AT] = f"{time.time():.3f}"
    env["MINDRUN_NODE_RANK"] = str(spec.node_rank)
    env["MINDRUN_LOCAL_WORLD_SIZE"] = str(spec.local_worker_num)
    if spec.rank_table_file:
        env["RANK_TABLE_FILE"] = str(spec.rank_table_file)
    if spec.cluster is not None and spec.cluster.device_peak_tflops:  # the trainer's MFU (trainer/mfu.py)
        env["MINDRUN_DEVICE_PEAK_TFLOPS"] = str(spec.cluster.device_peak_tflops)
    if spec.backend is not None:
        env[DEVICE_TARGET] = DEVICE_TARGETS[spec.backend]
    if spec.visible_devices is not None:
        env[devices.VISIBLE] = ",".join(map(str, spec.visible_devices))
    return env


def _device(env: Dict[str, str], worker: Worker) -> Dict[str, str]:
    env["DEVICE_ID"] = str(worker.logical_device)
    env["MINDRUN_LOCAL_RANK"] = str(worker.local_rank)
    return env


def _dynamic(spec: LaunchSpec, env: Dict[str, str], role: str) -> Dict[str, str]:
    if spec.sim_level is not None:  # msrun: simulation sets no role and no scheduler address
        env.update({"MS_WORKER_NUM": str(spec.worker_num), "MS_SIMULATION_LEVEL": str(spec.sim_level)})
        return env
    env.update({"MS_ROLE": role, "MS_SCHED_HOST": spec.master_addr, "MS_SCHED_PORT": str(spec.master_port),
                "MS_WORKER_NUM": str(spec.worker_num), "MS_TOPO_TIMEOUT": str(spec.cluster_time_out)})
    return env


def scheduler_env(spec: LaunchSpec, base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """MindSpore's meta-server process (MS_ROLE=MS_SCHED), as msrun starts it."""
    env = _dynamic(spec, _common(spec, base, restart), "MS_SCHED")
    env["RANK_ID"] = "0"
    return env


def worker_env(spec: LaunchSpec, worker: Worker, base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """A dynamic-cluster worker (MS_ROLE=MS_WORKER); MS_NODE_ID/RANK_ID only when the rank is known."""
    env = _device(_dynamic(spec, _common(spec, base, restart), "MS_WORKER"), worker)
    if worker.rank is not None:
        env["MS_NODE_ID"] = str(worker.rank)
        env["RANK_ID"] = str(worker.rank)
    return env


def store_env(spec: LaunchSpec, worker: Worker, base: Mapping[str, str], restart: int = 0) -> Dict[str, str]:
    """A store-mode worker: no scheduler, rank 0 hosts MindSpore's store at the master address
    (launcher/join.py); RANK_ID and RANK_SIZE say who it is, MINDRUN_STORE where to join."""
    from launcher.join import STORE, STORE_TIMEOUT

    env = _device(_common(spec, base, restart), worker)
    host = f"[{spec.master_addr}]" if ":" in spec.master_addr else spec.master_addr
    env.update({STORE: f"{host}:{spec.master_port}", STORE_TIMEOUT: str(spec.cluster_time_out),
                "RANK_ID": str(worker.rank)})
    return env


def mpi_variables(env: Mapping[str, str]) -> List[str]:
    """Names of the MPI launcher's variables in `env` (OMPI_*, PMIX_*, PMI_*)."""
    return sorted(k for k in env if k.startswith(MPI_PREFIXES))


def ranktable_env(spec: LaunchSpec, worker: Worker, table_path: str, base: Mapping[str, str],
                  restart: int = 0) -> Dict[str, str]:
    """A rank-table worker (Ascend): RANK_TABLE_FILE, RANK_ID, DEVICE_ID, RANK_SIZE; no scheduler, and no
    MPI variables (with them MindSpore would bypass the table)."""
    env = _device(_common(spec, base, restart), worker)
    for key in mpi_variables(env):
        del env[key]
    env.update({"RANK_TABLE_FILE": table_path, "RANK_ID": str(worker.rank)})
    return env
