"""LaunchSpec: every setting of one launch, resolved from defaults, cluster file, environment and CLI.

Precedence, lowest first: msrun's defaults, the `--cluster` file, what Slurm or the Ascend
Operator put in the environment, then options given on the command line.
"""
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from launcher import devices, ranks
from launcher.cluster import ClusterConfig, load_cluster, this_node
from launcher.discovery import Discovered, from_environment, is_local, resolve as resolve_host
from launcher.errors import LaunchError

# msrun's defaults (mindspore/parallel/cluster/run.py)
DEFAULTS = {"worker_num": 8, "local_worker_num": 8, "master_addr": "127.0.0.1", "master_port": 8118,
            "node_rank": -1, "log_dir": "", "cluster_time_out": 600, "bind_core": False,
            "rank_table_file": "", "launch_mode": "dynamic"}


@dataclass
class LaunchSpec:
    """What to start on this node and how; built by `resolve`, read by the agent."""

    command: List[str]  # the worker command line (interpreter included)
    worker_num: int
    local_worker_num: int
    node_rank: int
    master_addr: str
    master_port: int
    log_dir: Path
    cluster_time_out: int
    bind_core: bool
    launch_mode: str  # dynamic | ranktable
    rank_table_file: str
    run_scheduler: bool
    run_workers: bool = True
    device_ids: List[int] = field(default_factory=list)  # physical device per local worker
    visible_devices: Optional[List[int]] = None  # ASCEND_RT_VISIBLE_DEVICES (sorted); None: unrestricted
    backend: Optional[str] = None  # cpu | gpu | ascend (exported as MINDRUN_DEVICE_TARGET); None: unknown
    max_restarts: int = 0
    grace_period: float = 15.0
    tail_ranks: Optional[List[int]] = None  # None: every local rank
    dry_run: bool = False
    cluster: Optional[ClusterConfig] = None
    notes: List[str] = field(default_factory=list)  # decisions worth telling the user
    only_local: Optional[int] = None  # mpirun mode: this process runs only this local worker
    fixed_rank: Optional[int] = None  # mpirun mode: the MPI rank is the worker's rank


def worker_command(script: Optional[str], module: Optional[str], args: List[str]) -> List[str]:
    """The command each worker runs: this interpreter for .py files and -m modules, else the program."""
    if module:
        return [sys.executable, "-m", module] + args
    if script is None:
        raise LaunchError("nothing to launch: give a SCRIPT or -m MODULE")
    if script in ("python", "python3"):  # msrun's form: `msrun ... python script.py`
        return [sys.executable] + args
    path = Path(script)
    if path.suffix == ".py" or not os.access(path, os.X_OK):
        if not path.is_file():
            raise LaunchError(f"script {script} does not exist")
        return [sys.executable, str(path.resolve())] + args
    found = shutil.which(script) or str(path.resolve())
    return [found] + args


def _pick(name: str, cli: Dict, found: Dict, cfg: Dict):
    for layer in (cli, found, cfg):
        if layer.get(name) is not None:
            return layer[name]
    return DEFAULTS[name]


def resolve(cli: Dict, env: Optional[Dict[str, str]] = None) -> LaunchSpec:
    """Merge the layers into a LaunchSpec and check it; LaunchError names the bad option."""
    env = dict(os.environ if env is None else env)
    cluster = load_cluster(cli["cluster"]) if cli.get("cluster") else None
    disc = from_environment(env)
    chosen = (sorted(devices.parse_device_list(cli["visible_devices"], "--visible_devices"))
              if cli.get("visible_devices") else None)
    visible = chosen or devices.inherited_visible(env)
    cfg: Dict = {}
    if cluster:
        cfg = {"worker_num": cluster.worker_num, "local_worker_num": cluster.nodes[0].devices,
               "master_addr": cluster.master, "master_port": cluster.master_port,
               "cluster_time_out": cluster.cluster_time_out, "log_dir": cluster.log_dir,
               "bind_core": cluster.bind_core, "launch_mode": cluster.launch_mode}
    elif visible:  # one worker per visible device unless told otherwise
        cfg = {"worker_num": len(visible), "local_worker_num": len(visible)}
    found = {"node_rank": disc.node_rank, "master_addr": disc.master_addr, "master_port": disc.master_port,
             "worker_num": disc.worker_num, "local_worker_num": disc.local_worker_num}
    if cli.get("local_worker_num") is not None and cli.get("worker_num") is None and disc.nnodes:
        found["worker_num"] = disc.nnodes * cli["local_worker_num"]

    worker_num = _pick("worker_num", cli, found, cfg)
    local = _pick("local_worker_num", cli, found, cfg)
    node_rank = _pick("node_rank", cli, found, cfg)
    if cluster and node_rank == -1 and cli.get("node_rank") is None:
        node_rank = _node_rank_from_cluster(cluster)
    if cluster and node_rank >= 0:
        if node_rank >= len(cluster.nodes):
            raise LaunchError(f"--node_rank {node_rank} but {cluster.source} has {len(cluster.nodes)} nodes")
        if cli.get("local_worker_num") is None:
            local = cluster.nodes[node_rank].devices
    if cluster and chosen and cli.get("local_worker_num") is None:  # --visible_devices narrows the file's nodes
        local = len(chosen)
        if cli.get("worker_num") is None:
            worker_num = len(cluster.nodes) * local
    launch_mode = _pick("launch_mode", cli, found, cfg)
    spec = LaunchSpec(
        command=worker_command(cli.get("script"), cli.get("module"), list(cli.get("args") or [])),
        worker_num=worker_num, local_worker_num=local, node_rank=node_rank,
        master_addr=str(_pick("master_addr", cli, found, cfg)), master_port=_pick("master_port", cli, found, cfg),
        log_dir=Path(_pick("log_dir", cli, found, cfg) or "mindrun_logs"),
        cluster_time_out=_pick("cluster_time_out", cli, found, cfg),
        bind_core=bool(_pick("bind_core", cli, found, cfg)),
        launch_mode=launch_mode, rank_table_file=_pick("rank_table_file", cli, found, cfg),
        run_scheduler=False, max_restarts=cli.get("max_restarts") or 0,
        grace_period=cli.get("grace_period") if cli.get("grace_period") is not None else 15.0,
        dry_run=bool(cli.get("dry_run")), visible_devices=visible,
        backend=cluster.backend if cluster else ("ascend" if launch_mode == "ranktable" else None),
        cluster=cluster)
    _check(spec)
    spec.device_ids = _device_ids(spec, chosen)
    spec.tail_ranks = _tail(cli.get("tail_worker_log"), spec)
    if spec.launch_mode == "dynamic":
        spec.run_scheduler = _runs_scheduler(spec, disc)
        spec.run_workers = not disc.scheduler_only
        if spec.master_port == 0:
            if spec.worker_num != spec.local_worker_num:
                raise LaunchError("--master_port 0 (pick a free port) works on a single node only: the other "
                                  "nodes cannot learn the port; give a fixed --master_port")
            from launcher.ports import free_port

            spec.master_port = free_port(spec.master_addr)
            spec.notes.append(f"picked free master port {spec.master_port}")
        spec.master_addr = resolve_host(spec.master_addr)
    if disc.source:
        spec.notes.append(f"job shape read from {disc.source} environment")
    return spec


def _device_ids(spec: LaunchSpec, chosen: Optional[List[int]]) -> List[int]:
    """Physical device of each local worker: --visible_devices, the cluster file's device_ids, an inherited
    ASCEND_RT_VISIBLE_DEVICES, else 0..local_worker_num-1."""
    node = spec.cluster.nodes[max(spec.node_rank, 0)] if spec.cluster else None
    visible, local = spec.visible_devices, spec.local_worker_num
    if chosen is None and node is not None and node.device_ids is not None:
        ids, where = node.ids(), f"{spec.cluster.source}: node {node.host} device_ids"
    elif visible is not None:
        ids, where = visible, ("--visible_devices" if chosen else f"environment variable {devices.VISIBLE}")
    else:
        ids, where = list(range(local)), ""
    if len(ids) < local:
        raise LaunchError(f"{where} lists {len(ids)} devices ({','.join(map(str, ids))}) but --local_worker_num "
                          f"is {local}: one device per local worker")
    for device in ids[:local]:
        devices.logical_id(device, visible)  # LaunchError when a chosen device is not visible
    return ids[:local]


def _node_rank_from_cluster(cluster: ClusterConfig) -> int:
    index = this_node(cluster)
    if index is None:
        raise LaunchError(f"{cluster.source}: cannot tell which node this machine is (none or several of its "
                          f"hosts are local addresses); pass --node_rank")
    return index


def _check(spec: LaunchSpec) -> None:
    if spec.worker_num < 1:
        raise LaunchError(f"--worker_num must be at least 1, got {spec.worker_num}")
    if not 1 <= spec.local_worker_num <= spec.worker_num:
        raise LaunchError(f"--local_worker_num must be 1..worker_num ({spec.worker_num}), "
                          f"got {spec.local_worker_num}")
    if spec.local_worker_num < spec.worker_num and spec.worker_num % spec.local_worker_num:
        raise LaunchError(f"--worker_num {spec.worker_num} is not a multiple of --local_worker_num "
                          f"{spec.local_worker_num}: every node must run the same number of workers")
    nodes = spec.worker_num // spec.local_worker_num
    if spec.node_rank >= nodes and spec.local_worker_num < spec.worker_num:
        raise LaunchError(f"--node_rank {spec.node_rank} is out of range for {nodes} nodes "
                          f"(worker_num {spec.worker_num} / local_worker_num {spec.local_worker_num})")
    if not 0 <= spec.master_port <= 65535:
        raise LaunchError(f"--master_port must be 0..65535, got {spec.master_port}")
    if spec.cluster_time_out < 1:
        raise LaunchError(f"--cluster_time_out must be at least 1 second, got {spec.cluster_time_out}")
    if spec.max_restarts < 0:
        raise LaunchError(f"--max_restarts must be 0 or more, got {spec.max_restarts}")
    if spec.launch_mode not in ("dynamic", "ranktable"):
        raise LaunchError(f"--launch_mode must be dynamic or ranktable, got {spec.launch_mode!r}")


def _runs_scheduler(spec: LaunchSpec, disc: Discovered) -> bool:
    if disc.source == "ascend-operator":
        return disc.scheduler_only  # the operator runs the scheduler in its own pod
    if spec.node_rank >= 0:
        return spec.node_rank == 0 or spec.local_worker_num == spec.worker_num
    return is_local(spec.master_addr)  # msrun's rule when node ranks are unknown


def _tail(option: Optional[str], spec: LaunchSpec) -> Optional[List[int]]:
    local = [ranks.rank_of(spec, i) for i in range(spec.local_worker_num)]
    if option is None:
        first = local[0] if local[0] is not None else 0
        return [first]
    if str(option).strip() == "-1":
        return None
    try:
        return [int(r) for r in str(option).split(",")]
    except ValueError:
        raise LaunchError(f"--tail_worker_log must be -1 (all) or ranks like 0,3, got {option!r}") from None
