"""`mindrun doctor`: a preflight an Ascend user runs on each node before a long job.

    mindrun doctor                                           # this node, its NPUs 0-7
    mindrun doctor --cluster cluster_configs/ascend_2x16.yaml --checkpoint_dir /shared/runs

One line per check, `OK` with what was found or `FAIL` with what to fix; exit 0 only if every
check passes (1 otherwise, 2 for bad input such as a broken cluster file):

    node        which node of the cluster file this machine is (its host must be a local address)
    npu         `npu-smi info` lists the job's NPUs, each with health OK
    device ip   `hccn_tool -i N -ip -g` (or /etc/hccn.conf) gives each NPU a RoCE address
                (and the cluster file's device_ips agree)
    link        `hccn_tool -i N -link -g` says UP for each NPU
    rank table  the table the launch would use (given, or generated) validates
    master port the scheduler's port is free on the node that runs it
    mindspore   installed, and its version
    cann        the CANN toolkit's version file (ASCEND_HOME_PATH, /usr/local/Ascend/...)
    checkpoints --checkpoint_dir is writable, and on a filesystem shared between nodes when the
                job has several (type from /proc/mounts)

Across a cluster, run the same command on every node: each checks itself against its entry.
"""
import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from launcher import atomic, devices, ranktable, ranktable_job
from launcher.cluster import ClusterConfig, load_cluster, this_node
from launcher.discovery import is_local, resolve
from launcher.errors import LaunchError
from launcher.join import server_of
from launcher.ports import check_master_port

MOUNTS = Path("/proc/mounts")
NPU_SMI = "npu-smi"
ASCEND_ROOTS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann", "/usr/local/Ascend/latest")
CANN_VERSION_FILES = ("version.cfg", "version.info", "ascend_toolkit_install.info", "*/ascend_toolkit_install.info")
# Filesystems that several machines mount at once (network, cluster or object-store filesystems).
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "ceph", "cephfs", "fuse.cephfs", "glusterfs", "fuse.glusterfs",
             "beegfs", "cifs", "smb3", "smbfs", "ocfs2", "gfs2", "orangefs", "pvfs2", "wekafs", "afs",
             "fuse.juicefs", "fuse.obsfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.sshfs", "fuse.dfuse", "dfs"}


@dataclass(frozen=True)
class Check:
    """The outcome of one check: OK with what was found, or what to fix."""

    name: str
    ok: bool
    message: str

    def line(self) -> str:
        """One console line: 'OK    npu: ...' or 'FAIL  link: ...'."""
        return f"{'OK' if self.ok else 'FAIL':<5} {self.name}: {self.message}"


@dataclass
class Target:
    """What this node is about to run, from the options and the cluster file."""

    devices: List[int]  # this node's physical NPUs
    cluster: Optional[ClusterConfig] = None
    node: Optional[int] = None  # this machine's index in the cluster file
    launch_mode: str = "dynamic"
    rank_table_file: Optional[str] = None
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    checkpoint_dir: Path = Path("runs")
    ip_source: str = "auto"
    hccn_conf: str = devices.HCCN_CONF
    nodes: int = 1  # machines in the job


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'."""
    out, ids = [], sorted(ids)
    start = prev = None
    for i in ids + [None]:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = i
    return ",".join(out)


# ---- NPUs ----------------------------------------------------------------------------------
def parse_npu_smi(text: str) -> Dict[int, str]:
    """Physical device id -> health from `npu-smi info`'s table; on cards with several chips (Atlas A3)
    the chips' Phy-IDs are the device ids."""
    npus: Dict[int, str] = {}
    chips: Dict[int, str] = {}
    health = "OK"
    for line in text.splitlines():
        row = re.match(r"^\|\s*(\d+)\s+([A-Za-z0-9][\w.-]*)\s*\|\s*([A-Za-z]+)\b", line)
        if row and not row.group(2).isdigit():
            npus[int(row.group(1))] = health = row.group(3)
            continue
        chip = re.match(r"^\|\s*\d+\s+(\d+)\s*\|\s*[0-9A-Fa-f]{4}:", line)
        if chip:
            chips[int(chip.group(1))] = health
    return chips or npus


def query_npus() -> Tuple[Dict[int, str], str]:
    """What `npu-smi info` lists (physical id -> health), and why nothing when it lists nothing."""
    if not shutil.which(NPU_SMI):
        return {}, ("npu-smi is not on PATH: no Ascend driver here. Run on an NPU server with the driver "
                    "installed (npu-smi comes with it, in /usr/local/sbin or /usr/local/bin)")
    try:
        out = subprocess.run([NPU_SMI, "info"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"'npu-smi info' could not run: {exc}; check the driver installation"
    npus = parse_npu_smi(out.stdout) if out.returncode == 0 else {}
    if npus:
        return npus, ""
    detail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no NPU rows"]
    return {}, (f"'npu-smi info' lists no NPU (exit {out.returncode}: {detail[0]}); check the driver "
                f"('npu-smi info' as root) and the container's device mounts")


def check_npus(wanted: Sequence[int], npus: Dict[int, str], error: str = "") -> Check:
    """Every NPU the job uses is listed by npu-smi (`npus`, from query_npus) with health OK."""
    if not npus:
        return Check("npu", False, error or "npu-smi lists no NPU")
    missing = [d for d in wanted if d not in npus]
    if missing:
        return Check("npu", False, f"the job uses devices {_ranges(wanted)} but npu-smi lists {_ranges(list(npus))}; "
                                   f"missing {_ranges(missing)}: pass --devices or fix the cluster file's "
                                   f"devices/device_ids")
    sick = {d: npus[d] for d in wanted if npus[d].upper() != "OK"}
    if sick:
        listed = ", ".join(f"NPU {d} health {h}" for d, h in sick.items())
        return Check("npu", False, f"{listed}: see 'npu-smi info -t health -i ID' and the device log before use")
    return Check("npu", True, f"{len(wanted)} NPUs ({_ranges(wanted)}) listed by npu-smi, health OK")


def check_device_ips(target: Target) -> Check:
    """Each NPU has a valid RoCE address (hccn_tool or hccn.conf), matching the cluster file's device_ips."""
    configured = _configured_ips(target)
    found: Dict[int, str] = {}
    problems: List[str] = []
    for device in target.devices:
        try:
            found[device] = devices.lookup_ips([device], None, target.ip_source, target.hccn_conf)[device]
        except LaunchError as exc:
            if f"device {device}" not in str(exc):  # no tool and no hccn.conf: one problem for every NPU
                return Check("device ip", False, str(exc))
            problems.append(str(exc))
            continue
        if not _is_ip(found[device]):
            problems.append(f"NPU {device}: address {found[device]!r} is not configured; set it with "
                            f"'hccn_tool -i {device} -ip -s address IP netmask MASK'")
        elif configured and configured.get(device) not in (None, found[device]):
            problems.append(f"NPU {device}: hccn reports {found[device]} but {target.cluster.source} lists "
                            f"{configured[device]}; correct device_ips")
    seen: Dict[str, int] = {}
    for device, ip in found.items():
        if _is_ip(ip) and ip in seen:
            problems.append(f"NPU {device}: address {ip} is also NPU {seen[ip]}'s")
        seen.setdefault(ip, device)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check("device ip", False, "; ".join(problems[:3]) + more)
    first, last = found[target.devices[0]], found[target.devices[-1]]
    return Check("device ip", True, f"{len(found)} NPUs have RoCE addresses ({first} .. {last})")


def check_links(target: Target) -> Check:
    """`hccn_tool -i N -link -g` reports UP for every NPU."""
    if not shutil.which(devices.HCCN_TOOL):
        return Check("link", False, "hccn_tool is not on PATH, so the NPUs' links cannot be read; it comes with "
                                    "the Ascend driver (/usr/local/Ascend/driver/tools): add that folder to PATH")
    down, errors = [], []
    for device in target.devices:
        try:
            if devices.link_state(device) != "UP":
                down.append(device)
        except LaunchError as exc:
            errors.append(str(exc))
    if down or errors:
        parts = []
        if down:
            names = ", ".join(f"NPU {d}" for d in down)
            parts.append(f"link DOWN on {names} ('hccn_tool -i {down[0]} -link -g'): check the optical module, "
                         f"cable and switch port, then 'hccn_tool -i {down[0]} -net_health -g'")
        parts.extend(errors[:2])
        return Check("link", False, "; ".join(parts))
    return Check("link", True, f"{len(target.devices)} NPUs report link UP")


# ---- job ---------------------------------------------------------------------------------
def check_node(target: Target) -> Check:
    """With a cluster file: this machine is one of its nodes, by a local address."""
    cluster = target.cluster
    if target.node is None:
        return Check("node", False, f"{cluster.source}: none or several of its hosts are this machine's addresses; "
                                    f"put this server's address in 'host', or pass --node_rank")
    host = cluster.nodes[target.node].host
    if not is_local(host):
        return Check("node", False, f"{cluster.source}: node {target.node} host {host} is not an address of this "
                                    f"machine; replace it with this server's address (other nodes and the rank "
                                    f"table reach it there)")
    others = "; run 'mindrun doctor' with the same options on every node" if len(cluster.nodes) > 1 else ""
    return Check("node", True, f"this machine is node {target.node} ({host}) of {len(cluster.nodes)} in "
                               f"{cluster.source}{others}")


def check_rank_table(target: Target) -> Check:
    """The rank table the launch would use: the given file, or the one it would generate, validates."""
    world = target.cluster.worker_num if target.cluster else None
    try:
        if target.rank_table_file:
            table = ranktable.load(target.rank_table_file)
            ranktable.validate(table, target.rank_table_file, world_size=world)
            src = target.rank_table_file
            if target.launch_mode != "ranktable":
                src += " (exported as RANK_TABLE_FILE; workers register with the scheduler)"
        elif target.launch_mode == "ranktable":
            if target.cluster is not None:
                servers = ranktable_job.cluster_servers(target.cluster, -1 if target.node is None else target.node,
                                                        this_devices=target.devices)
            else:
                servers = ranktable_job.this_host_servers(target.devices, None, target.ip_source, target.hccn_conf)
            table, src = ranktable.build(servers), "the table the launch would generate"
        else:
            return Check("rank table", True, f"not used (launch_mode {target.launch_mode}: workers register with "
                                             f"{server_of(target.launch_mode)})")
    except LaunchError as exc:
        return Check("rank table", False, str(exc))
    warning = ranktable.order_warning(table, src)
    note = " (servers not in dictionary order of server_id: used as written)" if warning else ""
    return Check("rank table", True, f"{src}: version {table['version']}, {len(table['server_list'])} server(s), "
                                     f"{ranktable.world_size(table)} devices{note}")


def check_master_port_free(target: Target) -> Check:
    """The scheduler's (store mode: rank 0's store's) address resolves, and its port is free on the node that will
    run it."""
    if target.launch_mode == "ranktable":
        return Check("master port", True, "not used (rank-table mode runs no scheduler)")
    try:
        addr = resolve(target.master_addr)
    except LaunchError as exc:
        return Check("master port", False, str(exc))
    if not is_local(addr):
        return Check("master port", True, f"{server_of(target.launch_mode)} {target.master_addr}:{target.master_port} "
                                          f"runs on another node (its own doctor checks the port)")
    try:
        check_master_port(addr, target.master_port)
    except LaunchError as exc:
        return Check("master port", False, str(exc))
    return Check("master port", True, f"{target.master_port} on {addr} is free")


# ---- software ------------------------------------------------------------------------------
def check_mindspore() -> Check:
    """MindSpore is installed (read from its package metadata; not imported)."""
    try:
        return Check("mindspore", True, f"version {metadata.version('mindspore')}")
    except metadata.PackageNotFoundError:
        return Check("mindspore", False, "not installed in this Python: pip install 'mindspore==2.10.0'")


def cann_version(roots: Optional[Sequence[str]] = None) -> Optional[Tuple[str, Path]]:
    """(version, file) of the CANN toolkit, from the first version file found under the usual roots."""
    if roots is None:
        roots = [os.environ.get(k, "") for k in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")] + list(ASCEND_ROOTS)
    for root in filter(None, roots):
        for pattern in CANN_VERSION_FILES:
            for file in sorted(Path(root).glob(pattern)):
                version = _read_version(file)
                if version:
                    return version, file
    return None


def _read_version(file: Path) -> Optional[str]:
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    plain = re.search(r"^\s*version\s*=\s*(\S+)", text, re.IGNORECASE | re.MULTILINE)
    if plain:
        return plain.group(1)
    bracket = re.search(r"_version\s*=\s*\[([^\]:]+)(?::([^\]]+))?\]", text)  # version.cfg: [inner:public]
    if bracket:
        return bracket.group(2) or bracket.group(1)
    return None


def check_cann() -> Check:
    """The CANN toolkit is installed and its version readable."""
    found = cann_version()
    if found is None:
        return Check("cann", False, "no CANN toolkit found ($ASCEND_HOME_PATH, /usr/local/Ascend/ascend-toolkit/"
                                    "latest): install CANN and 'source /usr/local/Ascend/ascend-toolkit/set_env.sh'")
    return Check("cann", True, f"version {found[0]} ({found[1]})")


# ---- storage -----------------------------------------------------------------------------------
def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def filesystem(path: Path, mounts: Optional[str] = None) -> Tuple[str, str]:
    """(filesystem type, mount point) holding `path`, from /proc/mounts (longest mount point wins)."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return "unknown", "/"
    real = os.path.realpath(path)
    best = ("unknown", "")
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = _unescape(parts[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (parts[2], point)
    return best


def check_checkpoint_dir(target: Target, mounts: Optional[str] = None) -> Check:
    """The checkpoint directory can be written, and is shared between nodes when the job has several."""
    path = target.checkpoint_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Check("checkpoints", False, f"{path}: {existing} is not a directory; choose another --checkpoint_dir")
    probe = existing / f".mindrun-doctor-{os.getpid()}"
    try:
        atomic.write_bytes(probe, b"ok\n")
        probe.unlink()
    except OSError as exc:
        return Check("checkpoints", False, f"{path}: cannot write in {existing} ({exc.strerror}); fix its "
                                           f"permissions or choose another --checkpoint_dir")
    fstype, point = filesystem(existing, mounts)
    shared = fstype in SHARED_FS
    where = f"{path} is writable" + ("" if existing == path else f" (would be created under {existing})")
    kind = f"on {fstype} at {point or '?'}, {'shared between nodes' if shared else 'local to this node'}"
    if target.nodes > 1 and not shared:
        return Check("checkpoints", False, f"{where} but {kind}, and the job has {target.nodes} nodes: put "
                                           f"--checkpoint_dir on a shared filesystem (NFS, Lustre, GPFS, CephFS, ...) "
                                           f"so every node resumes from the same checkpoints")
    return Check("checkpoints", True, f"{where}, {kind}")


# ---- entry point ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """Options of `mindrun doctor`."""
    p = argparse.ArgumentParser(prog="mindrun doctor", description="Preflight checks for a job on this node "
                                "(run it on every node). Exit 0 only if every check passes.")
    p.add_argument("--cluster", help="cluster file: this node's entry, launch mode, master, device IPs")
    p.add_argument("--node_rank", type=int, help="this node's index in the cluster file (default: found by address)")
    p.add_argument("--devices", help="this node's physical NPUs, e.g. 0-7 (default: the cluster file's, "
                   "ASCEND_RT_VISIBLE_DEVICES, what npu-smi lists, else 0-7)")
    p.add_argument("--visible_devices", help="as for mindrun launch: the NPUs the job's workers use")
    p.add_argument("--launch_mode", choices=["dynamic", "ranktable", "store"], help="default: the cluster file's, else "
                   "dynamic (as for mindrun launch, also with --rank_table_file)")
    p.add_argument("--rank_table_file", help="the rank table the job will use (validated)")
    p.add_argument("--master_addr", help="scheduler address (default: the cluster file's, else 127.0.0.1)")
    p.add_argument("--master_port", type=int, help="scheduler port (default: the cluster file's, else 8118)")
    p.add_argument("--checkpoint_dir", default="runs", help="where runs and checkpoints go (default runs/)")
    return p


def target_from(ns: argparse.Namespace, env: Optional[Dict[str, str]] = None) -> Target:
    """Resolve the options (and cluster file) into what this node is about to run; LaunchError on bad input."""
    env = dict(os.environ if env is None else env)
    cluster = load_cluster(ns.cluster) if ns.cluster else None
    node = this_node(cluster, -1 if ns.node_rank is None else ns.node_rank) if cluster else None
    if cluster is not None and node is not None and not 0 <= node < len(cluster.nodes):
        raise LaunchError(f"--node_rank {node} but {cluster.source} has {len(cluster.nodes)} nodes")
    if ns.devices or ns.visible_devices:
        ids = sorted(devices.parse_device_list(ns.devices or ns.visible_devices,
                                               "--devices" if ns.devices else "--visible_devices"))
    elif cluster is not None and node is not None:
        ids = cluster.nodes[node].ids()
    else:
        ids = devices.inherited_visible(env) or []
    target = Target(devices=ids, cluster=cluster, node=node, rank_table_file=ns.rank_table_file,
                    checkpoint_dir=Path(ns.checkpoint_dir))
    if cluster is not None:
        target.launch_mode, target.master_addr = cluster.launch_mode, cluster.master
        target.master_port, target.nodes = cluster.master_port, len(cluster.nodes)
        target.ip_source, target.hccn_conf = cluster.device_ip_source, cluster.hccn_conf
    # as `mindrun launch` (and msrun): --rank_table_file alone keeps the dynamic cluster (a scheduler, the table
    # exported as RANK_TABLE_FILE); only --launch_mode ranktable starts the workers from the table
    target.launch_mode = ns.launch_mode or target.launch_mode
    target.master_addr = ns.master_addr or target.master_addr
    target.master_port = ns.master_port if ns.master_port is not None else target.master_port
    return target


def _configured_ips(target: Target) -> Optional[Dict[int, str]]:
    if target.cluster is None or target.node is None:
        return None
    node = target.cluster.nodes[target.node]
    return dict(zip(node.ids(), node.device_ips)) if node.device_ips else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def run_checks(target: Target) -> List[Check]:
    """Every check, in order (the NPU list from npu-smi fills in the devices when none were named)."""
    checks = [check_node(target)] if target.cluster is not None else []
    npus, error = query_npus()
    if not target.devices:
        target.devices = sorted(npus) or list(range(8))
    checks += [check_npus(target.devices, npus, error), check_device_ips(target), check_links(target),
               check_rank_table(target), check_master_port_free(target), check_mindspore(), check_cann(),
               check_checkpoint_dir(target)]
    return checks


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `mindrun doctor`: print one line per check; 0 if all pass, 1 if not, 2 on bad input."""
    from launcher.cli import known_options, respell

    options = parser()
    ns = options.parse_args(respell(argv, known_options(options)))
    try:
        target = target_from(ns)
    except LaunchError as exc:
        print(f"mindrun doctor: error: {exc}", file=sys.stderr)
        return 2
    checks = run_checks(target)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"doctor: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})")
        return 1
    print(f"doctor: all {len(checks)} checks passed")
    return 0
