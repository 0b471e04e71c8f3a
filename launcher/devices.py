"""NPU RoCE addresses for HCCL rank tables: `hccn_tool -i N -ip -g`, else /etc/hccn.conf."""
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

from launcher.errors import LaunchError

HCCN_CONF = "/etc/hccn.conf"


def parse_device_list(spec: str) -> List[int]:
    """'0-7', '0,1,2,3' or '0-3,6' -> device ids (multi-digit ranges work, unlike hccl_tools.py)."""
    ids: List[int] = []
    for item in str(spec).replace(" ", "").split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise LaunchError(f"device list '{spec}': '{item}' is not a device id or a range like 0-7")
        ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if len(set(ids)) != len(ids) or not ids:
        raise LaunchError(f"device list '{spec}' is empty or names a device twice")
    return ids


def ip_from_hccn_tool(device_id: int, tool: str = "hccn_tool") -> str:
    """Ask `hccn_tool -i N -ip -g` for one device's address; LaunchError naming the device if it fails."""
    try:
        out = subprocess.run([tool, "-i", str(device_id), "-ip", "-g"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"device {device_id}: could not run '{tool} -i {device_id} -ip -g': {exc}") from None
    match = re.search(r"ipaddr\s*:\s*(\S+)", out.stdout)
    if out.returncode != 0 or not match:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LaunchError(f"device {device_id}: '{tool} -i {device_id} -ip -g' gave no address "
                          f"(exit {out.returncode}: {detail[0]}); configure it with "
                          f"'hccn_tool -i {device_id} -ip -s address IP netmask MASK'")
    return match.group(1)


def ips_from_hccn_conf(path: str = HCCN_CONF) -> Dict[int, str]:
    """Read `address_N=IP` lines of an hccn.conf; LaunchError if the file has none."""
    file = Path(path)
    if not file.is_file():
        raise LaunchError(f"{path} does not exist; pass device IPs in the cluster file or use hccn_tool")
    ips: Dict[int, str] = {}
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.fullmatch(r"\s*address_(\d+)\s*=\s*(\S+)\s*", line)
        if match:
            ips[int(match.group(1))] = match.group(2)
    if not ips:
        raise LaunchError(f"{path} has no 'address_N=IP' lines: the NPUs' RoCE addresses are not configured")
    return ips


def discover_device_ips(device_ids: List[int], source: str = "auto", hccn_conf: str = HCCN_CONF,
                        tool: str = "hccn_tool") -> Dict[int, str]:
    """Device id -> RoCE address from hccn_tool (when on PATH, or source='hccn_tool') or hccn.conf."""
    if source not in ("auto", "hccn_tool", "hccn_conf"):
        raise LaunchError(f"device IP source must be auto, hccn_tool or hccn_conf, got {source!r}")
    use_tool = source == "hccn_tool" or (source == "auto" and shutil.which(tool))
    if use_tool:
        return {d: ip_from_hccn_tool(d, tool) for d in device_ids}
    conf = ips_from_hccn_conf(hccn_conf)
    missing = [d for d in device_ids if d not in conf]
    if missing:
        raise LaunchError(f"{hccn_conf} has no address_{missing[0]}= line (devices without an address: "
                          f"{missing}); add them or pass device IPs in the cluster file")
    return {d: conf[d] for d in device_ids}
