"""HCCL rank tables, version "1.0", exactly as MindSpore documents them (every value a string).

    {"version": "1.0", "server_count": "2",
     "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]},
                     ...],
     "status": "completed"}

Ranks are numbered across servers in the dictionary order of server_id, as MindSpore requires.
"""
import ipaddress
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from launcher import atomic
from launcher.errors import LaunchError

Server = Tuple[str, Sequence[Tuple[int, str]]]  # (server_id, [(device_id, device_ip), ...])


def build(servers: Sequence[Server]) -> Dict:
    """A rank table for `servers`, sorted by server_id, ranks numbered 0..N-1 in that order."""
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
    """Merge per-node tables into one: servers in server_id order, ranks renumbered."""
    for table, src in zip(tables, sources):
        validate(table, src, check_order=False)
    servers: List[Server] = []
    seen: Dict[str, str] = {}
    for table, src in zip(tables, sources):
        for server in table["server_list"]:
            if server["server_id"] in seen:
                raise LaunchError(f"server {server['server_id']} appears in both {seen[server['server_id']]} "
                                  f"and {src}; merge each node's table once")
            seen[server["server_id"]] = src
            devices = sorted(server["device"], key=lambda d: int(d["rank_id"]))
            servers.append((server["server_id"], [(int(d["device_id"]), d["device_ip"]) for d in devices]))
    return build(servers)


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


def validate(table, src: str, world_size: Optional[int] = None, check_order: bool = True) -> None:
    """Raise LaunchError naming the server and device of the first problem in `table`."""
    if not isinstance(table, dict):
        raise LaunchError(f"{src}: a rank table is a JSON object, got {type(table).__name__}")
    if _string(table, "version", src) != "1.0":
        raise LaunchError(f"{src}: version {table['version']!r} is not supported (only \"1.0\")")
    if _string(table, "status", src) != "completed":
        raise LaunchError(f"{src}: status must be \"completed\", got {table['status']!r}")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise LaunchError(f"{src}: 'server_list' must be a non-empty list")
    count = _string(table, "server_count", src)
    if count != str(len(servers)):
        raise LaunchError(f"{src}: server_count is \"{count}\" but server_list has {len(servers)} servers")
    ips: Dict[str, str] = {}
    ranks: Dict[int, str] = {}
    order: List[Tuple[str, List[int]]] = []
    for s, server in enumerate(servers):
        if not isinstance(server, dict):
            raise LaunchError(f"{src}: server_list[{s}] must be an object")
        sid = _string(server, "server_id", f"{src}: server_list[{s}]")
        if "host_nic_ip" in server:
            _string(server, "host_nic_ip", _where(src, sid))
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise LaunchError(f"{_where(src, sid)}: 'device' must be a non-empty list")
        device_ids = set()
        server_ranks = []
        for d, device in enumerate(devices):
            if not isinstance(device, dict):
                raise LaunchError(f"{_where(src, sid)}: device[{d}] must be an object")
            did = _string(device, "device_id", f"{_where(src, sid)} device[{d}]")
            where = _where(src, sid, did)
            if not did.isdigit():
                raise LaunchError(f"{where}: device_id must be a number in a string, got {did!r}")
            if did in device_ids:
                raise LaunchError(f"{where}: device_id {did} appears twice on this server")
            device_ids.add(did)
            ip = _string(device, "device_ip", where)
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise LaunchError(f"{where}: device_ip {ip!r} is not a valid address (an NPU whose RoCE "
                                  f"address is unset shows as '-.-.-.-'; check 'hccn_tool -i {did} -ip -g')") from None
            if ip in ips:
                raise LaunchError(f"{where}: device_ip {ip} is also used by {ips[ip]}")
            ips[ip] = f"server {sid} device {did}"
            rank = _string(device, "rank_id", where)
            if not rank.isdigit():
                raise LaunchError(f"{where}: rank_id must be a number in a string, got {rank!r}")
            if int(rank) in ranks:
                raise LaunchError(f"{where}: rank_id {rank} is also given to {ranks[int(rank)]}")
            ranks[int(rank)] = f"server {sid} device {did}"
            server_ranks.append(int(rank))
        order.append((sid, server_ranks))
    if sorted(ranks) != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        raise LaunchError(f"{src}: rank ids must be 0..{len(ranks) - 1} without gaps; missing {missing}")
    if check_order:
        flat = [r for _, rs in order for r in rs]
        if [o[0] for o in order] != sorted(o[0] for o in order) or flat != sorted(flat):
            raise LaunchError(f"{src}: servers must be listed, and rank ids increase, in the dictionary order "
                              f"of server_id (MindSpore's rule); rewrite it with 'mindrun ranktable merge'")
    if world_size is not None and len(ranks) != world_size:
        raise LaunchError(f"{src}: the table has {len(ranks)} devices but the job has {world_size} workers")


def load(path) -> Dict:
    """Read and validate a rank table file; LaunchError names the file on bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"rank table {path} does not exist")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LaunchError(f"{path}: not valid JSON: {exc}") from None
    validate(table, str(path))
    return table


def dumps(table: Dict) -> str:
    """The table as the JSON text MindSpore reads."""
    return json.dumps(table, indent=4) + "\n"


def write(table: Dict, path) -> Path:
    """Validate and write atomically, readable by owner and group only."""
    validate(table, str(path))
    return atomic.write_text(path, dumps(table), mode=0o640)


def server_devices(table: Dict, server_id: str) -> List[Tuple[int, int]]:
    """(rank_id, device_id) of every device of `server_id`, in rank order."""
    for server in table["server_list"]:
        if server["server_id"] == server_id:
            return sorted((int(d["rank_id"]), int(d["device_id"])) for d in server["device"])
    known = ", ".join(s["server_id"] for s in table["server_list"])
    raise LaunchError(f"server {server_id} is not in the rank table (servers: {known}); "
                      f"pass --node_rank or run on one of those hosts")


def world_size(table: Dict) -> int:
    """Number of devices (ranks) in the table."""
    return sum(len(s["device"]) for s in table["server_list"])
