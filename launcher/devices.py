"""NPUs of this machine: device lists, which devices a job sees, and each NPU's RoCE address and link.

The one place that asks `hccn_tool` (or reads /etc/hccn.conf) about an NPU: rank-table generation,
rank-table launches, mpirun mode and `mindrun doctor` all call `lookup_ips` / `link_state`.
"""
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.errors import LaunchError

HCCN_CONF = "/etc/hccn.conf"
HCCN_TOOL = "hccn_tool"
VISIBLE = "ASCEND_RT_VISIBLE_DEVICES"  # CANN's runtime: the physical NPUs a process sees, as logical 0..n-1
IP_SOURCES = ("auto", "hccn_tool", "hccn_conf")


def parse_device_list(spec: str, what: str = "device list") -> List[int]:
    """'0-7', '0,1,2,3' or '0-3,6' -> device ids (multi-digit ranges work, unlike hccl_tools.py)."""
    ids: List[int] = []
    for item in str(spec).replace(" ", "").split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise LaunchError(f"{what} '{spec}': '{item}' is not a device id or a range like 0-7")
        ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if len(set(ids)) != len(ids) or not ids:
        raise LaunchError(f"{what} '{spec}' is empty or names a device twice")
    return ids


def inherited_visible(env: Mapping[str, str]) -> Optional[List[int]]:
    """The physical devices an inherited ASCEND_RT_VISIBLE_DEVICES allows (None when unset)."""
    value = (env.get(VISIBLE) or "").strip()
    return sorted(parse_device_list(value, f"environment variable {VISIBLE}")) if value else None


def logical_id(physical: int, visible: Optional[Sequence[int]]) -> int:
    """DEVICE_ID for a process whose NPU is `physical`: its index in the sorted visible list, as
    MindSpore reads it (runtime/thread_bind_core.py); the physical id when nothing restricts the view."""
    if visible is None:
        return physical
    ordered = sorted(visible)
    if physical not in ordered:
        raise LaunchError(f"device {physical} is not among the visible devices "
                          f"{','.join(map(str, ordered))} ({VISIBLE} / --visible_devices)")
    return ordered.index(physical)


def _hccn(device_id: int, args: Sequence[str], tool: str = HCCN_TOOL) -> str:
    command = [tool, "-i", str(device_id), *args]
    shown = " ".join(command)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"device {device_id}: could not run '{shown}': {exc}") from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LaunchError(f"device {device_id}: '{shown}' failed (exit {out.returncode}: {detail[0]})")
    return out.stdout


def ip_from_hccn_tool(device_id: int, tool: str = HCCN_TOOL) -> str:
    """Ask `hccn_tool -i N -ip -g` for one device's address; LaunchError naming the device if it fails."""
    match = re.search(r"ipaddr\s*:\s*(\S+)", _hccn(device_id, ["-ip", "-g"], tool))
    if not match:
        raise LaunchError(f"device {device_id}: '{HCCN_TOOL} -i {device_id} -ip -g' gave no address; configure "
                          f"it with 'hccn_tool -i {device_id} -ip -s address IP netmask MASK'")
    return match.group(1)


def link_state(device_id: int, tool: str = HCCN_TOOL) -> str:
    """'UP' or 'DOWN' (as `hccn_tool -i N -link -g` prints it); LaunchError naming the device if unknown."""
    match = re.search(r"link status\s*:\s*(\w+)", _hccn(device_id, ["-link", "-g"], tool), re.IGNORECASE)
    if not match:
        raise LaunchError(f"device {device_id}: '{HCCN_TOOL} -i {device_id} -link -g' printed no link status")
    return match.group(1).upper()


def ips_from_hccn_conf(path: str = HCCN_CONF) -> Dict[int, str]:
    """Read `address_N=IP` lines of an hccn.conf; LaunchError if the file has none or gives a device two."""
    file = Path(path)
    if file.is_dir():
        raise LaunchError(f"{path} is a directory, not an hccn.conf file; pass the file (e.g. /etc/hccn.conf)")
    if not file.is_file():
        raise LaunchError(f"{path} does not exist; pass device IPs in the cluster file or use hccn_tool")
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LaunchError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    ips: Dict[int, str] = {}
    lines: Dict[int, Tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = re.fullmatch(r"\s*address_([0-9]+)\s*=\s*(\S+)\s*", line)
        if not match:
            continue
        device, ip = int(match.group(1)), match.group(2)
        if device in ips and ips[device] != ip:
            first, first_text = lines[device]
            raise LaunchError(f"{path}: device {device} has two addresses, line {first} '{first_text}' and line "
                              f"{number} '{line.strip()}'; keep the one its NPU really uses")
        ips[device] = ip
        lines.setdefault(device, (number, line.strip()))
    if not ips:
        raise LaunchError(f"{path} has no 'address_N=IP' lines: the NPUs' RoCE addresses are not configured")
    return ips


def format_device_list(ids: Sequence[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6' (what parse_device_list reads back)."""
    out: List[List[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in out)


def lookup_ips(device_ids: Sequence[int], configured: Optional[Mapping[int, str]] = None, source: str = "auto",
               hccn_conf: str = HCCN_CONF, tool: str = HCCN_TOOL) -> Dict[int, str]:
    """Device id -> RoCE address: from `configured` (a cluster file's device_ips) when given, else from
    hccn_tool (when on PATH, or source='hccn_tool') or hccn.conf (source='hccn_conf' or no hccn_tool)."""
    if configured:
        missing = [d for d in device_ids if d not in configured]
        if missing:
            raise LaunchError(f"no device_ip configured for device {missing[0]}")
        return {d: configured[d] for d in device_ids}
    if source == "config":
        source = "auto"
    if source not in IP_SOURCES:
        raise LaunchError(f"device IP source must be auto, hccn_tool or hccn_conf, got {source!r}")
    if source == "hccn_tool" or (source == "auto" and shutil.which(tool)):
        return {d: ip_from_hccn_tool(d, tool) for d in device_ids}
    conf = ips_from_hccn_conf(hccn_conf)
    missing = [d for d in device_ids if d not in conf]
    if missing:
        raise LaunchError(f"{hccn_conf} has no address_{missing[0]}= line (devices without an address: "
                          f"{missing}); add them or pass device IPs in the cluster file")
    return {d: conf[d] for d in device_ids}
