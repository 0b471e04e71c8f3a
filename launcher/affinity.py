"""`--bind_core`: give each local worker its own CPU cores, NUMA node by NUMA node."""
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Set

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
