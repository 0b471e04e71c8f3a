"""Cluster descriptions (`cluster_configs/*.yaml`): a typed schema checked at load.

A file names the nodes of a job, their addresses and devices, the backend, and how to
find each NPU's RoCE address for the HCCL rank table. Every problem (unknown or misspelt
key, wrong type, duplicate host, bad address) is a LaunchError naming the file and key.
"""
import difflib
import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from launcher.discovery import is_local
from launcher.errors import LaunchError
from launcher.ranktable import address_problem

BACKENDS = ("cpu", "gpu", "ascend")
LAUNCH_MODES = ("dynamic", "ranktable", "store")
DEVICE_IP_SOURCES = ("config", "auto", "hccn_tool", "hccn_conf")  # auto: hccn_tool when on PATH, else hccn_conf


@dataclass
class NodeSpec:
    """One machine of the job."""

    host: str  # address the other nodes reach this one at (the rank table's server_id)
    devices: int = 8  # worker processes (one per NPU/GPU, or CPU workers) on this node
    device_ids: Optional[List[int]] = None  # physical device ids; default 0..devices-1
    device_ips: Optional[List[str]] = None  # NPU RoCE addresses, one per device (rank tables)

    def ids(self) -> List[int]:
        """Physical device ids of this node, in local-rank order."""
        return list(self.device_ids) if self.device_ids is not None else list(range(self.devices))


@dataclass
class ClusterConfig:
    """A whole cluster: nodes plus job-wide settings the command line may override."""

    nodes: List[NodeSpec]
    name: str = "cluster"
    backend: str = "cpu"
    master_addr: Optional[str] = None  # default: the first node's host
    master_port: int = 8118
    # dynamic (scheduler + workers) | ranktable (Ascend, no scheduler) | store (rank 0 hosts the cluster)
    launch_mode: str = "dynamic"
    device_ip_source: str = "config"  # where device_ip comes from: config | auto | hccn_tool | hccn_conf
    hccn_conf: str = "/etc/hccn.conf"
    device_memory_gib: Optional[float] = None  # per device; read by `mindrun plan`, not by the launcher
    device_peak_tflops: Optional[float] = None  # dense 16-bit peak per device: `mindrun plan`'s step estimates
    link_gbytes_s: Optional[float] = None  # per-device collective bandwidth, GB/s: the same estimates
    cluster_time_out: int = 600  # seconds for every worker to register
    log_dir: Optional[str] = None
    bind_core: bool = False
    source: str = field(default="<memory>", repr=False)

    @property
    def worker_num(self) -> int:
        return sum(n.devices for n in self.nodes)

    @property
    def master(self) -> str:
        return self.master_addr or self.nodes[0].host


def _closest(key: str, valid: List[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(valid))}"


def _check_keys(raw: Dict[str, Any], cls, where: str, src: str) -> None:
    valid = [f.name for f in fields(cls) if f.name != "source"]
    for key in raw:
        if key not in valid:
            raise LaunchError(f"{src}: unknown key '{where}{key}'{_closest(str(key), valid)}")


def _typed(value: Any, kind, key: str, src: str) -> Any:
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str) and v != "",
          bool: lambda v: isinstance(v, bool)}[kind](value)
    if not ok:
        raise LaunchError(f"{src}: '{key}' must be {'a non-empty string' if kind is str else kind.__name__}, "
                          f"got {value!r}")
    return float(value) if kind is float else value


def _check_ip(value: Any, key: str, src: str) -> str:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        raise LaunchError(f"{src}: '{key}' = {value!r} is not an IP address "
                          f"(an NPU without a configured RoCE address shows as '-.-.-.-')") from None
    problem = address_problem(str(value), device=True)
    if problem:
        raise LaunchError(f"{src}: '{key}' = {value!r} {problem}; give the NPU's RoCE address "
                          f"('hccn_tool -i N -ip -g')")
    return str(value)


def _node(raw: Any, i: int, src: str) -> NodeSpec:
    where = f"nodes[{i}]."
    if not isinstance(raw, dict):
        raise LaunchError(f"{src}: 'nodes[{i}]' must be a mapping with 'host' and 'devices', got {raw!r}")
    _check_keys(raw, NodeSpec, where, src)
    if "host" not in raw:
        raise LaunchError(f"{src}: '{where}host' is missing (the node's address, e.g. 10.0.0.1)")
    node = NodeSpec(host=_typed(raw["host"], str, where + "host", src))
    if "devices" in raw:
        node.devices = _typed(raw["devices"], int, where + "devices", src)
    if node.devices < 1:
        raise LaunchError(f"{src}: '{where}devices' must be at least 1, got {node.devices}")
    if raw.get("device_ids") is not None:
        ids = raw["device_ids"]
        if not isinstance(ids, list):
            raise LaunchError(f"{src}: '{where}device_ids' must be a list of integers, got {ids!r}")
        node.device_ids = [_typed(v, int, f"{where}device_ids[{j}]", src) for j, v in enumerate(ids)]
        if len(node.device_ids) != node.devices or len(set(node.device_ids)) != len(node.device_ids):
            raise LaunchError(f"{src}: '{where}device_ids' must list {node.devices} distinct ids "
                              f"(one per device), got {ids}")
    if raw.get("device_ips") is not None:
        ips = raw["device_ips"]
        if not isinstance(ips, list) or len(ips) != node.devices:
            raise LaunchError(f"{src}: '{where}device_ips' must list {node.devices} addresses "
                              f"(one per device), got {ips!r}")
        node.device_ips = [_check_ip(v, f"{where}device_ips[{j}]", src) for j, v in enumerate(ips)]
    return node


def parse_cluster(raw: Any, src: str = "<memory>") -> ClusterConfig:
    """Validate a parsed YAML mapping and return the ClusterConfig it describes."""
    if not isinstance(raw, dict):
        raise LaunchError(f"{src}: a cluster file must be a mapping with a 'nodes' list at the top")
    _check_keys(raw, ClusterConfig, "", src)
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise LaunchError(f"{src}: 'nodes' must be a non-empty list of {{host, devices}} entries")
    cfg = ClusterConfig(nodes=[_node(n, i, src) for i, n in enumerate(nodes_raw)], source=src)
    kinds = {"name": str, "backend": str, "master_addr": str, "master_port": int, "launch_mode": str,
             "device_ip_source": str, "hccn_conf": str, "device_memory_gib": float,
             "device_peak_tflops": float, "link_gbytes_s": float,
             "cluster_time_out": int, "log_dir": str, "bind_core": bool}
    for key, kind in kinds.items():
        if raw.get(key) is not None:
            setattr(cfg, key, _typed(raw[key], kind, key, src))
    for key, allowed in (("backend", BACKENDS), ("launch_mode", LAUNCH_MODES),
                         ("device_ip_source", DEVICE_IP_SOURCES)):
        if getattr(cfg, key) not in allowed:
            raise LaunchError(f"{src}: '{key}' must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    if not 0 <= cfg.master_port <= 65535:
        raise LaunchError(f"{src}: 'master_port' must be 0..65535 (0 = pick a free one), got {cfg.master_port}")
    if cfg.cluster_time_out < 1:
        raise LaunchError(f"{src}: 'cluster_time_out' must be at least 1 second, got {cfg.cluster_time_out}")
    _check_nodes(cfg, src)
    return cfg


def _check_nodes(cfg: ClusterConfig, src: str) -> None:
    seen: Dict[str, int] = {}
    for i, node in enumerate(cfg.nodes):
        if node.host in seen:
            raise LaunchError(f"{src}: host {node.host} appears twice (nodes[{seen[node.host]}] and "
                              f"nodes[{i}]); list each machine once with its device count")
        seen.setdefault(node.host, i)
    if len({n.devices for n in cfg.nodes}) > 1 and cfg.launch_mode == "dynamic":
        counts = ", ".join(f"{n.host}: {n.devices}" for n in cfg.nodes)
        raise LaunchError(f"{src}: every node needs the same 'devices' count in dynamic mode "
                          f"(rank = node_rank x local workers + i), got {counts}")
    all_ips = [(ip, n.host, j) for n in cfg.nodes for j, ip in enumerate(n.device_ips or [])]
    first: Dict[str, str] = {}
    for ip, host, j in all_ips:
        if ip in first:
            raise LaunchError(f"{src}: device_ip {ip} is used twice ({first[ip]} and {host} device {j}); "
                              f"every NPU needs its own RoCE address")
        first[ip] = f"{host} device {j}"
    if cfg.device_ip_source == "config" and cfg.launch_mode == "ranktable":
        missing = [n.host for n in cfg.nodes if not n.device_ips]
        if missing:
            raise LaunchError(f"{src}: launch_mode ranktable with device_ip_source config needs "
                              f"'device_ips' on every node; missing on {', '.join(missing)} "
                              f"(or set device_ip_source: auto)")


def this_node(cfg: ClusterConfig, node_rank: int = -1) -> Optional[int]:
    """Index of this machine among `cfg.nodes`: node_rank when given, the only node, or the one whose
    host is a local address; None when that is not clear (no node or several are local)."""
    if node_rank >= 0:
        return node_rank
    if len(cfg.nodes) == 1:
        return 0
    mine = [i for i, n in enumerate(cfg.nodes) if is_local(n.host)]
    return mine[0] if len(mine) == 1 else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the later one silently)."""

    def construct_mapping(self, node, deep=False):
        first: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' on lines {earlier.start_mark.line + 1} and "
                    f"{key_node.start_mark.line + 1} of one mapping (the later would silently win); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context_mark = getattr(exc, "context_mark", None)
    if getattr(exc, "context", None) and context_mark is not None and mark is not None \
            and context_mark.line != mark.line:
        problem += f" ({' '.join(exc.context.split())} on line {context_mark.line + 1})"
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return f"{path}:{line}:{column}: not valid YAML: character U+{code:04X} is not allowed; remove it"
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"


def load_cluster(path) -> ClusterConfig:
    """Read and validate a cluster YAML file; LaunchError on any problem, naming the file."""
    path = Path(path)
    if not path.is_file():
        here = Path(__file__).resolve().parent.parent / "cluster_configs" / path.name
        if here.is_file() and path.parent == Path("."):
            path = here
        elif path.is_dir():
            raise LaunchError(f"cluster file {path} is a directory; pass a cluster YAML file (cluster_configs/*.yaml)")
        else:
            raise LaunchError(f"cluster file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LaunchError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise LaunchError(f"cluster file {path} cannot be read ({exc.strerror or exc}); "
                          f"check its permissions") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise LaunchError(_yaml_error(path, text, exc)) from None
    return parse_cluster(raw, str(path))
