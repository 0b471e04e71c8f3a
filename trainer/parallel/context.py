"""The parallel context: this process's place in the job and its communication groups.

Ranks are laid out model-parallel first (Megatron's convention): rank = dp_rank x mp + mp_rank,
so a model-parallel group is mp consecutive ranks. The context is passed explicitly; nothing
here is a module-level global.
"""
import os
from dataclasses import dataclass
from typing import Optional

from trainer.parallel.plan import Plan


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits: its ranks and the names of its data- and model-parallel groups."""

    plan: Plan
    rank: int = 0
    dp_rank: int = 0
    mp_rank: int = 0
    dp_group: Optional[str] = None  # None: no data-parallel communication (dp == 1)
    mp_group: Optional[str] = None  # None: no model-parallel communication (mp == 1)

    @property
    def is_main(self) -> bool:
        """The process that writes logs and checkpoints."""
        return self.rank == 0


def world_size_from_env() -> int:
    """Workers in the job, as the launcher (or msrun) exported them; 1 outside a launcher."""
    return int(os.environ.get("MS_WORKER_NUM") or os.environ.get("RANK_SIZE") or 1)


def is_scheduler() -> bool:
    """True in MindSpore's scheduler process (msrun and mindrun start the script there too)."""
    return os.environ.get("MS_ROLE") == "MS_SCHED"


def init_parallel(plan: Plan) -> ParallelContext:
    """Join the cluster, set MindSpore's parallel mode and create this rank's groups."""
    if plan.world_size == 1:
        return ParallelContext(plan)
    import mindspore as ms
    from mindspore.communication import GlobalComm, create_group, get_group_size, get_rank, init

    init()
    if get_group_size() != plan.world_size:
        raise RuntimeError(f"the cluster has {get_group_size()} ranks but the plan expects {plan.world_size}")
    rank, mp, dp = get_rank(), plan.model_parallel, plan.data_parallel
    dp_rank, mp_rank = divmod(rank, mp)
    mode = {"data_parallel": "data_parallel", "hybrid": "hybrid_parallel", "semi_auto": "semi_auto_parallel"}
    ms.set_auto_parallel_context(parallel_mode=mode[plan.mode], gradients_mean=False, device_num=plan.world_size)
    dp_group = mp_group = None
    if dp > 1:
        dp_group = GlobalComm.WORLD_COMM_GROUP if mp == 1 else f"dp_{mp_rank}"
        if mp > 1:
            create_group(dp_group, [mp_rank + i * mp for i in range(dp)])
    if mp > 1:
        mp_group = GlobalComm.WORLD_COMM_GROUP if dp == 1 else f"mp_{dp_rank}"
        if dp > 1:
            create_group(mp_group, [dp_rank * mp + j for j in range(mp)])
    return ParallelContext(plan, rank, dp_rank, mp_rank, dp_group, mp_group)
