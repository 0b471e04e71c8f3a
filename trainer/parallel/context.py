"""The parallel context: this process's place in the job and its communication groups.

Ranks are laid out model-parallel first (Megatron's convention): rank = dp_rank x mp + mp_rank,
so a model-parallel group is mp consecutive ranks. The context is passed explicitly; nothing
here is a module-level global.

A data-parallel CPU job whose ranks all run on this host, started by `mindrun launch --launch_mode store`,
with its gradients summed through shared memory, holds no MindSpore collective: it does not join MindSpore's
cluster at all (`without_cluster`). MindSpore's CPU collectives spend about 3 s forming it (a hard-coded poll in
its address exchange, launcher/join.py), a fifth of the README job's start-up. Such a job's ranks form a local
socket group instead (trainer/parallel/local_group.py), through which its host-side sums go
(trainer/parallel/host_sum.py).
"""
import os
from dataclasses import dataclass, field
from typing import Optional

from trainer.parallel.affinity import unpinned
from trainer.parallel.plan import Plan


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits: its ranks and the names of its data- and model-parallel groups."""

    plan: Plan
    backend: str = "CPU"  # MindSpore's device target, decided once (select_backend)
    rank: int = 0
    dp_rank: int = 0
    mp_rank: int = 0
    dp_group: Optional[str] = None  # None: no data-parallel communication (dp == 1)
    mp_group: Optional[str] = None  # None: no model-parallel communication (mp == 1)
    # the job's ranks as a local socket group when it runs without MindSpore's cluster (see the module), else None
    local: Optional[object] = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """The process that writes logs and checkpoints."""
        return self.rank == 0


def select_backend() -> str:
    """Decide the device target once: $MINDRUN_DEVICE_TARGET (the launcher sets it from the cluster
    file's `backend`) if set, else MindSpore's default for this install. Returns "CPU", "GPU" or "Ascend"."""
    import mindspore as ms

    from launcher.environment import DEVICE_TARGET, DEVICE_TARGETS

    wanted = os.environ.get(DEVICE_TARGET)
    if wanted:
        if wanted.lower() not in DEVICE_TARGETS:
            raise ValueError(f"{DEVICE_TARGET}={wanted!r}: expected one of {', '.join(DEVICE_TARGETS.values())}")
        ms.set_context(device_target=DEVICE_TARGETS[wanted.lower()])
    return ms.get_context("device_target")


def world_size_from_env() -> int:
    """Workers in the job, as the launcher (or msrun) exported them; 1 outside a launcher."""
    return int(os.environ.get("MS_WORKER_NUM") or os.environ.get("RANK_SIZE") or 1)


def is_scheduler() -> bool:
    """True in MindSpore's scheduler process (msrun and mindrun start the script there too)."""
    return os.environ.get("MS_ROLE") == "MS_SCHED"


def without_cluster(plan: Plan, backend: str, env=os.environ) -> Optional[str]:
    """Why this job must join MindSpore's cluster, or None when it can run without it (see the module): data
    parallel only, on the CPU, every rank on this host under `mindrun launch --launch_mode store` (no scheduler
    process waiting for the ranks), gradients summed through shared memory (parallel.grad_reduce auto or
    shared_memory), no sharded optimizer (its collectives are MindSpore's)."""
    from trainer.parallel import shared_sum

    if plan.model_parallel > 1 or plan.pipeline_stages > 1:  # (semi_auto runs off the CPU only: refused below)
        return "model or pipeline parallelism uses MindSpore's collectives"
    if plan.optimizer_shard:
        return "parallel.optimizer_shard uses MindSpore's collectives"
    if plan.grad_reduce not in ("auto", "shared_memory"):
        return f"parallel.grad_reduce={plan.grad_reduce} sums through MindSpore's AllReduce"
    if not env.get("MINDRUN_STORE"):
        return "the job was not started by `mindrun launch --launch_mode store`"
    return shared_sum.unavailable(backend, plan.world_size)  # the same conditions as the shared-memory sums


def init_parallel(plan: Plan, backend: str, shared_bytes: Optional[int] = None) -> ParallelContext:
    """Join the cluster and create this rank's groups (MindSpore's parallel mode is the seam's:
    trainer/parallel/seam.py). `shared_bytes`: the shared memory the gradient sums will need, when the caller
    knows it; then a job that can (`without_cluster`) and whose /dev/shm holds that forms a local group instead
    of joining MindSpore's cluster."""
    if plan.world_size == 1:
        return ParallelContext(plan, backend)
    import mindspore as ms
    from mindspore.communication import GlobalComm, create_group, get_group_size, get_rank

    from launcher.join import join_cluster
    from launcher.registration import declare_no_cluster

    # the device explicitly, before init(), as MindSpore's rank-table tutorial does (the launcher exports
    # DEVICE_ID per rank; on the CPU the same call runs with device 0)
    ms.set_device(backend, int(os.environ.get("DEVICE_ID", "0")) if backend != "CPU" else 0)
    if shared_bytes is not None and without_cluster(plan, backend) is None:
        local = _local_group(plan, shared_bytes, _rank_id())
        if local is not None:
            declare_no_cluster()  # or the launcher's registration backstop would end the job (launcher/registration.py)
            rank = local.index
            return ParallelContext(plan, backend, rank, rank, 0, GlobalComm.WORLD_COMM_GROUP, None, local)
    with unpinned():  # registration is seconds slower on one pinned core (trainer/parallel/affinity.py)
        join_cluster()  # the scheduler's init(), or rank 0's store under --launch_mode store
    if get_group_size() != plan.world_size:
        raise RuntimeError(f"the cluster has {get_group_size()} ranks but the plan expects {plan.world_size}")
    rank, mp, dp = get_rank(), plan.model_parallel, plan.data_parallel
    dp_rank, mp_rank = divmod(rank, mp)
    dp_group = mp_group = None
    if dp > 1:
        dp_group = GlobalComm.WORLD_COMM_GROUP if mp == 1 else f"dp_{mp_rank}"
        if mp > 1:
            create_group(dp_group, [mp_rank + i * mp for i in range(dp)])
    if mp > 1:
        mp_group = GlobalComm.WORLD_COMM_GROUP if dp == 1 else f"mp_{dp_rank}"
        if dp > 1:
            create_group(mp_group, [dp_rank * mp + j for j in range(mp)])
    return ParallelContext(plan, backend, rank, dp_rank, mp_rank, dp_group, mp_group)


def _rank_id() -> int:
    from launcher.join import JoinError

    try:
        return int(os.environ["RANK_ID"])
    except (KeyError, ValueError):
        raise JoinError(f"RANK_ID={os.environ.get('RANK_ID')!r} is not a number (`mindrun launch` exports it)") \
            from None


def _local_group(plan: Plan, shared_bytes: int, rank: int):
    """The job's ranks as a local group, or None (all ranks alike) when rank 0's /dev/shm cannot hold
    `shared_bytes`: then the job joins MindSpore's cluster, and its sums fall back to AllReduce as they would have."""
    from launcher.join import join_timeout
    from trainer.parallel import shared_sum
    from trainer.parallel.local_group import LocalGroup

    group = LocalGroup(f"{shared_sum.job_token()}-world", rank, plan.world_size,
                       timeout=join_timeout().total_seconds(),  # --cluster_time_out, as a join would wait
                       label="the job's local group (ranks on this host, without MindSpore's cluster)")
    free = shared_sum.shared_memory_free()
    verdict = group.broadcast(b"y" if free >= shared_bytes else f"n{free}".encode())
    if verdict == b"y":
        group.settimeout(None)  # a sum waits as long as the slowest rank takes to reach it (a checkpoint's write)
        return group
    group.close()
    if rank == 0:
        print(f"note: joining MindSpore's cluster: /dev/shm has {int(verdict[1:]) / 2**20:.0f} MiB free, the "
              f"shared-memory sums need about {shared_bytes / 2**20:.0f} MiB", flush=True)
    return None
