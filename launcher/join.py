"""Join the job's MindSpore cluster the way `mindrun launch` started it.

    dynamic    (msrun's way) a scheduler process hosts MindSpore's meta server; `init()` registers with it.
    ranktable  HCCL reads the rank table; `init()`.
    store      no scheduler process: rank 0 hosts the meta server in-process (MindSpore's `TCPStore`) at
               --master_addr:--master_port and every rank joins through it. The launcher exports
               MINDRUN_STORE=host:port; a script must join through `join_cluster()` (MindSpore's own
               `init()` looks for a scheduler and finds none).

Why store mode exists: on the CPU, a 2-worker job spent 1.5-12 s in `init()` of the dynamic mode, most of it
MindSpore's registration retry loop against the scheduler, and the scheduler is a third process importing
MindSpore on the same cores. Through rank 0's store the join costs what MindSpore's CPU collectives
themselves wait: the first rank to ask for another's address polls every 3 s (a constant in
`ms_collective_node.cc`), so one rank waits about 3 s (bench/README.md, "bench.startup").
MindSpore's `_init_with_store` is a private function of 2.10 (the public `init_process_group` takes only
hccl); store mode ran on the CPU (mccl) only, and is opt-in.
"""
import os
import time
from datetime import timedelta
from typing import Mapping, Optional, Tuple

STORE = "MINDRUN_STORE"  # host:port of rank 0's store (store mode only)
STORE_TIMEOUT = "MINDRUN_STORE_TIMEOUT"  # seconds to wait for every rank; absent or negative: a week
FOREVER_S = 7 * 24 * 3600
KEY = "mindrun/joined"
BACKENDS = {"CPU": "mccl", "GPU": "nccl", "Ascend": "hccl"}


def server_of(launch_mode: str) -> str:
    """What the workers of a launch mode connect to, for messages: "rank 0's store" or "the scheduler"."""
    return "rank 0's store" if launch_mode == "store" else "the scheduler"


class JoinError(RuntimeError):
    """The store-mode variables are malformed, or MindSpore gave this process another rank."""


def store_address(env: Mapping[str, str] = os.environ) -> Optional[Tuple[str, int]]:
    """(host, port) of rank 0's store when the launcher started the job in store mode, else None."""
    value = env.get(STORE, "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise JoinError(f"{STORE}={value!r}: expected host:port (it is set by `mindrun launch --launch_mode store`)")
    return host.strip("[]"), int(port)


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        raise JoinError(f"{STORE} is set but {key}={env.get(key)!r} is not a number (the launcher exports "
                        f"RANK_ID and RANK_SIZE with it)") from None


def join_timeout(env: Mapping[str, str] = os.environ) -> timedelta:
    """How long a rank waits for the others to join: MINDRUN_STORE_TIMEOUT (--cluster_time_out), else a week."""
    raw = env.get(STORE_TIMEOUT, "").strip()
    seconds = float(raw) if raw else -1.0
    return timedelta(seconds=seconds if seconds > 0 else FOREVER_S)


def wait_for_every_rank(store, rank: int, world: int, timeout_s: float, poll_s: float = 0.005) -> None:
    """Count this rank in at the store and wait until all `world` ranks have: MindSpore's own join would wait
    for a missing rank a fixed minute (20 polls, 3 s apart) whatever the timeout; this honours
    --cluster_time_out and names the missing ranks."""
    store.add(f"{KEY}/rank{rank}", 1)
    count = store.add(f"{KEY}/count", 1)
    deadline = time.monotonic() + timeout_s
    while count < world:
        if time.monotonic() > deadline:
            missing = [r for r in range(world) if store.add(f"{KEY}/rank{r}", 0) == 0]
            shown = ", ".join(map(str, missing[:16])) + (" ..." if len(missing) > 16 else "")
            raise JoinError(f"rank {rank}: {len(missing)} of {world} ranks (ranks {shown}) had not reached rank 0's "
                            f"store within {timeout_s:g} s (--cluster_time_out); are their nodes' launchers "
                            f"started, with the same --master_addr/--master_port?")
        time.sleep(poll_s)
        count = store.add(f"{KEY}/count", 0)


def join_cluster(env: Mapping[str, str] = os.environ) -> None:
    """Join the cluster: through rank 0's store in store mode, else MindSpore's `init()`. Call it after
    choosing the device (`mindspore.set_device`) and before any collective."""
    address = store_address(env)
    if address is None:
        from mindspore.communication import init

        init()
        return
    import mindspore as ms
    from mindspore.communication import get_rank
    from mindspore.communication.management import _init_with_store
    from mindspore.mint.distributed import TCPStore

    rank, world = _int(env, "RANK_ID"), _int(env, "RANK_SIZE")
    timeout = join_timeout(env)
    host, port = address
    store = TCPStore(host, port, world_size=world, is_master=rank == 0, timeout=timeout)  # rank 0 serves it
    wait_for_every_rank(store, rank, world, timeout.total_seconds())
    backend = BACKENDS.get(ms.get_context("device_target"), "mccl")
    _init_with_store(backend=backend, timeout=timeout, world_size=world, rank=rank, store=store)
    if get_rank() != rank:
        raise JoinError(f"MindSpore gave this process rank {get_rank()} but the launcher started it as rank "
                        f"{rank} (RANK_ID)")
