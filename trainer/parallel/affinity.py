"""Joining the cluster with the whole machine's CPUs, then back on the worker's own.

`mindrun launch --bind_core` (like msrun's) pins each worker to its cores when it is spawned. MindSpore's
cluster registration (`init()`) on one pinned core took 3-4 s longer on a 2-core machine: two workers
waited 5.9-9.4 s in `init()` pinned, 3.5-4.7 s unpinned, and 4.1-5.3 s when each widened its affinity
for `init()` only (bench/README.md, "The README job"). So the trainer joins the cluster unpinned and pins
every thread it then has (MindSpore's cluster threads included; later threads inherit the mask) back to
the CPUs the launcher gave it, before anything is compiled or run.
"""
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Set


def _all_cpus() -> Set[int]:
    return set(range(os.cpu_count() or 1))


@contextmanager
def unpinned(wide: Optional[Set[int]] = None) -> Iterator[None]:
    """Within the block this process may run on every CPU (`wide`, default all); after it, every thread of
    the process is pinned back to the CPUs it had before. Nothing happens for a process that is not pinned,
    or where affinity cannot be set."""
    try:
        pinned = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        yield
        return
    wide = _all_cpus() if wide is None else set(wide)
    if pinned >= wide:
        yield
        return
    try:
        os.sched_setaffinity(0, wide | pinned)
    except OSError:  # a cpuset narrower than cpu_count(): stay as launched
        yield
        return
    try:
        yield
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), pinned)
            except OSError:  # a thread that ended meanwhile
                pass
