"""`--bind_core` / `--bind_numa`: which CPUs (and NUMA memory) each local process may use.

Both options take msrun's forms: True/False, or a dict (JSON on the command line, or a .json file)
such as {"device0": ["0-7"], "device1": ["8-15"], "scheduler": ["16"]}; for --bind_numa the lists
name NUMA nodes. True spreads the local workers over the NUMA nodes, each on its own cores.
CPUs are pinned with sched_setaffinity; NUMA memory through `numactl --membind` (as msrun does).
"""
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Union

from launcher.errors import LaunchError

Binding = Union[bool, Dict[str, List[int]]]

NODE_ROOT = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> List[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: List[int] = []
    for item in text.strip().split(","):
        if not item:
            continue
        lo, _, hi = item.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def numa_nodes(root: Path = NODE_ROOT) -> Dict[int, List[int]]:
    """NUMA node -> CPUs, as the kernel reports them; empty when the machine reports none."""
    nodes: Dict[int, List[int]] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = re.fullmatch(r"node(\d+)", entry.name)
            cpulist = entry / "cpulist"
            if match and cpulist.is_file():
                cpus = parse_cpulist(cpulist.read_text())
                if cpus:
                    nodes[int(match.group(1))] = cpus
    return dict(sorted(nodes.items()))


def _split(cpus: List[int], parts: int) -> List[List[int]]:
    if len(cpus) < parts:  # more workers than cores: share round-robin rather than fail
        return [[cpus[i % len(cpus)]] for i in range(parts)]
    size, extra = divmod(len(cpus), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(cpus[start:end])
        start = end
    return out


def plan(workers: int, available: Optional[Set[int]] = None,
         nodes: Optional[Dict[int, List[int]]] = None) -> List[List[int]]:
    """Disjoint CPU sets, one per local worker; workers spread over NUMA nodes in order."""
    available = set(os.sched_getaffinity(0)) if available is None else set(available)
    nodes = numa_nodes() if nodes is None else nodes
    groups = [sorted(set(c) & available) for c in nodes.values()]
    groups = [g for g in groups if g]
    if len(groups) <= 1 or workers < len(groups):
        return _split(sorted(available), workers)
    result: List[List[int]] = []
    for n, cpus in enumerate(groups):  # workers [n*W/N, (n+1)*W/N) go to NUMA node n
        count = (n + 1) * workers // len(groups) - n * workers // len(groups)
        result.extend(_split(cpus, count) if count else [])
    return result


def parse_binding(value, option: str) -> Binding:
    """--bind_core/--bind_numa as given (bool, 'True', a JSON dict or a .json file) -> bool or
    {"device<i>" | "scheduler": [ids]}; LaunchError naming the option and the bad part."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, dict):
        raw = value
    else:
        text = str(value).strip()
        if text.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return text.lower() in ("true", "1", "yes", "on")
        if text.lower().endswith(".json"):
            try:
                text = Path(text).read_text()
            except OSError as exc:
                raise LaunchError(f"{option} {value}: cannot read the file: {exc.strerror}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LaunchError(f"{option} must be True, False or a JSON object like "
                              f"'{{\"device0\": [\"0-3\"]}}'; {value!r} is neither ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise LaunchError(f"{option} must be True, False or a JSON object, got {type(raw).__name__}")
    if any(k in raw for k in ("bind_config", "bind_cpu", "bind_memory")):
        raise LaunchError(f"{option}: msrun's bind_config files are not supported by mindrun; give "
                          f"{{\"device0\": [\"0-3\"], ...}} instead")
    out: Dict[str, List[int]] = {}
    for key, items in raw.items():
        if not re.fullmatch(r"device[0-9]+|scheduler", str(key)):
            raise LaunchError(f"{option}: key {key!r} must be 'scheduler' or 'deviceN' (N: local worker index)")
        strings = isinstance(items, list) and all(isinstance(i, str) for i in items)
        lists = [re.sub(r"\s+", "", i) for i in items] if strings else []
        if not strings or not all(re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", i) for i in lists):
            raise LaunchError(f"{option}: {key} must be a list of strings like \"0-3\" or \"4,6\", got {items!r}")
        out[str(key)] = sorted({n for i in lists for n in parse_cpulist(i)})
    return out


@dataclass(frozen=True)
class Placement:
    """Where one process runs: the CPUs it may use (None: anywhere) and a command prefix for NUMA memory."""

    cpus: Optional[List[int]] = None
    prefix: tuple = ()


def placements(workers: int, bind_core: Binding, bind_numa: Binding,
               nodes: Optional[Dict[int, List[int]]] = None, available: Optional[Set[int]] = None,
               numactl: Optional[str] = None) -> Dict[str, Placement]:
    """{"device<i>": Placement, "scheduler": Placement} for the given options; LaunchError when a
    dict names a CPU or NUMA node this process may not use."""
    keys = [f"device{i}" for i in range(workers)] + ["scheduler"]
    if not bind_core and not bind_numa:  # nothing to read from /sys or the environment
        return dict.fromkeys(keys, Placement())
    available = set(os.sched_getaffinity(0)) if available is None else set(available)
    nodes = numa_nodes() if nodes is None else nodes
    numactl = shutil.which("numactl") if numactl is None else numactl
    cpus: Dict[str, Optional[List[int]]] = dict.fromkeys(keys)
    mems: Dict[str, Optional[List[int]]] = dict.fromkeys(keys)
    if bind_numa is True and len(nodes) >= 1:
        order = list(nodes)
        for i in range(workers):
            mems[f"device{i}"] = [order[i * len(order) // workers]]
    elif isinstance(bind_numa, dict):
        for key, ids in bind_numa.items():
            unknown = [n for n in ids if n not in nodes]
            if unknown:
                raise LaunchError(f"--bind_numa: {key} names NUMA node(s) {unknown}; this machine has "
                                  f"{sorted(nodes) or 'none'}")
            mems[key] = ids
    for key, ids in mems.items():
        if ids is not None:
            cpus[key] = sorted({c for n in ids for c in nodes[n]} & available)
    if bind_core is True:
        for i, group in enumerate(plan(workers, available, nodes)):
            numa = cpus[f"device{i}"]
            cpus[f"device{i}"] = sorted(set(group) & set(numa)) or group if numa else group
    elif isinstance(bind_core, dict):
        for key, ids in bind_core.items():
            outside = sorted(set(ids) - available)
            if outside:
                raise LaunchError(f"--bind_core: {key} names CPU(s) {outside} that this process may not use "
                                  f"(allowed: {','.join(map(str, sorted(available)))})")
            cpus[key] = ids
    prefix: Dict[str, tuple] = dict.fromkeys(keys, ())
    for key, ids in mems.items():
        if ids is not None and numactl:
            prefix[key] = (numactl, f"--membind={','.join(map(str, ids))}")
    return {k: Placement(cpus[k], prefix[k]) for k in keys}
