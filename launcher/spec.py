"""LaunchSpec: every setting of one launch, resolved from defaults, cluster file, environment and CLI.

Precedence, lowest first: msrun's defaults, the `--cluster` file, what Slurm or the Ascend
Operator put in the environment, then options given on the command line. When the command line
(or a cluster file) describes the whole job, the environment's job variables are ignored, and the
launcher says so: a shell's leftover MS_NODE_RANK must not send a single-node job to a remote
scheduler. Each setting remembers where it came from (`LaunchSpec.sources`).
"""
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from launcher import affinity, devices, ranks
from launcher.cluster import LAUNCH_MODES, ClusterConfig, load_cluster, this_node
from launcher.discovery import Discovered, from_environment, is_local, resolve as resolve_host
from launcher.errors import LaunchError

# msrun's defaults (mindspore/parallel/cluster/run.py)
DEFAULTS = {"worker_num": 8, "local_worker_num": 8, "master_addr": "127.0.0.1", "master_port": 8118,
            "node_rank": -1, "log_dir": "", "cluster_time_out": 600, "bind_core": False,
            "rank_table_file": "", "launch_mode": "dynamic"}
# The job variables each environment source provides, per setting (for the sources table).
ENV_VARIABLES = {"ascend-operator": {"node_rank": "MS_NODE_RANK", "master_addr": "MS_SCHED_HOST",
                                     "master_port": "MS_SCHED_PORT", "worker_num": "MS_WORKER_NUM",
                                     "local_worker_num": "MS_LOCAL_WORKER"},
                 "slurm": {"node_rank": "SLURM_NODEID", "master_addr": "SLURM_JOB_NODELIST",
                           "worker_num": "SLURM_JOB_NUM_NODES x --local_worker_num"}}
VIRTUAL_FILESYSTEMS = ("/proc", "/sys", "/dev")


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
    cluster_time_out: int  # negative: wait forever
    bind_core: affinity.Binding
    launch_mode: str  # dynamic | ranktable | store (launcher/join.py)
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
    bind_numa: affinity.Binding = False
    sim_level: Optional[int] = None  # MindSpore's simulation (MS_SIMULATION_LEVEL): no scheduler, no devices
    worker_log_name: str = "worker"  # worker logs: <log_dir>/<worker_log_name>_<rank>.log
    sources: Dict[str, str] = field(default_factory=dict)  # setting -> where its value came from
    show_ms_logs: bool = False  # MindSpore's INFO/WARNING lines on the console too (GLOG_v set: True)
    progress_interval: float = 30.0  # seconds between progress lines when the console is not a terminal

    def log_name(self, key: int) -> Path:
        """The log file of the worker with this rank (or local index while the rank is unknown)."""
        return self.log_dir / f"{self.worker_log_name}_{key}.log"


def worker_command(script: Optional[str], module: Optional[str], args: List[str]) -> List[str]:
    """The command each worker runs: this interpreter for .py files and -m modules, else the program."""
    if module:
        return [sys.executable, "-m", module] + args
    if script is None:
        raise LaunchError("nothing to launch: give a SCRIPT or -m MODULE")
    if script in ("python", "python3"):  # msrun's form: `msrun ... python script.py`
        return [sys.executable] + args
    path = Path(script)
    if path.is_dir():
        raise LaunchError(f"script {script} is a directory; give a .py file or program, or -m MODULE")
    if path.suffix == ".py" or not os.access(path, os.X_OK):
        if not path.is_file():
            found = shutil.which(script) if os.sep not in script else None
            if found:
                return [found] + args
            raise LaunchError(f"script {script} does not exist")
        return [sys.executable, str(path.resolve())] + args
    found = shutil.which(script) if os.sep not in script else None
    program = found or str(path.resolve())
    _check_interpreter(program)
    return [program] + args


def _check_interpreter(program: str) -> None:
    """A script's #! interpreter must exist: exec would fail in every worker with a bare ENOENT."""
    try:
        with open(program, "rb") as handle:
            first = handle.readline(256)
    except OSError as exc:
        raise LaunchError(f"script {program} cannot be read: {exc.strerror}") from None
    if not first.startswith(b"#!"):
        return
    words = shlex.split(first[2:].decode("utf-8", "replace").strip())
    if not words:
        raise LaunchError(f"script {program}: its #! line names no interpreter")
    interpreter = words[0]
    if Path(interpreter).name == "env" and len(words) > 1:
        named = next((w for w in words[1:] if not w.startswith("-")), None)
        if named and not shutil.which(named):
            raise LaunchError(f"script {program}: its interpreter '{named}' (#!{' '.join(words)}) is not on "
                              f"PATH; install it or fix the #! line")
        return
    if not os.access(interpreter, os.X_OK) or Path(interpreter).is_dir():
        raise LaunchError(f"script {program}: its interpreter {interpreter} (#! line) does not exist or is "
                          f"not executable; install it or fix the #! line")


class _Layers:
    """The layers a setting may come from, highest first, remembering which one gave each value."""

    def __init__(self, cli: Dict, found: Dict, cfg: Dict, found_names: Dict[str, str], cfg_name: str):
        self.layers = [(cli, lambda n: "command line"), (found, lambda n: found_names.get(n, "environment")),
                       (cfg, lambda n: cfg_name)]
        self.sources: Dict[str, str] = {}

    def pick(self, name: str):
        for layer, where in self.layers:
            if layer.get(name) is not None:
                self.sources[name] = where(name)
                return layer[name]
        self.sources[name] = "default"
        return DEFAULTS[name]


def describes_job(cli: Dict) -> bool:
    """True when the command line alone says the job's shape: a cluster file, or the worker counts (and,
    across nodes, this node's rank and the scheduler's address)."""
    if cli.get("cluster"):
        return True
    if cli.get("worker_num") is None or cli.get("local_worker_num") is None:
        return False
    return cli["worker_num"] == cli["local_worker_num"] or (cli.get("node_rank") is not None
                                                          and cli.get("master_addr") is not None)


def resolve(cli: Dict, env: Optional[Dict[str, str]] = None, probe_port: bool = False) -> LaunchSpec:
    """Merge the layers into a LaunchSpec and check it; LaunchError names the bad option. `probe_port`: also
    refuse a busy master port (a bind attempt on this machine) before the log directory is created."""
    env = dict(os.environ if env is None else env)
    cluster = load_cluster(cli["cluster"]) if cli.get("cluster") else None
    disc = from_environment(env)
    ignored: List[str] = []
    if disc.source and describes_job(cli):
        ignored = sorted(v for v in ENV_VARIABLES.get(disc.source, {}).values() if v.split()[0] in env)
        disc = Discovered()
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
    found_names = {k: f"environment {v} ({disc.source})" for k, v in ENV_VARIABLES.get(disc.source, {}).items()}
    layers = _Layers(cli, found, cfg, found_names, str(cluster.source) if cluster else
                     "environment ASCEND_RT_VISIBLE_DEVICES" if visible and not chosen else "--visible_devices")

    worker_num = layers.pick("worker_num")
    local = layers.pick("local_worker_num")
    node_rank = layers.pick("node_rank")
    if cluster and node_rank == -1 and cli.get("node_rank") is None:
        node_rank = _node_rank_from_cluster(cluster)
    if cluster and node_rank >= 0:
        if node_rank >= len(cluster.nodes):
            raise LaunchError(f"--node_rank {node_rank} but {cluster.source} has {len(cluster.nodes)} nodes")
        if cli.get("local_worker_num") is None:
            local = cluster.nodes[node_rank].devices
            layers.sources["local_worker_num"] = f"{cluster.source} (node {node_rank})"
    if cluster and chosen and cli.get("local_worker_num") is None:  # --visible_devices narrows the file's nodes
        local = len(chosen)
        if cli.get("worker_num") is None:
            worker_num = len(cluster.nodes) * local
    launch_mode = layers.pick("launch_mode")
    sim_level = cli.get("sim_level")
    if sim_level is None and env.get("MS_SIMULATION_LEVEL", "").strip():
        try:
            sim_level = int(env["MS_SIMULATION_LEVEL"])
        except ValueError:
            raise LaunchError(f"environment variable MS_SIMULATION_LEVEL={env['MS_SIMULATION_LEVEL']!r} must be "
                              f"0..3 (MindSpore's simulation level); unset it or pass --sim_level") from None
        layers.sources["sim_level"] = "environment MS_SIMULATION_LEVEL"
    elif sim_level is not None:
        layers.sources["sim_level"] = "command line"
    spec = LaunchSpec(
        command=worker_command(cli.get("script"), cli.get("module"), list(cli.get("args") or [])),
        worker_num=worker_num, local_worker_num=local, node_rank=node_rank,
        master_addr=str(layers.pick("master_addr")), master_port=layers.pick("master_port"),
        log_dir=Path(layers.pick("log_dir") or "mindrun_logs"),
        cluster_time_out=layers.pick("cluster_time_out"),
        bind_core=affinity.parse_binding(layers.pick("bind_core"), "--bind_core"),
        bind_numa=affinity.parse_binding(cli.get("bind_numa"), "--bind_numa"), sim_level=sim_level,
        worker_log_name=_log_name(cli.get("worker_log_name")),
        show_ms_logs=bool(cli.get("show_ms_logs")) or bool(env.get("GLOG_v", "").strip()),
        progress_interval=cli.get("progress_interval") if cli.get("progress_interval") is not None else 30.0,
        launch_mode=launch_mode, rank_table_file=layers.pick("rank_table_file"),
        run_scheduler=False, max_restarts=cli.get("max_restarts") or 0,
        grace_period=cli.get("grace_period") if cli.get("grace_period") is not None else 15.0,
        dry_run=bool(cli.get("dry_run")), visible_devices=visible,
        backend=cluster.backend if cluster else ("ascend" if launch_mode == "ranktable" else None),
        cluster=cluster)
    spec.sources = dict(layers.sources)
    _check(spec)
    if spec.sim_level is not None:
        _simulate(spec, cli.get("sim_rank_id"))
    elif cli.get("sim_rank_id") is not None:
        raise LaunchError("--sim_rank_id needs --sim_level (MindSpore's simulation)")
    spec.device_ids = _device_ids(spec, chosen)
    spec.tail_ranks = _tail(cli.get("tail_worker_log"), spec)
    if spec.bind_numa and not shutil.which("numactl"):
        spec.notes.append("--bind_numa: numactl is not installed, so only CPUs are bound to NUMA nodes "
                          "(memory is not)")
    if spec.launch_mode == "dynamic":
        spec.run_scheduler = _runs_scheduler(spec, disc) and spec.sim_level is None
        spec.run_workers = not disc.scheduler_only
        # simulation runs no scheduler: no port to pick
        _master_endpoint(spec, pick=spec.sim_level is None, probe=probe_port and spec.run_scheduler)
    elif spec.launch_mode == "store":
        _store(spec, probe_port)
    check_log_dir(spec.log_dir, create=not spec.dry_run)
    _check_log_names(spec)
    if ignored:
        spec.notes.append(f"ignored {', '.join(ignored)} from the environment: the command line describes the "
                          f"whole job (unset them to silence this)")
    for name, where in spec.sources.items():
        if where.startswith("environment"):
            spec.notes.append(f"{name} = {getattr(spec, name)} from {where}")
    return spec


def _master_endpoint(spec: LaunchSpec, pick: bool, probe: bool) -> None:
    """Resolve --master_addr; with --master_port 0 pick a free port (`pick`), else check that the port is free when
    this node will serve it (`probe`), before anything is created on disk."""
    given, spec.master_addr = spec.master_addr, resolve_host(spec.master_addr)
    if spec.master_port == 0 and pick:
        _pick_master_port(spec, given)
    elif probe and not spec.dry_run:
        from launcher.ports import check_master_port

        check_master_port(spec.master_addr, spec.master_port)


def hosts_store(spec: LaunchSpec) -> bool:
    """Store mode: whether rank 0, which serves the store at the master address, runs on this node."""
    return spec.launch_mode == "store" and ranks.rank_of(spec, 0) == 0


def _store(spec: LaunchSpec, probe_port: bool) -> None:
    """Store mode's checks: every rank known up front (MindSpore assigns none), a port for rank 0's store."""
    if spec.sim_level is not None:
        raise LaunchError("--sim_level starts no cluster: use it with --launch_mode dynamic")
    if ranks.rank_of(spec, 0) is None:
        raise LaunchError("--launch_mode store needs each worker's rank before it starts: pass --node_rank "
                          "(0 on the node whose workers are ranks 0..local_worker_num-1), or use a cluster file")
    _master_endpoint(spec, pick=True, probe=probe_port and hosts_store(spec))
    if spec.backend not in (None, "cpu"):
        spec.notes.append(f"--launch_mode store on {spec.backend}: joins through MindSpore's private "
                          f"_init_with_store, which ran only on the CPU here (launcher/join.py); dynamic is "
                          f"the tested mode there")


def _pick_master_port(spec: LaunchSpec, given: str) -> None:
    """--master_port 0: a free port on this machine, which must then be the scheduler's (`given`: the
    --master_addr as written; spec.master_addr is its address)."""
    if spec.worker_num != spec.local_worker_num:
        raise LaunchError("--master_port 0 (pick a free port) works on a single node only: the other "
                          "nodes cannot learn the port; give a fixed --master_port")
    address = spec.master_addr
    if not is_local(address):
        raise LaunchError(f"--master_port 0 picks a free port on this machine, but --master_addr "
                          f"{given} ({address}) is not this machine; give a local address or a fixed "
                          f"--master_port")
    from launcher.ports import free_port

    try:
        spec.master_port = free_port(address)
    except OSError as exc:
        raise LaunchError(f"--master_port 0: cannot open a port on {given} ({address}): "
                          f"{exc.strerror or exc}") from None
    spec.sources["master_port"] = "picked (--master_port 0)"
    spec.notes.append(f"picked free master port {spec.master_port}")


def _simulate(spec: LaunchSpec, sim_rank_id: Optional[int]) -> None:
    """msrun's --sim_level: no scheduler; with --sim_rank_id only that rank runs on this node."""
    if sim_rank_id is None:
        return
    if not 0 <= sim_rank_id < spec.worker_num:
        raise LaunchError(f"--sim_rank_id must be 0..{spec.worker_num - 1} (--worker_num {spec.worker_num}), "
                          f"got {sim_rank_id}")
    spec.fixed_rank, spec.local_worker_num = sim_rank_id, 1
    spec.notes.append(f"simulation level {spec.sim_level}: only rank {sim_rank_id} runs")


def _log_name(name: Optional[str]) -> str:
    """--worker_log_name with {ip} and {hostname} filled in (msrun's placeholders)."""
    if not name:
        return "worker"
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = "127.0.0.1"
    text = name.replace("{ip}", address).replace("{hostname}", host)
    if os.sep in text or text in (".", ".."):
        raise LaunchError(f"--worker_log_name {name!r} must be a file name without '{os.sep}'; use --log_dir "
                          f"for the directory")
    return text


def _check_log_names(spec: LaunchSpec) -> None:
    """LaunchError when a log the job will write (scheduler.log, <worker_log_name>_<rank>.log) is a directory
    in --log_dir, before any process starts (it would end in an IsADirectoryError)."""
    if not spec.log_dir.is_dir():
        return
    for entry in sorted(spec.log_dir.iterdir()):
        if entry.is_dir() and (entry.name == "scheduler.log" or
                               (entry.name.startswith(f"{spec.worker_log_name}_") and entry.name.endswith(".log"))):
            raise LaunchError(f"--log_dir {spec.log_dir}: {entry.name} is a directory, but the job writes its log "
                              f"there; remove it or choose another --log_dir (or --worker_log_name)")


def check_log_dir(path: Path, create: bool) -> None:
    """--log_dir must be a writable directory (or creatable); with `create`, make it and prove a write."""
    shown = f"--log_dir {path}"
    resolved = Path(os.path.abspath(path))
    for virtual in map(Path, VIRTUAL_FILESYSTEMS):
        if resolved == virtual or virtual in resolved.parents:
            raise LaunchError(f"{shown} is under {virtual}, a kernel filesystem; give a directory on disk")
    if resolved.exists() and not resolved.is_dir():
        raise LaunchError(f"{shown} is a file, not a directory; give a directory for the logs")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LaunchError(f"{shown}: {existing} is a file, so the directory cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LaunchError(f"{shown}: {existing} is not writable by this user; give another directory")
    if not create:
        return
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        probe = resolved / f".mindrun-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LaunchError(f"{shown}: cannot write there ({exc.strerror or exc}); give another directory") from None


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
    if spec.cluster_time_out == 0:
        raise LaunchError("--cluster_time_out must be at least 1 second, or -1 to wait forever; got 0")
    if not spec.progress_interval > 0:
        raise LaunchError(f"--progress_interval must be more than 0 seconds, got {spec.progress_interval:g}")
    if spec.grace_period < 0:
        raise LaunchError(f"--grace_period must be 0 or more seconds (between SIGTERM and SIGKILL), "
                          f"got {spec.grace_period:g}")
    if spec.max_restarts < 0:
        raise LaunchError(f"--max_restarts must be 0 or more, got {spec.max_restarts}")
    if spec.rank_table_file and not Path(spec.rank_table_file).is_file():
        state = "is a directory, not a rank table file" if Path(spec.rank_table_file).is_dir() else "does not exist"
        raise LaunchError(f"--rank_table_file {spec.rank_table_file} {state}")
    if spec.launch_mode not in LAUNCH_MODES:
        raise LaunchError(f"--launch_mode must be one of {', '.join(LAUNCH_MODES)}, got {spec.launch_mode!r}")


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
