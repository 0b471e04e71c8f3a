"""HCCL rank tables: version "1.0" (generated, read) and "1.2" (Atlas A3 SuperPoD, read and passed through).

Every value is a string, as MindSpore and HCCL require.

    1.0 {"version": "1.0", "server_count": "2", "status": "completed",
         "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                          "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]},
                         ...]}
    1.2 the same, plus per server "host_ip" (and optionally "container_ip"), per device "super_device_id"
        (and optionally "device_port", "backup_device_ip", "backup_device_port", "host_port"), and
        "super_pod_list": [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}, ...]}, ...]

Generated tables (`build`, `merge`) list servers in the dictionary order of server_id and number
ranks across them in that order, MindSpore's documented rule. A table read from a file may be in
another order: HCCL only needs unique rank ids 0..N-1, so it is accepted as written, with a
warning (`order_warning`). `device_ip` may be left out when the table has a single server.
"""
import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from launcher import atomic
from launcher.errors import LaunchError

VERSIONS = ("1.0", "1.2")
Server = Tuple[str, Sequence[Tuple[int, str]]]  # (server_id, [(device_id, device_ip), ...])


def build(servers: Sequence[Server]) -> Dict:
    """A version 1.0 table for `servers`, sorted by server_id, ranks numbered 0..N-1 in that order."""
    table_servers = []
    rank = 0
    for server_id, devices in sorted(servers, key=lambda s: s[0]):
        entries = []
        for device_id, device_ip in devices:
            entries.append({"device_id": str(device_id), "device_ip": str(device_ip), "rank_id": str(rank)})
            rank += 1
        table_servers.append({"server_id": str(server_id), "device": entries, "host_nic_ip": "reserve"})
    table = {"version": "1.0", "server_count": str(len(table_servers)), "server_list": table_servers,
             "status": "completed"}
    validate(table, "<generated>")
    return table


def merge(tables: Sequence[Dict], sources: Sequence[str]) -> Dict:
    """Merge per-node tables of one version into one: servers in server_id order, ranks renumbered,
    every other field (1.2's super_device_id, host_ip, ports, super pods) kept."""
    for table, src in zip(tables, sources):
        validate(table, src)
    versions = sorted({t["version"] for t in tables})
    if len(versions) > 1:
        raise LaunchError(f"cannot merge tables of versions {' and '.join(versions)} "
                          f"({', '.join(sources)}); generate them all in one version")
    servers: List[Dict] = []
    seen: Dict[str, str] = {}
    pods: Dict[str, List[Dict]] = {}
    for table, src in zip(tables, sources):
        for server in table["server_list"]:
            if server["server_id"] in seen:
                raise LaunchError(f"server {server['server_id']} appears in both {seen[server['server_id']]} "
                                  f"and {src}; merge each node's table once")
            seen[server["server_id"]] = src
            entry = copy.deepcopy(server)
            entry["device"] = sorted(entry["device"], key=lambda d: int(d["rank_id"]))
            servers.append(entry)
        for pod in table.get("super_pod_list") or []:
            pods.setdefault(pod["super_pod_id"], []).extend(copy.deepcopy(pod["server_list"]))
    servers.sort(key=lambda s: s["server_id"])
    rank = 0
    for server in servers:
        for device in server["device"]:
            device["rank_id"] = str(rank)
            rank += 1
    merged = {"version": versions[0], "server_count": str(len(servers)), "server_list": servers,
              "status": "completed"}
    if versions[0] == "1.2":
        merged["super_pod_list"] = [{"super_pod_id": pid, "server_list": members} for pid, members in pods.items()]
    validate(merged, "<merged>")
    return merged


def _where(src: str, server: Optional[str] = None, device: Optional[str] = None) -> str:
    out = src
    if server is not None:
        out += f": server {server}"
    if device is not None:
        out += f" device {device}"
    return out


def _string(obj: Dict, key: str, where: str) -> str:
    if key not in obj:
        raise LaunchError(f"{where}: '{key}' is missing")
    if not isinstance(obj[key], str):
        raise LaunchError(f"{where}: '{key}' must be a string (\"{obj[key]}\"), got {type(obj[key]).__name__} "
                          f"{obj[key]!r}; MindSpore rejects numbers here")
    return obj[key]


def _number(obj: Dict, key: str, where: str, required: bool = True) -> Optional[str]:
    if key not in obj and not required:
        return None
    value = _string(obj, key, where)
    if not re.fullmatch(r"[0-9]+", value):
        raise LaunchError(f"{where}: {key} must be a number in a string (ASCII digits 0-9, e.g. \"0\"), "
                          f"got {value!r}")
    return value


def address_problem(value: str, device: bool = False) -> Optional[str]:
    """Why `value` cannot be a rank table's (device=True: an NPU's RoCE) address, or None when it can."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "is not a valid address"
    if ip.is_unspecified:
        return "is the unspecified address (any interface), not a reachable one"
    if ip.is_multicast:
        return "is a multicast address, not a host's"
    if device and ip.is_loopback:
        return "is a loopback address, which no other NPU can reach"
    return None


def _address(obj: Dict, key: str, where: str, hint: str = "", device: bool = False) -> Optional[str]:
    if key not in obj:
        return None
    value = _string(obj, key, where)
    problem = address_problem(value, device)
    if problem:
        raise LaunchError(f"{where}: {key} {value!r} {problem}{hint}")
    return value


def validate(table, src: str, world_size: Optional[int] = None) -> None:
    """Raise LaunchError naming the server and device of the first problem in a 1.0 or 1.2 `table`."""
    if not isinstance(table, dict):
        raise LaunchError(f"{src}: a rank table is a JSON object, got {type(table).__name__}")
    version = _string(table, "version", src)
    if version not in VERSIONS:
        raise LaunchError(f"{src}: version {version!r} is not supported (only \"1.0\" and \"1.2\")")
    if _string(table, "status", src) != "completed":
        raise LaunchError(f"{src}: status must be \"completed\", got {table['status']!r}")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise LaunchError(f"{src}: 'server_list' must be a non-empty list")
    count = _number(table, "server_count", src)
    if count != str(len(servers)):
        raise LaunchError(f"{src}: server_count is \"{count}\" but server_list has {len(servers)} servers")
    ips: Dict[str, str] = {}
    ranks: Dict[int, str] = {}
    ids: List[str] = []
    for s, server in enumerate(servers):
        if not isinstance(server, dict):
            raise LaunchError(f"{src}: server_list[{s}] must be an object")
        sid = _string(server, "server_id", f"{src}: server_list[{s}]")
        if not sid.strip():
            raise LaunchError(f"{src}: server_list[{s}]: server_id is empty; set it to the server's address "
                              f"(or name, in 1.2 tables)")
        if sid in ids:
            raise LaunchError(f"{_where(src, sid)}: server_id appears twice in server_list")
        ids.append(sid)
        if "host_nic_ip" in server:
            _string(server, "host_nic_ip", _where(src, sid))
        for key in ("host_ip", "container_ip"):
            _address(server, key, _where(src, sid))
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise LaunchError(f"{_where(src, sid)}: 'device' must be a non-empty list")
        device_ids = set()
        for d, device in enumerate(devices):
            if not isinstance(device, dict):
                raise LaunchError(f"{_where(src, sid)}: device[{d}] must be an object")
            did = _number(device, "device_id", f"{_where(src, sid)} device[{d}]")
            where = _where(src, sid, did)
            if int(did) in device_ids:
                raise LaunchError(f"{where}: device_id {did} appears twice on this server")
            device_ids.add(int(did))
            _device_ip(device, where, f"server {sid} device {did}", len(servers), ips)
            rank = _number(device, "rank_id", where)
            if int(rank) in ranks:
                raise LaunchError(f"{where}: rank_id {rank} is also given to {ranks[int(rank)]}")
            ranks[int(rank)] = f"server {sid} device {did}"
            if version == "1.2":
                _number(device, "super_device_id", where)
            for key in ("device_port", "backup_device_port", "host_port"):
                _number(device, key, where, required=False)
            _address(device, "backup_device_ip", where, device=True)
    if sorted(ranks) != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        raise LaunchError(f"{src}: rank ids must be 0..{len(ranks) - 1} without gaps; missing {missing}")
    if version == "1.2":
        _check_super_pods(table, src, servers)
    if world_size is not None and len(ranks) != world_size:
        raise LaunchError(f"{src}: the table has {len(ranks)} devices but the job has {world_size} workers")


def _device_ip(device: Dict, where: str, label: str, server_count: int, ips: Dict[str, str]) -> None:
    if "device_ip" not in device and server_count == 1:
        return  # one server: HCCL needs no RoCE address
    if "device_ip" not in device:
        raise LaunchError(f"{where}: 'device_ip' is missing (required when the table has several servers)")
    ip = _address(device, "device_ip", where, f" (an NPU whose RoCE address is unset shows as '-.-.-.-'; "
                                              f"check 'hccn_tool -i {device['device_id']} -ip -g')", device=True)
    if ip in ips:
        raise LaunchError(f"{where}: device_ip {ip} is also used by {ips[ip]}")
    ips[ip] = label


def _check_super_pods(table: Dict, src: str, servers: List[Dict]) -> None:
    """1.2: every server in exactly one super pod; super_device_id unique within each pod."""
    pods = table.get("super_pod_list")
    if not isinstance(pods, list) or not pods:
        raise LaunchError(f"{src}: version 1.2 needs a non-empty 'super_pod_list' "
                          f"([{{\"super_pod_id\": \"0\", \"server_list\": [{{\"server_id\": ...}}]}}])")
    by_id = {s["server_id"]: s for s in servers}
    placed: Dict[str, str] = {}
    for p, pod in enumerate(pods):
        if not isinstance(pod, dict):
            raise LaunchError(f"{src}: super_pod_list[{p}] must be an object")
        pid = _string(pod, "super_pod_id", f"{src}: super_pod_list[{p}]")
        members = pod.get("server_list")
        if not isinstance(members, list) or not members:
            raise LaunchError(f"{src}: super pod {pid}: 'server_list' must be a non-empty list")
        supers: Dict[str, str] = {}
        for m, member in enumerate(members):
            where = f"{src}: super pod {pid} server_list[{m}]"
            if not isinstance(member, dict):
                raise LaunchError(f"{where} must be an object")
            sid = _string(member, "server_id", where)
            if sid not in by_id:
                raise LaunchError(f"{src}: super pod {pid} lists server {sid}, which is not in server_list")
            if sid in placed:
                raise LaunchError(f"{src}: server {sid} is in super pods {placed[sid]} and {pid}; list it once")
            placed[sid] = pid
            for device in by_id[sid]["device"]:
                sdid = device["super_device_id"]
                if sdid in supers:
                    raise LaunchError(f"{_where(src, sid, device['device_id'])}: super_device_id {sdid} is also "
                                      f"used by {supers[sdid]} in super pod {pid}")
                supers[sdid] = f"server {sid} device {device['device_id']}"
    missing = [s for s in by_id if s not in placed]
    if missing:
        raise LaunchError(f"{src}: server {missing[0]} is in server_list but in no super pod of super_pod_list")


def order_warning(table: Dict, src: str) -> Optional[str]:
    """A warning when servers or ranks do not follow the dictionary order of server_id (None when they do)."""
    ids = [s["server_id"] for s in table["server_list"]]
    flat = [int(d["rank_id"]) for s in table["server_list"] for d in s["device"]]
    if ids == sorted(ids) and flat == sorted(flat):
        return None
    return (f"{src}: servers are not listed, or rank ids do not increase, in the dictionary order of server_id; "
            f"using the table as written (HCCL needs only unique rank ids from 0). "
            f"'mindrun ranktable merge' rewrites it in that order")


def load(path) -> Dict:
    """Read and validate a rank table file; LaunchError names the file on bad JSON."""
    path = Path(path)
    if path.is_dir():
        raise LaunchError(f"rank table {path} is a directory, not a rank table file; pass the JSON file itself")
    if not path.is_file():
        raise LaunchError(f"rank table {path} does not exist")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LaunchError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise LaunchError(f"rank table {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    validate(table, str(path))
    return table


def dumps(table: Dict) -> str:
    """The table as the JSON text MindSpore reads."""
    return json.dumps(table, indent=4) + "\n"


def write(table: Dict, path) -> Path:
    """Validate and write atomically, readable by owner and group only."""
    validate(table, str(path))
    return atomic.write_text(path, dumps(table), mode=0o640)


def server_ids(table: Dict) -> List[str]:
    """server_id of every server, as written."""
    return [s["server_id"] for s in table["server_list"]]


def server_addresses(table: Dict, server_id: str) -> List[str]:
    """The addresses a server is known by: its server_id and, in 1.2 tables, host_ip and container_ip."""
    for server in table["server_list"]:
        if server["server_id"] == server_id:
            return [server_id] + [server[k] for k in ("host_ip", "container_ip") if server.get(k)]
    return [server_id]


def server_devices(table: Dict, server_id: str) -> List[Tuple[int, int]]:
    """(rank_id, device_id) of every device of `server_id`, in rank order."""
    for server in table["server_list"]:
        if server["server_id"] == server_id:
            return sorted((int(d["rank_id"]), int(d["device_id"])) for d in server["device"])
    known = ", ".join(server_ids(table))
    raise LaunchError(f"server {server_id} is not in the rank table (servers: {known}); "
                      f"pass --node_rank or run on one of those hosts")


def world_size(table: Dict) -> int:
    """Number of devices (ranks) in the table."""
    return sum(len(s["device"]) for s in table["server_list"])
