"""The parallel context: this process's place in the job and its communication groups.

Ranks are laid out model-parallel first (Megatron's convention): rank = dp_rank x mp + mp_rank,
so a model-parallel group is mp consecutive ranks. The context is passed explicitly; nothing
here is a module-level global.
"""
import os
from dataclasses import dataclass
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


def init_parallel(plan: Plan, backend: str) -> ParallelContext:
    """Join the cluster and create this rank's groups (MindSpore's parallel mode is the seam's:
    trainer/parallel/seam.py)."""
    if plan.world_size == 1:
        return ParallelContext(plan, backend)
    import mindspore as ms
    from mindspore.communication import GlobalComm, create_group, get_group_size, get_rank

    from launcher.join import join_cluster

    # the device explicitly, before init(), as MindSpore's rank-table tutorial does (the launcher exports
    # DEVICE_ID per rank; on the CPU the same call runs with device 0)
    ms.set_device(backend, int(os.environ.get("DEVICE_ID", "0")) if backend != "CPU" else 0)
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
