"""Where a job learns its shape from the environment: Slurm, Huawei's Ascend Operator, this host.

Values found here fill options the user left unset; the command line always wins.
"""
import re
import socket
from dataclasses import dataclass
from typing import List, Mapping, Optional, Set

from launcher.errors import LaunchError


@dataclass
class Discovered:
    """Job-shape facts read from a scheduler's environment (None: not provided)."""

    source: str = ""  # "slurm", "ascend-operator" or "" (nothing found)
    node_rank: Optional[int] = None
    nnodes: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    worker_num: Optional[int] = None
    local_worker_num: Optional[int] = None
    scheduler_only: bool = False  # the Ascend Operator's scheduler pod runs no workers


def expand_hostlist(spec: str) -> List[str]:
    """Expand a Slurm hostlist such as 'node[01-03,7],login1' into host names, in order."""
    hosts: List[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", spec):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise LaunchError(f"cannot read the Slurm host range '{item}' in '{spec}'")
            hosts.extend(f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    return hosts


def _int(env: Mapping[str, str], key: str) -> Optional[int]:
    value = env.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {key}={value!r} must be an integer") from None


def from_environment(env: Mapping[str, str]) -> Discovered:
    """Read Slurm's SLURM_* or the Ascend Operator's MS_* job variables, if present."""
    if "MS_LOCAL_WORKER" in env or "MS_NODE_RANK" in env:
        # Ascend Operator (MindCluster) for MindSpore jobs: one pod per node plus a scheduler pod
        return Discovered(source="ascend-operator", node_rank=_int(env, "MS_NODE_RANK"),
                          master_addr=env.get("MS_SCHED_HOST") or None, master_port=_int(env, "MS_SCHED_PORT"),
                          worker_num=_int(env, "MS_WORKER_NUM"), local_worker_num=_int(env, "MS_LOCAL_WORKER"),
                          scheduler_only=env.get("MS_ROLE") == "MS_SCHED")
    if "SLURM_JOB_ID" in env and "SLURM_NODEID" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        hosts = expand_hostlist(nodelist) if nodelist else []
        nnodes = _int(env, "SLURM_JOB_NUM_NODES") or _int(env, "SLURM_NNODES") or (len(hosts) or None)
        return Discovered(source="slurm", node_rank=_int(env, "SLURM_NODEID"), nnodes=nnodes,
                          master_addr=hosts[0] if hosts else None)
    return Discovered()


def local_addresses() -> Set[str]:
    """Addresses (and names) by which this machine knows itself."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    except Exception:  # psutil missing: fall back to name resolution below
        pass
    try:
        names.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    except socket.gaierror:
        pass
    return names


def is_local(host: str) -> bool:
    """True if `host` (a name or an address) is this machine."""
    local = local_addresses()
    if host in local:
        return True
    try:
        return any(info[4][0] in local for info in socket.getaddrinfo(host, None))
    except socket.gaierror:
        return False


def resolve(host: str) -> str:
    """The IP address of `host` (MindSpore's MS_SCHED_HOST wants an address, not a name)."""
    try:
        return socket.getaddrinfo(host, None)[0][4][0]
    except socket.gaierror:
        raise LaunchError(f"cannot resolve host '{host}' to an address; check the name or pass an IP") from None
